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
from typing import Any

from driver import metrics
from driver.settings import Settings, load_settings
from driver.state import StateDir, machine_counts


def write_from_config(config_path: str | Path | None) -> None:
    settings = load_settings(config_path)
    if settings.metrics.textfile is not None:
        write(settings, settings.metrics.textfile)


def write(settings: Settings, path: Path) -> None:
    from prometheus_client import CollectorRegistry, write_to_textfile
    from prometheus_client.registry import Collector

    class FromStateDir(Collector):
        def collect(self) -> Any:
            counts = machine_counts(StateDir(settings.state_dir))
            return metrics.families(settings.state_dir, counts)

    registry = CollectorRegistry()
    registry.register(FromStateDir())
    write_to_textfile(str(path), registry)
