"""The figures for node_exporter's textfile collector, for hosts without the pool service.

Batch jobs conventionally expose metrics as a file that node_exporter's
textfile collector reads (`--collector.textfile.directory`); the stages and
the sweeper are batch jobs. After each prepare, cleanup and sweep, the
driver rewrites `[metrics] textfile` from the state dir's metrics file and
the live machine counts: the same families the pool service serves on
`[pool] metrics_address`, written atomically (temp file, then rename) so
node_exporter never reads half a file.
"""

from __future__ import annotations

from pathlib import Path

from driver import metrics
from driver.settings import Settings, load_settings


def write_from_config(config_path: str | Path | None) -> None:
    settings = load_settings(config_path)
    if settings.metrics.textfile is not None:
        write(settings, settings.metrics.textfile)


def write(settings: Settings, path: Path) -> None:
    from prometheus_client import write_to_textfile

    write_to_textfile(str(path), metrics.registry(settings.state_dir))
