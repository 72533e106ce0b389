"""sweep: remove the machines of jobs that are over (run from a timer, or by hand)."""

from __future__ import annotations

import argparse

from driver import log, provision, ssh, sweeper
from driver import settings as settings_file
from driver.log import say
from driver.machine import DockerMachine
from driver.state import JobDir


def main(args: argparse.Namespace) -> int:
    settings = settings_file.load(args.config_path)
    log.setup(settings.log_path, stage="sweep")
    dm = DockerMachine(settings)
    job_status = sweeper.gitlab_job_status(settings) if settings.gitlab.configured else None
    owned = sweeper.inventory(dm, settings)
    now = sweeper.now()
    verdicts = [sweeper.decide(m, now, settings, job_status) for m in owned]
    doing = "would remove" if args.dry_run else "removing"
    orphaned = 0
    for v in verdicts:
        action = doing if v.remove else "keeping"
        say(f"{v.machine.name}: {action} ({v.reason})")
        log.get().info("sweep_verdict", machine=v.machine.name, remove=v.remove, reason=v.reason)
        if v.remove and not args.dry_run:
            job_dir = JobDir(settings.state_dir, v.machine.job_id or 0)
            with job_dir.locked(timeout=settings.cleanup.timeout):
                ssh.stop_master(job_dir)
                if not provision.destroy(dm, v.machine.name, settings, say):
                    orphaned += 1
                job_dir.remove()
    for job_dir in sweeper.stale_job_dirs(settings, {m.name for m in owned}):
        say(f"job state {job_dir.path}: {doing} (its machine and its runner are gone)")
        if not args.dry_run:
            with job_dir.locked(timeout=60):
                job_dir.remove()
    removed = sum(v.remove for v in verdicts)
    say(
        f"{len(verdicts)} machine(s) owned, {removed} {'to remove' if args.dry_run else 'removed'}"
        + (f", {orphaned} may be orphaned in the cloud (see warnings)" if orphaned else "")
    )
    return 0
