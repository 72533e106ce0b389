"""The parts of GitLab Runner's custom executor contract every stage needs.

Kept free of heavy imports: ``run`` starts once per stage and imports this.
"""

from __future__ import annotations

import os

# The runner's own defaults; used only when a stage is run by hand without them.
DEFAULT_BUILD_FAILURE = 1
DEFAULT_SYSTEM_FAILURE = 2

# Set by our config stage in ``job_env``; the runner passes it to later stages.
JOB_DIR_ENV = "GITLAB_MACHINE_DRIVER_JOB_DIR"


# The job's variables (secrets included) never reach the programs we run.
_JOB_ENV_PREFIX = "CUSTOM_ENV_"


def clean_env() -> dict[str, str]:
    """Our environment without the job's variables, for every program we start."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_JOB_ENV_PREFIX)}


def _exit_code(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip().isdigit() else default


def build_failure_code() -> int:
    return _exit_code("BUILD_FAILURE_EXIT_CODE", DEFAULT_BUILD_FAILURE)


def system_failure_code() -> int:
    return _exit_code("SYSTEM_FAILURE_EXIT_CODE", DEFAULT_SYSTEM_FAILURE)


def write_build_exit_code(code: int) -> None:
    """Tell the runner the script's own exit code (makes ``allow_failure: exit_codes`` work)."""
    path = os.environ.get("BUILD_EXIT_CODE_FILE")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{code}\n")
