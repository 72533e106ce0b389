"""Metrics: declared once, accumulated across processes in one file, served as Prometheus text."""

import errno
import json
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from driver import metrics, process, provision
from driver.process import Result
from driver.settings import parse_settings
from driver.state import StateDir

ROOT = Path(__file__).resolve().parents[2]


def exposition(state_dir: Path, machines: dict[str, int] | None = None) -> dict[str, Family]:
    """What a Prometheus scrape of the pool service reads, parsed back by Prometheus' parser."""

    class FromStateDir(Collector):
        def collect(self) -> Iterable[Family]:
            return metrics.families(state_dir, machines or {})

    registry = CollectorRegistry()
    registry.register(FromStateDir())
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Family) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def test_counts_and_durations_from_many_processes_add_up(tmp_path: Path) -> None:
    program = (
        "import sys; from pathlib import Path; from driver import metrics\n"
        "for _ in range(25):\n"
        "    metrics.count(Path(sys.argv[1]), metrics.MACHINE_CREATIONS, {'by': 'job'})\n"
        "    metrics.observe(Path(sys.argv[1]), metrics.MACHINE_CREATE_SECONDS, 3.0)\n"
    )

    def one_process(_: int) -> None:
        process.run(
            [sys.executable, "-c", program, str(tmp_path)],
            timeout=120,
            env={"PYTHONPATH": str(ROOT)},
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one_process, range(4)))

    families = exposition(tmp_path)
    creations = samples(families["gitlab_machine_driver_machine_creations"])
    assert creations == {("gitlab_machine_driver_machine_creations_total", (("by", "job"),)): 100}
    created = samples(families["gitlab_machine_driver_machine_create_seconds"])
    assert created[("gitlab_machine_driver_machine_create_seconds_count", ())] == 100
    assert created[("gitlab_machine_driver_machine_create_seconds_sum", ())] == 300.0


def test_the_exposition_has_each_declared_type_and_help(tmp_path: Path) -> None:
    metrics.count(tmp_path, metrics.MACHINE_REMOVALS, {"result": "clean"})
    metrics.count(tmp_path, metrics.MACHINE_REMOVALS, {"result": "clean"})
    metrics.count(tmp_path, metrics.MACHINE_REMOVALS, {"result": "maybe_orphaned"})
    metrics.observe(tmp_path, metrics.PREPARE_SECONDS, 0.3, {"source": "pool"})
    metrics.observe(tmp_path, metrics.PREPARE_SECONDS, 7.0, {"source": "pool"})
    metrics.observe(tmp_path, metrics.PREPARE_SECONDS, 4000.0, {"source": "create"})

    families = exposition(tmp_path, {"idle": 2, "in_use": 1})

    declared = [*metrics.COUNTERS, *metrics.HISTOGRAMS, metrics.MACHINES]
    expected_type = {metrics.Counter: "counter", metrics.Histogram: "histogram"}
    for metric in declared:
        family = families[metric.full_name.removesuffix("_total")]
        assert family.type == expected_type.get(type(metric), "gauge"), metric.name
        assert family.documentation == metric.help
    removals = samples(families["gitlab_machine_driver_machine_removals"])
    assert removals == {
        ("gitlab_machine_driver_machine_removals_total", (("result", "clean"),)): 2,
        ("gitlab_machine_driver_machine_removals_total", (("result", "maybe_orphaned"),)): 1,
    }
    prepare = samples(families["gitlab_machine_driver_prepare_seconds"])
    bucket = "gitlab_machine_driver_prepare_seconds_bucket"
    assert prepare[(bucket, (("le", "0.25"), ("source", "pool")))] == 0
    assert prepare[(bucket, (("le", "0.5"), ("source", "pool")))] == 1
    assert prepare[(bucket, (("le", "10.0"), ("source", "pool")))] == 2
    assert prepare[(bucket, (("le", "+Inf"), ("source", "pool")))] == 2
    assert prepare[(bucket, (("le", "1800.0"), ("source", "create")))] == 0
    assert prepare[(bucket, (("le", "+Inf"), ("source", "create")))] == 1
    assert prepare[("gitlab_machine_driver_prepare_seconds_sum", (("source", "pool"),))] == 7.3
    machines = samples(families["gitlab_machine_driver_machines"])
    assert machines == {
        ("gitlab_machine_driver_machines", (("state", "idle"),)): 2,
        ("gitlab_machine_driver_machines", (("state", "in_use"),)): 1,
    }


def test_every_declared_metric_is_served() -> None:
    declared = [v for v in vars(metrics).values() if isinstance(v, metrics.Metric)]
    served = [*metrics.COUNTERS, *metrics.HISTOGRAMS, metrics.MACHINES]
    assert sorted(m.name for m in declared) == sorted(m.name for m in served)


@pytest.mark.parametrize("labels", [None, {}, {"kind": "job"}, {"by": "job", "kind": "x"}])
def test_labels_other_than_the_declared_ones_are_refused(
    tmp_path: Path, labels: dict[str, str] | None
) -> None:
    with pytest.raises(ValueError, match=r"machine_creations_total takes the labels \['by'\]"):
        metrics.count(tmp_path, metrics.MACHINE_CREATIONS, labels)
    with pytest.raises(ValueError, match=r"machine_create_seconds takes the labels \[\]"):
        metrics.observe(tmp_path, metrics.MACHINE_CREATE_SECONDS, 1.0, {"by": "job"})
    assert not (tmp_path / metrics.FILE).exists()


def test_a_counter_must_be_named_as_one() -> None:
    with pytest.raises(ValueError, match="must end in _total"):
        metrics.Counter("machine_creations", "Machines created")


def test_a_metrics_file_from_the_previous_release_keeps_counting(tmp_path: Path) -> None:
    # Written by the release that passed metric names as strings.
    (tmp_path / metrics.FILE).write_text(
        json.dumps({"counters": {'["pool_claims_total", [["result", "hit"]]]': 41}})
    )
    metrics.count(tmp_path, metrics.POOL_CLAIMS, {"result": "hit"})
    claims = samples(exposition(tmp_path)["gitlab_machine_driver_pool_claims"])
    assert claims == {("gitlab_machine_driver_pool_claims_total", (("result", "hit"),)): 42}


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        '{"counters": [], "histograms": 3}',
        '{"counters": {"[\\"pool_claims_total\\"]": "many", "junk": 1}}',
        '{"histograms": {"[\\"machine_create_seconds\\", []]": {"buckets": [1], "sum": 1}}}',
        "",
    ],
)
def test_a_broken_metrics_file_never_fails_a_caller(tmp_path: Path, content: str) -> None:
    (tmp_path / metrics.FILE).write_text(content)
    metrics.count(tmp_path, metrics.POOL_CLAIMS, {"result": "miss"})
    metrics.observe(tmp_path, metrics.MACHINE_CREATE_SECONDS, 2.0)
    families = exposition(tmp_path)
    claims = samples(families["gitlab_machine_driver_pool_claims"])
    assert claims == {("gitlab_machine_driver_pool_claims_total", (("result", "miss"),)): 1}
    created = samples(families["gitlab_machine_driver_machine_create_seconds"])
    assert created[("gitlab_machine_driver_machine_create_seconds_count", ())] == 1


def test_a_missing_state_dir_or_a_held_lock_drops_the_count_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics.count(tmp_path / "missing", metrics.POOL_CLAIMS, {"result": "miss"})
    assert not (tmp_path / "missing").exists()  # the state dir is not ours to make

    monkeypatch.setattr(metrics, "LOCK_TIMEOUT", 0.1)
    with StateDir(tmp_path).lock("metrics").held(1):
        metrics.count(tmp_path, metrics.POOL_CLAIMS, {"result": "miss"})
    assert metrics.load(tmp_path) == {"counters": {}, "histograms": {}}


def test_the_metrics_file_is_private(tmp_path: Path) -> None:
    metrics.count(tmp_path, metrics.POOL_CLAIMS, {"result": "miss"})
    assert (tmp_path / metrics.FILE).stat().st_mode & 0o077 == 0
    assert (tmp_path / "locks").stat().st_mode & 0o077 == 0


def test_a_full_disk_never_fails_a_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `destroy` whose `rm` succeeded must not fail because its count cannot be written
    (cleanup would then skip removing the job's dir)."""

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    metrics.count(tmp_path, metrics.POOL_CLAIMS, {"result": "miss"})
    metrics.observe(tmp_path, metrics.MACHINE_REMOVE_SECONDS, 2.0)

    settings = parse_settings({"state_dir": str(tmp_path), "cleanup": {"remove_attempts": 1}})
    dm = mock.Mock()
    dm.exists.return_value = True
    dm.remove.return_value = Result(["docker-machine", "rm", "-y", "gmd-1"], 0, "", "")
    assert provision.destroy(dm, "gmd-1", settings, lambda _: None)
