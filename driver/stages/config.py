"""config: tell the runner where builds go, and give later stages this job's state dir."""

from __future__ import annotations

import argparse
import json

from driver import NAME, __version__
from driver.contract import JOB_DIR_ENV, config_output, read_job
from driver.docker_machine import find_program
from driver.settings import load_settings
from driver.state import JobDir


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config_path)
    find_program(settings.docker_machine.program)  # not found, not executable: say which
    job = read_job()
    output = config_output(
        builds_dir=settings.builds_dir,
        cache_dir=settings.cache_dir,
        hostname=settings.machine_name(job.id),
        driver_name=NAME,
        driver_version=__version__,
        job_env={JOB_DIR_ENV: str(JobDir(settings.state_dir, job.id).path)},
    )
    print(json.dumps(output))
    return 0
