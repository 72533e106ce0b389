"""The pool service without [gitlab]: the jobs prepared here teach it their pipelines'
shapes, and a pipeline's next stage is announced to its policy when it is near."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from driver.payload import Job
from driver.pool import service as service_module
from driver.pool.lookahead import Lookahead
from driver.pool.service import PoolService
from driver.pool.shapes import PipelineShapes
from driver.settings import Settings, parse_settings
from driver.stages.claim import new_record
from driver.state import JobDir, JobPhase, JobRecord

PROJECT = 40
GAP = 5000.0  # between pipelines: each is over before the next starts


def prepared(settings: Settings, job_id: int, pipeline: int, stage: str) -> None:
    """A job's record as prepare writes it (project, pipeline and stage from its payload)."""
    job_dir = JobDir(settings.state_dir, job_id)
    job_dir.create()
    job_dir.save(
        JobRecord(
            job_id=job_id,
            project_id=PROJECT,
            pipeline_id=pipeline,
            stage=stage,
            machine=settings.machine_name(job_id),  # its own machine: a miss
            phase=JobPhase.READY,
        )
    )


def finished(settings: Settings, job_id: int) -> None:
    JobDir(settings.state_dir, job_id).remove()


@pytest.mark.parametrize("learn", [True, False])
def test_served_jobs_announce_their_pipelines_next_stage_when_it_is_near(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, learn: bool
) -> None:
    clock = [0.0]
    monkeypatch.setattr(service_module, "time", types.SimpleNamespace(time=lambda: clock[0]))
    settings = parse_settings(
        {"state_dir": str(tmp_path), "pool": {"policy": "demand", "learn_shapes": learn}}
    )
    service = PoolService(settings)
    create = 120.0  # the policy's create time until it measured one (a slow create: its own)
    job_id = 0
    for pipeline in range(1, PipelineShapes.NEEDED + 2):  # build (1 job), then test (3)
        clock[0] = pipeline * GAP
        job_id += 1
        prepared(settings, job_id, pipeline, "build")
        service.observe()
        if pipeline > PipelineShapes.NEEDED:
            break
        finished(settings, job_id)
        clock[0] += 300.0
        tests = [job_id + 1, job_id + 2, job_id + 3]
        for test in tests:
            prepared(settings, test, pipeline, "test")
        service.observe()
        for test in tests:
            finished(settings, test)
        job_id += 3
    observation, _ = service.observe()
    assert observation.ahead.expected == ()  # its test stage is 300 s away
    clock[0] += 300.0 - create
    observation, _ = service.observe()
    assert len(observation.ahead.expected) == (3 if learn else 0)  # one create away
    if learn:  # what it learned outlives a restart of the service (an upgrade, a reboot)
        service.remember()
        again = PoolService(settings)
        again.recall()
        assert service.shapes is not None and again.shapes is not None
        assert again.shapes.shapes.memory() == service.shapes.shapes.memory() != []


def test_remembered_shapes_that_are_not_are_left_out() -> None:
    """A torn or foreign memory file costs that learning only, never the service."""
    shapes = PipelineShapes(Lookahead())
    good = [40, "build", [[3, 300.0], [0, 0.0]]]
    shapes.recall([good, [41, "test", "not outcomes"], "junk", [42]])
    assert shapes.memory() == [good]
    shapes.recall({"not": "a list"})
    assert shapes.memory() == [good]


def test_a_job_that_started_a_stopped_machine_is_no_hit(tmp_path: Path) -> None:
    """What the pool learns from counts a job as served from it only when a ready
    machine waited for it: one that started a stopped machine waited for the start."""
    service = PoolService(parse_settings({"state_dir": str(tmp_path)}))
    own = JobRecord(job_id=1, project_id=PROJECT, machine=service.settings.machine_name(1))
    ready = JobRecord(job_id=2, project_id=PROJECT, machine="gmd-pool-7", phase=JobPhase.READY)
    started = JobRecord(job_id=3, project_id=PROJECT, machine="gmd-pool-8", timings={"start": 21.0})
    assert [service._pool_machine(r.job_id, r) for r in (own, ready, started)] == [
        False,
        True,
        False,
    ]


def test_a_job_seen_while_its_stopped_machine_starts_is_no_hit(tmp_path: Path) -> None:
    """The service may look while the start is under way (tens of seconds): the job's
    record names the pool machine then, and has no start time yet."""
    service = PoolService(parse_settings({"state_dir": str(tmp_path)}))
    assert service.shapes is not None
    job = Job(id=4, project_id=PROJECT, pipeline_id=90, name="test", stage="test")
    starting = new_record(service.settings, job, "gmd-pool-9")  # as stopped.take saves it
    service.lookahead.announce([4], 100.0)
    service.shapes.served({4: starting}, 110.0, service._pool_machine)
    report = service.lookahead.report()
    assert (report.hits, report.misses) == (0, 1)
