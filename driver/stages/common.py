"""What config, prepare and cleanup all do first (`run` stays lean and does its own)."""

from __future__ import annotations

from dataclasses import dataclass

from driver import log, signals
from driver.contract import read_job
from driver.docker_machine import DockerMachine
from driver.payload import Job
from driver.settings import Settings, load_settings
from driver.state import JobDir, StateDir


@dataclass(frozen=True)
class Stage:
    settings: Settings
    job: Job
    state: StateDir
    job_dir: JobDir
    machine: str  # the job's own machine name (a pool machine it takes has another)

    def docker_machine(self) -> DockerMachine:
        return DockerMachine(self.settings)


def begin(config_path: str | None, stage: str, *, cancellable: bool) -> Stage:
    """Settings, the job, the admin's log bound to the job; SIGTERM either raises
    Cancelled (``cancellable``: half-done work is undone) or is ignored (removals
    must finish once begun; the runner does not cancel cleanup)."""
    settings = load_settings(config_path)
    job = read_job()
    machine = settings.machine_name(job.id)
    log.setup(settings.log_path, job_id=job.id, machine=machine, stage=stage)
    if cancellable:
        signals.raise_on_termination()
    else:
        signals.ignore_termination()
    state = StateDir(settings.state_dir)
    return Stage(settings, job, state, state.job(job.id), machine)
