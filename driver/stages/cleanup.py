"""cleanup: destroy the job's machine and everything the driver kept for it.

Idempotent: the runner calls it after every failed prepare attempt and once
at the end, also for jobs whose prepare never ran or never got a machine.
"""

from __future__ import annotations

import argparse
import time

from driver import log, provision, ssh, state_owner
from driver.errors import JobError
from driver.log import say
from driver.settings import Settings
from driver.stages.common import begin
from driver.state import JobDir, JobPhase, JobRecord


def main(args: argparse.Namespace) -> int:
    stage = begin(args.config_path, "cleanup", cancellable=False)
    settings, job_dir = stage.settings, stage.job_dir
    # Job N of another GitLab instance: job N here is someone else's. Touch nothing.
    state_owner.claim_gitlab(settings, stage.job.server_url)
    deadline = time.monotonic() + settings.cleanup.timeout
    dm = stage.docker_machine()
    with job_dir.locked(timeout=settings.cleanup.timeout):
        names = {stage.machine}
        record = None
        if job_dir.state_file.exists():
            try:
                record = job_dir.load()
                names.add(record.machine)
            except JobError as e:
                log.warn(f"{e.message}; removing machine {stage.machine} all the same")
        # Pool machines this job claimed but never took over (its prepare was killed).
        names.update(stage.state.release_claims(stage.job.id))
        ssh.stop_master(job_dir)
        if record and _keep_for_inspection(settings, job_dir, record):
            return 0
        clean = True
        for machine in sorted(names):
            clean &= provision.destroy(dm, machine, settings, say, deadline=deadline)
            stage.state.forget_pool(machine)
        job_dir.remove()
    log.get().info("cleaned_up", clean=clean)
    return 0


def _keep_for_inspection(settings: Settings, job_dir: JobDir, record: JobRecord) -> bool:
    """A failed job's machine stays for debugging when the admin asked for it."""
    if not settings.debug.keep_failed_machines:
        return False
    if record.phase == JobPhase.READY and job_dir.failed_marker.exists():
        record.advance(JobPhase.KEPT)
        record.kept_until = time.time() + settings.debug.keep_max_age
        job_dir.save(record)
    if record.phase != JobPhase.KEPT:
        return False
    until = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(record.kept_until))
    log.warn(
        f"keeping machine {record.machine} of failed job {record.job_id} for inspection until "
        f"{until}: `gitlab-machine-driver ssh {record.job_id}`; the sweeper removes it then"
    )
    log.get().warning("kept_for_inspection", kept_until=record.kept_until)
    return True
