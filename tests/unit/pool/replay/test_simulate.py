"""The replay models the pool as the service and prepare behave."""

from __future__ import annotations

import pytest

from driver.pool.replay.compare import demand_pool, idle_pool
from driver.pool.replay.simulate import Replay, Result, StoppedTier, Timing
from driver.pool.replay.trace import NEVER, LogNormal, Trace, TraceJob
from driver.pool.replay.week import Shape, working_week
from driver.settings import LimitSettings, PoolSettings

TIMING = Timing()


def day(jobs: list[tuple[float, float, float]]) -> Trace:
    return Trace([TraceJob(*job) for job in jobs], 86400.0, "test")


def run(
    trace: Trace,
    pool: PoolSettings,
    limits: LimitSettings | None = None,
    *,
    lookahead: bool = True,
    tier: StoppedTier | None = None,
    learn: bool = False,
) -> Result:
    creates = LogNormal(90.0, 240.0)
    replay = Replay(
        trace,
        pool,
        limits or LimitSettings(),
        seed=1,
        creates=creates,
        claim_seconds=1.0,
        lookahead=lookahead,
        tier=tier,
        learn=learn,
    )
    return replay.run("x")


def test_a_job_that_misses_waits_for_its_own_create_only() -> None:
    result = run(day([(100.0, 300.0, 80.0), (100.5, 300.0, 150.0)]), idle_pool(0, 0, TIMING))
    assert [r.prepared for r in result.runs] == [80.0, 150.0]
    assert result.hit_rate == 0
    # Total machine-seconds: each job's own create and its run.
    assert result.total_seconds == pytest.approx(80.0 + 300.0 + 150.0 + 300.0)


def test_a_ready_machine_is_taken_and_replaced() -> None:
    result = run(day([(3600.0, 300.0, 80.0)]), idle_pool(1, 1, TIMING))
    assert result.hit_rate == 1.0
    assert result.runs[0].prepared == 1.0
    assert len(result.vms) == 2  # the first, and its replacement
    assert result.never_used == 0
    # Idle: both machines ready without a job; total adds their creates and the job.
    first, second = result.vms
    assert first.ready_at is not None and second.ready_at is not None
    idle = (3600.0 - first.ready_at) + (86400.0 - second.ready_at)
    assert result.idle_seconds == pytest.approx(idle)
    made = (3600.0 - first.started) + (86400.0 - second.started)  # create to claim, or end
    assert result.total_seconds == pytest.approx(made + 1.0 + 300.0)


def test_a_job_waits_for_capacity_when_the_limits_say_so() -> None:
    trace = day([(100.0, 500.0, 80.0), (101.0, 300.0, 80.0)])
    result = run(trace, idle_pool(0, 0, TIMING), LimitSettings(max_machines=1))
    # The second job gets a machine when the first job's is gone: 100 + 80 + 500.
    assert result.runs[1].prepared == pytest.approx(680.0 - 101.0 + 80.0)


def test_a_job_waiting_for_capacity_takes_the_pool_machine_that_becomes_ready() -> None:
    # One machine allowed, the pool's create holds it: the job takes that machine.
    result = run(day([(1.0, 300.0, 80.0)]), idle_pool(1, 1, TIMING), LimitSettings(max_machines=1))
    (only,) = result.runs
    assert not only.hit  # it came before the machine was ready
    assert only.machine == "p0"
    assert result.vms[0].ready_at is not None
    assert only.prepared == pytest.approx(result.vms[0].ready_at - 1.0 + 1.0)


def test_the_replay_is_deterministic_for_a_seed() -> None:
    a = working_week(Shape(days=1), 3, TIMING.creates, 1.0)
    b = working_week(Shape(days=1), 3, TIMING.creates, 1.0)
    assert a.jobs == b.jobs
    first = run(a, demand_pool(0.9, TIMING))
    second = run(b, demand_pool(0.9, TIMING))
    assert first.hit_rate > 0.5  # the policy did something to compare
    assert (first.hit_rate, first.idle_seconds) == (second.hit_rate, second.idle_seconds)


def staged(pipeline: int) -> Trace:
    """One build job, then 5 test jobs 10 minutes later."""
    jobs = [TraceJob(3600.0, 590.0, 80.0, pipeline, 0)]
    jobs += [TraceJob(4200.0 + i, 300.0, 80.0, pipeline, 1) for i in range(5)]
    return Trace(jobs, 86400.0, "test")


def test_a_pipelines_next_stage_finds_machines_made_when_it_was_announced() -> None:
    seen = run(staged(1), demand_pool(0.95, TIMING))
    unseen = run(staged(-1), demand_pool(0.95, TIMING))
    assert [r.hit for r in seen.runs] == [False] + [True] * 5
    # Unannounced, they find at most what the policy keeps for unforeseen jobs.
    assert sum(r.hit for r in unseen.runs) <= 2
    # Without the lookahead ([gitlab] not set) the demand policy guesses as well.
    assert sum(r.hit for r in run(staged(1), demand_pool(0.95, TIMING), lookahead=False).runs) <= 2


def test_learned_shapes_have_a_known_next_stage_ready_without_being_told() -> None:
    jobs = []
    for p in range(10):  # one project's pipelines: a build, then 5 tests 600 s later
        start = 3600.0 * (p + 1)
        jobs.append(TraceJob(start, 590.0, 80.0, p, 0))
        jobs += [TraceJob(start + 600.0 + i, 300.0, 80.0, p, 1) for i in range(5)]
    trace = Trace(jobs, 86400.0, "test")
    learned = run(trace, idle_pool(0, 0, TIMING), lookahead=False, learn=True)
    # Learned from the first ones (NEEDED), the later pipelines' tests find machines.
    tests = [r.hit for r in learned.runs if r.job.stage == 1]
    assert not any(tests[:25])
    assert sum(tests[25:]) >= 20  # of 25: some creates are slower than the slow one
    assert run(trace, idle_pool(0, 0, TIMING), lookahead=False).hit_rate == 0


def test_idle_counts_with_the_lookahead_have_the_next_stage_ready_too() -> None:
    # docker+machine's IdleCount 0 knows nothing of stages: with none idle, all miss...
    assert run(staged(1), idle_pool(0, 0, TIMING), lookahead=False).hit_rate == 0
    # ...and told of the next stage, it has its 5 machines ready.
    told = run(staged(1), idle_pool(0, 0, TIMING))
    assert [r.hit for r in told.runs] == [False] + [True] * 5


def test_a_skipped_stage_withdraws_its_announced_jobs() -> None:
    build = TraceJob(3600.0, 290.0, 80.0, 1, 0)
    skipped = [TraceJob(3900.0, 300.0, 80.0, 1, 1, False) for _ in range(3)]
    result = run(Trace([build, *skipped], 86400.0, "test"), demand_pool(0.95, TIMING))
    assert len(result.runs) == 1  # the skipped jobs never ran
    # Their 3 machines (and one kept for unforeseen jobs) were made, then removed unused
    # once idle past idle_time: nothing stays for jobs that will not come.
    assert len(result.vms) >= 3
    assert result.never_used == len(result.vms)


def test_jobs_another_manager_takes_are_withdrawn_and_teach_the_share() -> None:
    # 20 pipelines; the second stage's 4 jobs each go to this manager or the other.
    jobs = []
    for p in range(20):
        start = 3600.0 * (p + 1)
        jobs.append(TraceJob(start, 590.0, 80.0, p, 0))
        for i in range(4):
            jobs.append(TraceJob(start + 600.0 + i, 300.0, 80.0, p, 1, here=i % 2 == 0))
    trace = Trace(sorted(jobs, key=lambda j: j.arrival), 86400.0, "two managers")
    replay = Replay(
        trace,
        idle_pool(0, 0, TIMING),
        LimitSettings(),
        seed=1,
        creates=LogNormal(90.0, 240.0),
        claim_seconds=1.0,
    )
    result = replay.run("x")
    assert len(result.runs) == 20 + 40  # only the jobs that come here
    assert replay.lookahead.share(frozenset()) == pytest.approx(0.5, abs=0.05)
    # Each announced job counts as half a machine: the last 5 pipelines make fewer
    # machines than the 4 a pipeline announces.
    late = [vm for vm in result.vms if vm.started > 3600.0 * 15]
    assert len(late) < 5 * 4


def test_a_job_nobody_announces_gets_no_machine_ahead() -> None:
    build = TraceJob(3600.0, 590.0, 80.0, 1, 0)
    manual = TraceJob(4200.0, 300.0, 80.0, 1, 1, announced=NEVER)
    assert run(Trace([build, manual], 86400.0, "t"), idle_pool(0, 0, TIMING)).hit_rate == 0


def test_a_stopped_tier_starts_a_machine_instead_of_creating_one() -> None:
    tier = StoppedTier(size=1, start_median=10.0, start_p95=11.0)
    result = run(
        day([(100.0, 300.0, 80.0), (200.0, 300.0, 80.0)]), idle_pool(0, 0, TIMING), tier=tier
    )
    first, second = result.runs
    assert 9.0 <= (first.prepared or 0.0) <= 12.0  # started from the tier
    assert second.prepared == 80.0  # the tier was still being refilled: a full create
    assert result.stopped_seconds == pytest.approx(100.0 + 86400.0 - (100.0 + result.tier_running))


def test_a_stopped_tier_only_jobs_start_waits_for_a_job_that_misses() -> None:
    """pool_starts False (the pool service as built): the pool's own create of its one
    ready machine is a full create, and the stopped machine waits for a job that finds
    none ready; in the model the pool's create starts it at once."""
    jobs = day([(50.0, 300.0, 80.0), (5000.0, 300.0, 80.0)])
    model = run(jobs, idle_pool(1, 1, TIMING), tier=StoppedTier(size=1))
    built = run(jobs, idle_pool(1, 1, TIMING), tier=StoppedTier(size=1, pool_starts=False))
    # The model's first pool create took the tier's machine (refilled at once, so it is
    # stopped again a create later); as built, it is taken by the job at 50 s that the
    # pool's full create (80 s or more) has not served yet.
    assert built.runs[0].hit is False
    assert 9.0 <= (built.runs[0].prepared or 0.0) <= 60.0  # a start, not a create
    assert model.runs[0].hit is True  # the pool's start was ready within the start time
