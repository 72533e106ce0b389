"""The built-in week and its knobs for GitLab's pipeline shapes."""

from __future__ import annotations

import math

from driver.pool.replay.simulate import Timing
from driver.pool.replay.trace import Trace, TraceJob
from driver.pool.replay.week import Shape, working_week

CREATES = Timing().creates


def week(**knobs: float) -> Trace:
    return working_week(Shape(days=1, **knobs), 5, CREATES, 1.0)  # type: ignore[arg-type]


def announced(job: TraceJob) -> bool:
    return job.announced is not None and not math.isnan(job.announced)


def early_starters(trace: Trace) -> int:
    """Jobs that arrive before the slowest job of the stage before them ended."""
    ends: dict[tuple[int, int], float] = {}
    for j in trace.jobs:
        key = (j.pipeline, j.stage)
        ends[key] = max(ends.get(key, 0.0), j.arrival + 1.0 + j.duration)
    return sum(
        1
        for j in trace.jobs
        if j.runs and j.stage > 0 and j.arrival < ends.get((j.pipeline, j.stage - 1), 0) - 5.0
    )


def test_the_standard_week_is_the_one_the_figures_were_measured_on() -> None:
    trace = working_week(Shape(), 1, CREATES, 1.0)
    assert trace.describe.startswith("week of seed 1: 1448 pipelines, 9166 jobs here, 739 ")


def test_needs_start_a_job_when_the_jobs_it_needs_end_not_the_whole_stage() -> None:
    assert early_starters(week()) == 0
    dag = week(dag=1.0)
    assert early_starters(dag) > 50
    # Each is announced when the first job it needs arrives, and predicted from them.
    later = [j for j in dag.jobs if j.runs and j.stage > 0]
    assert all(announced(j) and j.announced <= j.arrival for j in later)  # type: ignore[operator]


def test_another_runner_manager_takes_its_share_of_the_jobs() -> None:
    trace = week(managers=2)
    ran = [j for j in trace.jobs if j.runs]
    here = sum(j.here for j in ran)
    assert 0.4 < here / len(ran) < 0.6
    # What this manager never sees it cannot announce: only jobs after one here are.
    assert any(not announced(j) for j in ran if j.stage > 0)


def test_watching_every_pipeline_announces_the_jobs_after_one_run_elsewhere() -> None:
    """watch_all: the pool service hearing a group webhook's pipeline events."""
    trace = week(managers=2, watch_all=1)
    assert [(j.arrival, j.here) for j in trace.jobs] == [
        (j.arrival, j.here) for j in week(managers=2).jobs
    ]  # the same week, only more of it announced
    later = [j for j in trace.jobs if j.runs and j.stage > 0]
    assert later and all(announced(j) for j in later)


def test_exact_predictions_change_only_the_predictions() -> None:
    """exact: what the lookahead's prediction errors cost, measured against none."""
    usual, exact = week(), week(exact=1)
    assert [(j.arrival, j.announced) for j in exact.jobs] == [
        (j.arrival, j.announced) for j in usual.jobs
    ]
    foreseen = [(u, e) for u, e in zip(usual.jobs, exact.jobs, strict=True) if announced(u)]
    assert foreseen and all(e.predicted == e.arrival for _, e in foreseen)
    # The usual predictions miss: a job runs its usual duration give or take.
    assert sum(abs(u.predicted - u.arrival) > 10 for u, _ in foreseen) > len(foreseen) / 2


def test_jobs_gitlab_does_not_announce_are_never_announced() -> None:
    plain = week()
    for knob in ("manual", "delayed", "retry", "children"):
        shaped = week(**{knob: 1.0})
        unannounced = sum(1 for j in shaped.jobs if j.runs and not announced(j))
        share = unannounced / sum(j.runs for j in shaped.jobs)
        before = sum(1 for j in plain.jobs if j.runs and not announced(j))
        assert share > before / sum(j.runs for j in plain.jobs), knob


def test_on_failure_jobs_run_only_in_failed_pipelines_and_cancels_stop_the_rest() -> None:
    failing = week(on_failure=1.0, stage_failure=0.5)
    assert len(failing.jobs) > len(week(stage_failure=0.5).jobs)  # an on_failure job each
    canceled = week(cancel=1.0)
    assert sum(not j.runs for j in canceled.jobs) > 2 * sum(not j.runs for j in week().jobs)


def test_a_stageless_chain_announces_each_job_when_the_one_it_needs_arrives() -> None:
    chains = week(chains=1.0)
    by_place = {(j.pipeline, j.stage): j for j in chains.jobs}
    checked = 0
    for j in chains.jobs:
        before = by_place.get((j.pipeline, j.stage - 1))
        if j.stage > 0 and before is not None and before.runs:
            # Announced with the job before it, predicted from when that one should end:
            # not with the chain's first job, not at the time of the one before it.
            assert j.announced == before.arrival
            assert j.predicted == before.arrival + 1.0 + before.usual
            checked += 1
    assert checked > 100


def test_a_projects_pipelines_keep_its_shape() -> None:
    trace = week(projects=3)
    shapes: dict[int, set[tuple[tuple[int, int, int], ...]]] = {}
    pipelines: dict[int, list[TraceJob]] = {}
    for j in trace.jobs:
        pipelines.setdefault(j.pipeline, []).append(j)
    for jobs in pipelines.values():
        if all(j.runs for j in jobs):  # failed ones are cut short
            stages = sorted({j.stage for j in jobs})
            count = tuple((s, sum(j.stage == s for j in jobs), 0) for s in stages)
            shapes.setdefault(jobs[0].project, set()).add(count)
    assert set(shapes) == {1, 2, 3}
    assert all(len(seen) == 1 for seen in shapes.values())  # one shape per project
    assert {j.project for j in week().jobs} == {0}  # the standard week: none
