"""Metrics without the pool service: node_exporter's textfile, rewritten after each
prepare, cleanup and sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from driver import metrics, metrics_textfile, settings

ROOT = Path(__file__).resolve().parents[2]


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parsed as Prometheus does: a malformed file raises here."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def config(tmp_path: Path) -> Path:
    path = tmp_path / "driver.toml"
    path.write_text(
        f'state_dir = "{tmp_path}/st"\n[machine]\ndriver = "amazonec2"\n'
        f'[docker_machine]\nprogram = "true"\nstorage_path = "{tmp_path}/dm"\n'
        f'[metrics]\ntextfile = "{tmp_path}/collector/gitlab_machine_driver.prom"\n'
    )
    (tmp_path / "collector").mkdir()
    return path


def test_the_textfile_holds_the_metrics_files_figures_and_the_machine_gauge(
    tmp_path: Path,
) -> None:
    s = settings.load_settings(config(tmp_path))
    s.state_dir.mkdir(mode=0o700)  # as the first prepare makes it
    metrics.count(s.state_dir, metrics.MACHINE_CREATIONS, {"by": "job"})
    metrics.count(s.state_dir, metrics.MACHINE_CREATIONS, {"by": "job"})
    metrics.observe(s.state_dir, metrics.PREPARE_SECONDS, 42.0, {"source": "create"})
    assert s.metrics.textfile is not None
    metrics_textfile.write(s, s.metrics.textfile)
    found = samples(s.metrics.textfile)
    assert found[("gitlab_machine_driver_machine_creations_total", (("by", "job"),))] == 2
    assert found[("gitlab_machine_driver_prepare_seconds_count", (("source", "create"),))] == 1
    assert found[("gitlab_machine_driver_machines", (("state", "in_use"),))] == 0
    # Written atomically: nothing but the file itself is left in the collector's dir.
    assert sorted(p.name for p in s.metrics.textfile.parent.iterdir()) == [
        "gitlab_machine_driver.prom"
    ]


def sweep(config: Path) -> subprocess.CompletedProcess[str]:
    """`gitlab-machine-driver sweep`, as the admin's timer runs it."""
    return subprocess.run(
        [sys.executable, "-m", "driver", "sweep", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_a_sweep_rewrites_it_without_any_pool_service(tmp_path: Path) -> None:
    path = config(tmp_path)
    textfile = tmp_path / "collector" / "gitlab_machine_driver.prom"
    swept = sweep(path)
    assert swept.returncode == 0, swept.stderr
    found = samples(textfile)
    assert found[("gitlab_machine_driver_machines", (("state", "idle"),))] == 0
    assert ("gitlab_machine_driver_machines", (("state", "orphaned"),)) in found


def test_a_textfile_that_cannot_be_written_never_fails_the_command(tmp_path: Path) -> None:
    path = config(tmp_path)
    path.write_text(path.read_text().replace("/collector/", "/missing/"))
    swept = sweep(path)
    assert swept.returncode == 0, swept.stderr
    assert not (tmp_path / "missing").exists()
