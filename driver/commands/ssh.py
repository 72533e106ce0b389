"""ssh JOB_ID|MACHINE [COMMAND...]: a shell in a job's VM, over its pinned host key."""

from __future__ import annotations

import argparse
import getpass
import os
import shlex

from driver import log, ssh
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
    _record_session(settings, job_dir, args.remote_command)
    # Replaces this process: the terminal is the operator's. No shell on this side.
    os.execvp(argv[0], argv)  # noqa: S606
    return 0  # pragma: no cover - execvp does not return


def _record_session(settings: Settings, job_dir: JobDir, command: list[str]) -> None:
    """Into the admin's log: who entered which job's VM, and to do what."""
    try:
        record = job_dir.load()
        job_id, machine = record.job_id, record.machine
    except DriverError:
        job_id, machine = int(job_dir.path.name), ""
    log.setup(settings.log_path, job_id=job_id, machine=machine, stage="ssh")
    log.get().info(
        "operator_ssh",
        user=os.environ.get("SUDO_USER") or getpass.getuser(),
        uid=os.getuid(),
        command=shlex.join(command) if command else None,  # None: an interactive shell
        tty=os.isatty(0),
    )
