"""cleanup: destroy the job's machine and everything the driver kept for it.

Idempotent: the runner calls it after every failed prepare attempt and once
at the end, also for jobs whose prepare never ran or never got a machine.
"""

from __future__ import annotations

import argparse
import time

from driver import job as job_file
from driver import log, provision, signals, ssh
from driver import settings as settings_file
from driver.errors import JobError
from driver.log import say
from driver.machine import DockerMachine
from driver.state import JobDir


def main(args: argparse.Namespace) -> int:
    settings = settings_file.load(args.config_path)
    job = job_file.from_response_file()
    name = settings.machine_name(job.id)
    log.setup(settings.log_path, job_id=job.id, machine=name, stage="cleanup")
    # Removing a machine must finish once begun; the runner does not cancel cleanup.
    signals.ignore_termination()
    deadline = time.monotonic() + settings.cleanup.timeout
    job_dir = JobDir(settings.state_dir, job.id)
    dm = DockerMachine(settings)
    with job_dir.locked(timeout=settings.cleanup.timeout):
        names = {name}
        if job_dir.exists():
            try:
                names.add(job_dir.load().machine)
            except JobError as e:
                log.warn(f"{e.message}; removing machine {name} all the same")
        ssh.stop_master(job_dir)
        clean = True
        for machine in sorted(names):
            clean &= provision.destroy(dm, machine, settings, say, deadline=deadline)
        job_dir.remove()
    log.get().info("cleaned_up", clean=clean)
    return 0
