"""The replay (bench/replay.py) models the pool as the service and prepare behave."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from driver.settings import LimitSettings
from tests.benches import load_replay


@pytest.fixture(scope="module")
def replay() -> ModuleType:
    return load_replay()


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
        "stages": 3,
        "first_stage_median": 1.0,
        "stage_failure": 0.1,
        "duration_spread": 0.3,
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


def test_a_job_waiting_for_capacity_takes_the_pool_machine_that_becomes_ready(
    replay: ModuleType,
) -> None:
    # One machine allowed, the pool's create holds it: the job takes that machine.
    trace = day(replay, [(1.0, 300.0, 80.0)])
    limits = LimitSettings(max_machines=1)
    creates = replay.LogNormal(90.0, 240.0)
    simulation = replay.Replay(
        trace, replay.fixed(1, args()), limits, seed=1, creates=creates, claim_seconds=1.0
    )
    result = simulation.run("x")
    (only,) = result.runs
    assert not only.hit  # it came before the machine was ready
    assert only.machine == "p0"
    assert only.prepared == pytest.approx(result.vms[0].ready_at - 1.0 + 1.0)


def test_the_replay_is_deterministic_for_a_seed(replay: ModuleType) -> None:
    a = replay.working_week(args(), 3)
    b = replay.working_week(args(), 3)
    assert a.jobs == b.jobs
    monday = [(j.arrival, j.duration, j.create) for j in a.jobs if j.arrival < 86400]
    first = run(replay, day(replay, monday), replay.demand(0.9, args()), LimitSettings())
    second = run(replay, day(replay, monday), replay.demand(0.9, args()), LimitSettings())
    assert first.hit_rate > 0.5  # the policy did something to compare
    assert (first.hit_rate, first.idle_seconds) == (second.hit_rate, second.idle_seconds)


def test_a_pipelines_next_stage_finds_machines_made_when_it_was_announced(
    replay: ModuleType,
) -> None:
    # One build job, then 5 test jobs 10 minutes later; the pool has no history.
    build = (3600.0, 590.0, 80.0)
    tests = [(4200.0 + i, 300.0, 80.0) for i in range(5)]

    def staged(pipeline: int) -> Any:
        jobs = [replay.TraceJob(*build, pipeline, 0)]
        jobs += [replay.TraceJob(*job, pipeline, 1) for job in tests]
        return replay.Trace(jobs, 86400.0, "test")

    seen = run(replay, staged(1), replay.demand(0.95, args()), LimitSettings())
    unseen = run(replay, staged(-1), replay.demand(0.95, args()), LimitSettings())
    assert [r.hit for r in seen.runs] == [False] + [True] * 5
    # Unannounced, they find at most what the policy keeps for unforeseen jobs.
    assert sum(r.hit for r in unseen.runs) <= 2
    # docker+machine's IdleCount knows nothing of stages: with none idle, all miss.
    assert run(replay, staged(1), replay.fixed(0, args()), LimitSettings()).hit_rate == 0


def test_a_skipped_stage_withdraws_its_announced_jobs(replay: ModuleType) -> None:
    build = replay.TraceJob(3600.0, 290.0, 80.0, 1, 0)
    skipped = [replay.TraceJob(3900.0, 300.0, 80.0, 1, 1, False) for _ in range(3)]
    result = run(
        replay,
        replay.Trace([build, *skipped], 86400.0, "test"),
        replay.demand(0.95, args()),
        LimitSettings(),
    )
    assert len(result.runs) == 1  # the skipped jobs never ran
    # Their 3 machines (and one kept for unforeseen jobs) were made, then removed unused
    # once idle past idle_time: nothing stays for jobs that will not come.
    assert len(result.vms) >= 3
    assert result.never_used == len(result.vms)


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
    staged = tmp_path / "staged.csv"
    replay.write_trace(replay.working_week(args(), 2), staged)
    again = replay.read_trace(staged, args(), 2)
    first = [(j.pipeline, j.stage, j.runs) for j in replay.working_week(args(), 2).jobs]
    assert [(j.pipeline, j.stage, j.runs) for j in again.jobs] == first
    bad = tmp_path / "bad.csv"
    bad.write_text("10,300\nsoon,300\n")
    with pytest.raises(SystemExit, match=r"bad.csv:2: expected 'arrival seconds,duration"):
        replay.read_trace(bad, args(), 1)
