"""The bound for jobs a pool cannot see coming, checked by hand and against real replays."""

from __future__ import annotations

import pytest

from driver.pool.replay.bound import fanouts, least_idle
from driver.pool.replay.compare import demand_pool, idle_pool, oracle, unforeseen
from driver.pool.replay.simulate import Replay, Timing
from driver.pool.replay.trace import NEVER, Trace, TraceJob
from driver.pool.replay.week import Shape, working_week
from driver.settings import LimitSettings

HOUR = 3600.0


def unannounced(arrival: float, pipeline: int = -1, stage: int = 0) -> TraceJob:
    return TraceJob(arrival, 300.0, 90.0, pipeline, stage, announced=NEVER)


def test_jobs_all_announced_cost_nothing_beyond_the_floor() -> None:
    jobs = [TraceJob(100.0 * i, 300.0, 90.0, announced=50.0 * i) for i in range(1, 10)]
    bound = least_idle(jobs, 0.95)
    assert (bound.announced, bound.idle_seconds) == (9, 0.0)


def test_single_jobs_in_one_hour_need_a_machine_held_for_the_share_served() -> None:
    # Ten lone jobs in one hour: one machine held all hour serves each (K = 1); half
    # of them need it held half the hour.
    bound = least_idle([unannounced(300.0 * i) for i in range(10)], 0.5)
    assert bound.idle_seconds == pytest.approx(HOUR / 2)


def test_machines_are_held_in_the_busy_hour_first() -> None:
    busy = [unannounced(300.0 * i) for i in range(10)]
    quiet = [unannounced(HOUR + 1000.0 * i) for i in range(2)]
    bound = least_idle(busy + quiet, 10 / 12)
    assert bound.idle_seconds == pytest.approx(HOUR)
    assert bound.idle_hours == ((0, HOUR), (1, 0.0))


def test_a_fanout_is_served_only_as_far_as_machines_are_ready() -> None:
    # Two fan-outs of four: each finds r of the r machines held; half of the eight jobs
    # need two machines all hour.
    jobs = [unannounced(0.0 + i, pipeline=1) for i in range(4)]
    jobs += [unannounced(2000.0 + i, pipeline=2) for i in range(4)]
    assert fanouts(jobs) == [(0.0, 4), (2000.0, 4)]
    assert least_idle(jobs, 0.5).idle_seconds == pytest.approx(2 * HOUR)


@pytest.mark.parametrize("lookahead", [True, False])
def test_no_replayed_pool_beats_the_bound(lookahead: bool) -> None:
    timing = Timing()
    trace = working_week(Shape(days=1.0), 1, timing.creates, timing.claim_seconds)
    for pool in (demand_pool(0.95, timing), idle_pool(12, 3, timing), idle_pool(2, 2, timing)):
        result = Replay(
            trace,
            pool,
            LimitSettings(),
            seed=1,
            creates=timing.creates,
            claim_seconds=timing.claim_seconds,
            lookahead=lookahead,
        ).run("pool")
        # What a pool that knows no more than GitLab announces pays at the hit rate it got.
        bound = unforeseen(trace, timing, result.hit_rate)
        assert oracle(trace, timing).total_seconds <= bound.total_seconds
        assert result.total_seconds > bound.total_seconds


def test_the_bound_is_a_row_of_the_comparison() -> None:
    trace = Trace([unannounced(300.0 * i) for i in range(10)], HOUR, "test")
    row = unforeseen(trace, Timing(), 0.5)
    assert row.hit_rate == pytest.approx(0.5)
    assert row.idle_seconds == pytest.approx(HOUR / 2)
    assert row.halves[1].seconds - oracle(trace, Timing()).halves[1].seconds == pytest.approx(
        HOUR / 2
    )
