"""ssh JOB_ID|MACHINE [COMMAND...]: a shell in a job's VM, over its pinned host key."""

from __future__ import annotations

import argparse
import os

from driver import ssh
from driver.errors import DriverError
from driver.settings import Settings, load_settings
from driver.state import JobDir


def job_dir_for(settings: Settings, target: str) -> JobDir:
    """A job id, or a machine name whose job this host prepared."""
    if target.isdigit():
        job_dir = JobDir(settings.state_dir, int(target))
    else:
        prefix = f"{settings.machine.name_prefix}-"
        suffix = target.removeprefix(prefix)
        if not target.startswith(prefix) or not suffix.isdigit():
            raise DriverError(
                f"{target!r} is neither a job id nor a machine named {prefix}<job id>",
                hint="`gitlab-machine-driver ls` lists the machines and their jobs",
            )
        job_dir = JobDir(settings.state_dir, int(suffix))
    if not job_dir.ssh_config.exists():
        raise DriverError(
            f"no SSH access is set up for {target} on this host ({job_dir.ssh_config} is missing)",
            hint="the job's prepare has not reached SSH yet, or cleanup already ran",
        )
    return job_dir


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config_path)
    job_dir = job_dir_for(settings, args.target)
    argv = ssh.argv(job_dir, "-T" if args.remote_command else "-t")
    argv += args.remote_command
    # Replaces this process: the terminal is the operator's. No shell on this side.
    os.execvp(argv[0], argv)  # noqa: S606
    return 0  # pragma: no cover - execvp does not return
