"""`run` holds its job's stage lock for the whole stage, or does not run.

The sweeper's look holds the stage lock exclusively for an instant; a stage
that starts in that instant waits for it. The interleavings are forced by
hooks on the lock, never by sleeps.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from driver.errors import DriverError
from driver.stages import run
from driver.state import JobDir, JobPhase, JobRecord, Lock


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JobDir:
    job_dir = JobDir(tmp_path / "st", 4711)
    job_dir.create()
    job_dir.save(JobRecord(job_id=4711, project_id=3, machine="gmd-4711", phase=JobPhase.READY))
    monkeypatch.setenv("GITLAB_MACHINE_DRIVER_JOB_DIR", str(job_dir.path))
    return job_dir


def stage_lock_free(job: JobDir) -> bool:
    """What the sweeper's look sees: could it take the stage lock exclusively now?"""
    probe = Lock(job.stage_lock_path, make_dir=False)
    if probe.try_acquire():
        probe.release()
        return True
    return False


def test_a_stage_started_during_the_sweepers_look_holds_its_lock(
    job: JobDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweepers_look = Lock(job.stage_lock_path, make_dir=False)
    assert sweepers_look.try_acquire()
    try_acquire = Lock.try_acquire

    def the_look_ends_after_the_stage_tried(self: Lock) -> bool:
        got = try_acquire(self)
        if not got and self.shared:
            sweepers_look.release()  # the sweeper's instant is over
        return got

    monkeypatch.setattr(Lock, "try_acquire", the_look_ends_after_the_stage_tried)
    seen: list[bool] = []

    def stage(script: str, name: str, job_dir: JobDir, record: JobRecord) -> int:
        seen.append(stage_lock_free(job_dir))
        return 0

    monkeypatch.setattr(run, "_run", stage)
    assert run.run_stage("script", "build_script", None) == 0
    assert seen == [False], "the stage ran without its stage lock"
    assert stage_lock_free(job)  # released when the stage ended


def test_a_stage_does_not_run_while_the_sweeper_removes_its_machine(
    job: JobDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweeper = Lock(job.stage_lock_path, make_dir=False)
    assert sweeper.try_acquire()  # held through the removal
    monkeypatch.setattr(run, "STAGE_LOCK_WAIT", 0.05, raising=False)
    monkeypatch.setattr(run, "_run", lambda *_: pytest.fail("the stage ran"))
    with pytest.raises(DriverError, match="the sweeper is removing"):
        run.run_stage("script", "build_script", None)
    sweeper.release()


def test_the_stage_locks_time_is_when_the_stage_ended(
    job: JobDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage that ran longer than the sweeper's grace, then failed: in the gap before
    its cleanup, "no stage ran for grace" must not hold."""

    def long_stage(script: str, name: str, job_dir: JobDir, record: JobRecord) -> int:
        started = time.time() - 3600  # it started an hour ago
        os.utime(job_dir.stage_lock_path, (started, started))
        return 1

    monkeypatch.setattr(run, "_run", long_stage)
    run.run_stage("script", "build_script", None)
    age = job.last_stage_age(time.time())
    assert age is not None and age < 60
