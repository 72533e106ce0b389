"""Pipeline shapes learned from the jobs served (no [gitlab]): the next stage guessed."""

from __future__ import annotations

import pytest

from driver.pool.lookahead import Lookahead
from driver.pool.shapes import PICKUP, PipelineShapes, ServedShapes
from driver.records import JobRecord

PROJECT = 40
HORIZON = 100.0  # a create
GAP = 5000.0  # between pipelines: each is over (FORGET) before the next starts


class Week:
    """Pipelines of one project through PipelineShapes, on a clock the test moves."""

    def __init__(self) -> None:
        self.lookahead = Lookahead()
        self.shapes = PipelineShapes(self.lookahead, horizon=HORIZON)
        self.now = 0.0
        self.pipelines = 0

    def at(self, when: float) -> None:
        self.now = when
        self.shapes.tick(when)

    def stage(self, pipeline: int, name: str, jobs: int) -> list[int]:
        """`jobs` jobs of the stage arrive now; the ids their arrivals count as."""
        counted = []
        for i in range(jobs):
            counted.append(
                self.shapes.arrived(pipeline * 100 + i, PROJECT, pipeline, name, self.now)
            )
            self.lookahead.arrived(counted[-1], self.now, hit=True)
        return counted

    def pipeline(self, b_jobs: int = 3) -> int:
        """A(2 jobs), then `b_jobs` of B 300 s later (0: it failed at A)."""
        self.pipelines += 1
        number = self.pipelines
        self.at(number * GAP)
        self.stage(number, "A", 2)
        if b_jobs:
            self.at(number * GAP + 300.0)
            self.stage(number, "B", b_jobs)
        return number

    def guessed(self) -> float:
        """The machines the guesses count as now: the sum of their shares."""
        return sum(job.share for job in self.lookahead.expected.values())


def test_an_a_job_announces_the_three_b_jobs_one_create_before_they_come() -> None:
    week = Week()
    for _ in range(PipelineShapes.NEEDED):
        week.pipeline()
    number = week.pipeline(b_jobs=0)  # the next one, its A just arrived
    start = number * GAP
    assert week.lookahead.expected == {}  # B is 300 s away: nothing yet
    week.at(start + 300.0 - HORIZON - 10)
    assert week.lookahead.expected == {}
    week.at(start + 300.0 - HORIZON)  # B is one create away: its 3 jobs, surely
    guessed = list(week.lookahead.expected.values())
    assert len(guessed) == 3 and all(job.guess for job in guessed)
    assert week.guessed() == pytest.approx(3.0)
    week.at(start + 300.0)
    week.lookahead.report()
    taken = week.stage(number, "B", 3)  # B's jobs arrive as the placeholders
    assert all(i < 0 for i in taken)
    assert week.lookahead.expected == {}
    assert week.lookahead.report().hits == 3  # counted as announced arrivals


def test_guesses_shrink_by_the_share_of_predicted_stages_that_came() -> None:
    week = Week()
    for n in range(8):  # half the pipelines stop after A (failed there)
        week.pipeline(b_jobs=3 if n % 2 else 0)
    number = week.pipeline(b_jobs=0)
    week.at(number * GAP + 300.0 - HORIZON)
    assert len(week.lookahead.expected) == 3
    assert week.guessed() == pytest.approx(1.5)  # 3 jobs, each half likely
    week.at(number * GAP + 300.0 + PICKUP + 1)  # later than any B came: given up
    assert week.lookahead.expected == {}


def test_pipelines_that_failed_at_a_do_not_teach_that_b_never_comes() -> None:
    week = Week()
    for _ in range(PipelineShapes.KEPT):
        week.pipeline()
    for _ in range(PipelineShapes.KEPT // 2):  # a bad day: everything fails at A
        week.pipeline(b_jobs=0)
    number = week.pipeline(b_jobs=0)
    week.at(number * GAP + 300.0 - HORIZON)
    assert week.guessed() == pytest.approx(3 * 0.5, abs=0.1)  # less likely, not never
    for _ in range(PipelineShapes.KEPT):  # fixed: B comes again, and is counted on again
        week.pipeline()
    number = week.pipeline(b_jobs=0)
    week.at(number * GAP + 300.0 - HORIZON)
    assert week.guessed() == pytest.approx(3.0)


def test_placeholders_a_smaller_stage_did_not_take_are_withdrawn() -> None:
    week = Week()
    for _ in range(PipelineShapes.NEEDED):
        week.pipeline()
    number = week.pipeline(b_jobs=0)
    week.at(number * GAP + 300.0 - HORIZON)
    week.at(number * GAP + 300.0)
    week.stage(number, "B", 1)  # this time B ran one job of the three
    assert len(week.lookahead.expected) == 2
    week.at(week.now + PICKUP + 1)
    assert week.lookahead.expected == {}


def test_each_project_and_stage_is_learned_on_its_own() -> None:
    week = Week()
    for _ in range(PipelineShapes.NEEDED):
        week.pipeline()
    week.at(100 * GAP)
    week.shapes.arrived(1, PROJECT + 1, 1000, "A", week.now)  # another project's A
    week.at(100 * GAP + 300.0 - HORIZON)
    assert week.lookahead.expected == {}  # nothing learned of that project


def record(job_id: int, pipeline: int, stage: str, pool: bool) -> JobRecord:
    machine = f"gmd-p{job_id}" if pool else f"gmd-job-{job_id}"
    return JobRecord(
        job_id=job_id, project_id=PROJECT, pipeline_id=pipeline, stage=stage, machine=machine
    )


def test_the_service_view_learns_from_job_records_and_counts_hits() -> None:
    lookahead = Lookahead()
    served = ServedShapes(lookahead)
    records: dict[int, JobRecord | None] = {}

    def pool_machine(job_id: int, r: JobRecord) -> bool:
        return r.machine.startswith("gmd-p")

    for p in range(1, PipelineShapes.NEEDED + 2):
        start = p * GAP
        records = {p * 10: record(p * 10, p, "build", pool=True)}
        served.served(records, start, pool_machine, HORIZON)
        if p == PipelineShapes.NEEDED + 1:
            break
        records = {p * 10 + i: record(p * 10 + i, p, "test", pool=False) for i in (1, 2, 3)}
        served.served(records, start + 300.0, pool_machine, HORIZON)
        lookahead.report()
    served.served(records, start + 300.0 - HORIZON, pool_machine, HORIZON)
    assert len(lookahead.expected) == 3
    records = {p * 10 + i: record(p * 10 + i, p, "test", pool=True) for i in (1, 2, 3)}
    served.served(records, start + 300.0, pool_machine, HORIZON)
    report = lookahead.report()
    assert (report.hits, report.misses) == (3, 0)  # the announced ones, all from the pool
    assert report.leads == ()  # a guess teaches nothing of how far ahead GitLab announces


def test_a_job_whose_prepare_is_retried_is_one_job_of_its_stage() -> None:
    """The runner retries a prepare that failed, after its cleanup (shared notes,
    custom-executor.md: three attempts, 3 s apart): the job's record is gone between the
    attempts, then back. One job."""
    served = ServedShapes(Lookahead())

    def own_machine(job_id: int, r: JobRecord) -> bool:
        return False

    served.served({1: record(1, 7, "build", pool=False)}, 100.0, own_machine, HORIZON)
    served.served({}, 130.0, own_machine, HORIZON)  # the first attempt failed: no record
    served.served({1: record(1, 7, "build", pool=False)}, 160.0, own_machine, HORIZON)
    assert [stage.jobs for stage in served.shapes.pipelines[7].stages] == [1]
