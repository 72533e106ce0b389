"""What the runner's scripts need in the VM, checked over SSH; gitlab-runner uploaded."""

from __future__ import annotations

import shlex
from pathlib import Path

from driver import log, ssh
from driver.errors import DriverError
from driver.log import say
from driver.settings import Settings
from driver.state import MachineDir

# What the runner's scripts and our stage wrapper need in the VM.
REQUIRED_TOOLS = ("bash", "head", "git")
RUNNER_IN_VM = "gitlab-runner"


def required_tools(settings: Settings) -> tuple[str, ...]:
    """Image mode needs the docker CLI (each stage is a `docker exec`); git only for jobs
    that may still run in the VM's shell (no [image] default)."""
    if not settings.image.container_mode:
        return REQUIRED_TOOLS
    if settings.image.default:
        return ("bash", "head", "docker")
    return (*REQUIRED_TOOLS, "docker")


def check(settings: Settings, job_dir: MachineDir, *, runner_needed: bool = True) -> None:
    """``runner_needed``: False for a job that runs in its image, whose helper image does
    the cache and artifact work (nothing to upload, nothing to warn about)."""
    tools = " ".join((*required_tools(settings), RUNNER_IN_VM))
    result = ssh.run(
        job_dir,
        f'for t in {tools}; do command -v "$t" >/dev/null 2>&1 || echo "$t"; done',
        timeout=30,
        what="checking the VM's tools",
    )
    missing = result.stdout.split()
    lacking = [tool for tool in missing if tool != RUNNER_IN_VM]
    if lacking:
        raise DriverError(
            f"the VM lacks {', '.join(lacking)}, which the job's scripts need",
            hint="use a machine image that has them (bash, coreutils, git; the docker CLI "
            "in image mode)",
        )
    every_job_in_an_image = settings.image.container_mode and settings.image.default
    if RUNNER_IN_VM not in missing or every_job_in_an_image or not runner_needed:
        return  # there, or not needed: every job's plumbing runs in the helper image
    binary = settings.gitlab_runner_binary
    if binary is None:
        log.warn(
            "the VM has no gitlab-runner binary: cache and artifact stages will be skipped; "
            "set gitlab_runner_binary in the config file to upload one"
        )
        return
    _upload_runner(job_dir, binary)


def _upload_runner(job_dir: MachineDir, binary: Path) -> None:
    if not binary.is_file():
        raise DriverError(
            f"gitlab_runner_binary {binary} does not exist on the runner host",
            hint="point it at the gitlab-runner binary (e.g. /usr/bin/gitlab-runner)",
        )
    step = log.Timer()
    target = shlex.quote("/usr/local/bin/gitlab-runner")
    # Written to a temp name and renamed, so a broken upload never looks installed.
    script = (
        "set -e; umask 022; "
        'if [ "$(id -u)" = 0 ]; then s=""; else s="sudo -n"; fi; '
        f't=$($s mktemp {target}.XXXXXX); $s tee "$t" >/dev/null; '
        f'$s chmod 755 "$t"; $s mv "$t" {target}'
    )
    ssh.run(
        job_dir,
        script,
        timeout=300,
        stdin_file=binary,
        what="uploading gitlab-runner into the VM",
        hint="the SSH user needs root or passwordless sudo to install into /usr/local/bin",
    )
    say(f"Uploaded gitlab-runner into the VM ({step.seconds:g}s)")
