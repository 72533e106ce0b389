"""cleanup: destroy the job's machine and everything the driver kept for it.

Idempotent: the runner calls it after every failed prepare attempt and once
at the end, also for jobs whose prepare never ran or never got a machine.
"""

from __future__ import annotations

import argparse
import time

from driver import log, provision, signals, ssh
from driver.contract import read_job
from driver.docker_machine import DockerMachine
from driver.errors import JobError
from driver.log import say
from driver.settings import Settings, load_settings
from driver.state import FAILED_MARKER, JobDir, MachineState


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config_path)
    job = read_job()
    name = settings.machine_name(job.id)
    log.setup(settings.log_path, job_id=job.id, machine=name, stage="cleanup")
    # Removing a machine must finish once begun; the runner does not cancel cleanup.
    signals.ignore_termination()
    deadline = time.monotonic() + settings.cleanup.timeout
    job_dir = JobDir(settings.state_dir, job.id)
    dm = DockerMachine(settings)
    with job_dir.locked(timeout=settings.cleanup.timeout):
        names = {name}
        state = None
        if job_dir.exists():
            try:
                state = job_dir.load()
                names.add(state.machine)
            except JobError as e:
                log.warn(f"{e.message}; removing machine {name} all the same")
        ssh.stop_master(job_dir)
        if state and _keep_for_inspection(settings, job_dir, state):
            return 0
        clean = True
        for machine in sorted(names):
            clean &= provision.destroy(dm, machine, settings, say, deadline=deadline)
        job_dir.remove()
    log.get().info("cleaned_up", clean=clean)
    return 0


def _keep_for_inspection(settings: Settings, job_dir: JobDir, state: MachineState) -> bool:
    """A failed job's machine stays for debugging when the admin asked for it."""
    failed = job_dir.path / FAILED_MARKER
    if not settings.debug.keep_failed_machines or not (failed.exists() or state.phase == "kept"):
        return False
    if state.phase != "kept":
        state.phase = "kept"
        state.kept_until = time.time() + settings.debug.keep_max_age
        job_dir.save(state)
    until = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(state.kept_until))
    log.warn(
        f"keeping machine {state.machine} of failed job {state.job_id} for inspection until "
        f"{until}: `gitlab-machine-driver ssh {state.job_id}`; the sweeper removes it then"
    )
    log.get().warning("kept_for_inspection", kept_until=state.kept_until)
    return True
