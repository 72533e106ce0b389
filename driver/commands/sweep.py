"""sweep: remove the machines of jobs that are over (run from a timer, or by hand)."""

from __future__ import annotations

import argparse

from driver import log, sweeper
from driver import settings as settings_file
from driver.log import say
from driver.machine import DockerMachine


def main(args: argparse.Namespace) -> int:
    settings = settings_file.load(args.config_path)
    log.setup(settings.log_path, stage="sweep")
    job_status = sweeper.gitlab_job_status(settings) if settings.gitlab.configured else None
    sweeper.sweep(DockerMachine(settings), settings, job_status, args.dry_run, say)
    return 0
