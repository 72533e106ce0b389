"""The replay (bench/replay.py) models the pool as the service and prepare behave."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from driver.settings import LimitSettings

BENCH = Path(__file__).resolve().parents[3] / "bench" / "replay.py"


@pytest.fixture(scope="module")
def replay() -> ModuleType:
    spec = importlib.util.spec_from_file_location("replay_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["replay_bench"] = module
    spec.loader.exec_module(module)
    return module


def args(**overrides: float) -> argparse.Namespace:
    values: dict[str, float] = {
        "peak_pipelines": 30.0,
        "fanout_median": 2.0,
        "fanout_sigma": 1.0,
        "fanout_max": 64,
        "pickup": 5.0,
        "job_median": 300.0,
        "job_p95": 1200.0,
        "create_median": 90.0,
        "create_p95": 240.0,
        "claim_seconds": 1.0,
        "tick": 2.0,
        "idle_time": 600.0,
        "demand_window": 1800.0,
        "scale_max": 60,
    }
    return argparse.Namespace(**(values | overrides))


def day(replay: ModuleType, jobs: list[tuple[float, float, float]]) -> Any:
    return replay.Trace([replay.TraceJob(*job) for job in jobs], 86400.0, "test")


def run(replay: ModuleType, trace: Any, pool: Any, limits: LimitSettings) -> Any:
    creates = replay.LogNormal(90.0, 240.0)
    return replay.Replay(trace, pool, limits, seed=1, creates=creates, claim_seconds=1.0).run("x")


def test_a_job_that_misses_waits_for_its_own_create_only(replay: ModuleType) -> None:
    trace = day(replay, [(100.0, 300.0, 80.0), (100.5, 300.0, 150.0)])
    result = run(replay, trace, replay.fixed(0, args()), LimitSettings())
    assert [r.prepared for r in result.runs] == [80.0, 150.0]
    assert result.hit_rate == 0


def test_a_ready_machine_is_taken_and_replaced(replay: ModuleType) -> None:
    trace = day(replay, [(3600.0, 300.0, 80.0)])
    result = run(replay, trace, replay.fixed(1, args()), LimitSettings())
    assert result.hit_rate == 1.0
    assert result.runs[0].prepared == 1.0
    assert len(result.vms) == 2  # the first, and its replacement
    assert result.never_used == 0


def test_a_job_waits_for_capacity_when_the_limits_say_so(replay: ModuleType) -> None:
    trace = day(replay, [(100.0, 500.0, 80.0), (101.0, 300.0, 80.0)])
    result = run(replay, trace, replay.fixed(0, args()), LimitSettings(max_machines=1))
    # The second job gets a machine when the first job's is gone: 100 + 80 + 500.
    assert result.runs[1].prepared == pytest.approx(680.0 - 101.0 + 80.0)


def test_the_replay_is_deterministic_for_a_seed(replay: ModuleType) -> None:
    a = replay.working_week(args(), 3)
    b = replay.working_week(args(), 3)
    assert a.jobs == b.jobs
    monday = [(j.arrival, j.duration, j.create) for j in a.jobs if j.arrival < 86400]
    first = run(replay, day(replay, monday), replay.demand(0.9, args()), LimitSettings())
    second = run(replay, day(replay, monday), replay.demand(0.9, args()), LimitSettings())
    assert first.hit_rate > 0.5  # the policy did something to compare
    assert (first.hit_rate, first.idle_seconds) == (second.hit_rate, second.idle_seconds)


def test_periods_reach_the_pool_as_migrate_carries_them(replay: ModuleType) -> None:
    pool = replay.with_periods(12, 2, args())
    assert pool.idle_count == 2
    assert [p.idle_count for p in pool.autoscaling] == [12]
    assert pool.autoscaling[0].periods == [replay.WORKING_HOURS]


def test_a_csv_trace_is_read_and_a_bad_line_named(replay: ModuleType, tmp_path: Path) -> None:
    good = tmp_path / "jobs.csv"
    good.write_text("arrival_seconds,duration_seconds\n10,300\n5,60\n")
    trace = replay.read_trace(good, args(), 1)
    assert [(j.arrival, j.duration) for j in trace.jobs] == [(5.0, 60.0), (10.0, 300.0)]
    bad = tmp_path / "bad.csv"
    bad.write_text("10,300\nsoon,300\n")
    with pytest.raises(SystemExit, match=r"bad.csv:2: expected 'arrival seconds,duration"):
        replay.read_trace(bad, args(), 1)
