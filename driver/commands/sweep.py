"""sweep: remove the machines of jobs that are over (run from a timer, or by hand)."""

from __future__ import annotations

import argparse

from driver import log, sweeper
from driver.docker_machine import DockerMachine
from driver.log import say
from driver.settings import load_settings


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config_path)
    log.setup(settings.log_path, stage="sweep")
    job_status = sweeper.gitlab_job_status(settings) if settings.gitlab.configured else None
    sweeper.sweep(DockerMachine(settings), settings, job_status, args.dry_run, say)
    return 0
