"""GitLab Runner's custom executor contract, as the driver speaks it.

The environment the runner gives every stage, the exit codes, the config
stage's JSON and the job's identity from ``JOB_RESPONSE_FILE`` (see
shared/custom-executor.md). Kept free of heavy imports: ``run`` starts once
per stage and imports this; pydantic is imported only to read the job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from driver.errors import JobError

if TYPE_CHECKING:
    from driver.payload import Job

# What the runner sets for every executable it starts.
TMPDIR_ENV = "TMPDIR"  # the job's private temp dir on the runner host
RESPONSE_FILE_ENV = "JOB_RESPONSE_FILE"  # the whole job payload (0600)
BUILD_FAILURE_ENV = "BUILD_FAILURE_EXIT_CODE"
SYSTEM_FAILURE_ENV = "SYSTEM_FAILURE_EXIT_CODE"
BUILD_EXIT_CODE_FILE_ENV = "BUILD_EXIT_CODE_FILE"  # the script's own exit code goes here

# The runner's own defaults; used only when a stage is run by hand without them.
DEFAULT_BUILD_FAILURE = 1
DEFAULT_SYSTEM_FAILURE = 2

# Set by our config stage in ``job_env``; the runner passes it to later stages.
JOB_DIR_ENV = "GITLAB_MACHINE_DRIVER_JOB_DIR"

# The job's variables (secrets included) never reach the programs we run.
JOB_VARIABLE_PREFIX = "CUSTOM_ENV_"


def clean_env() -> dict[str, str]:
    """Our environment without the job's variables, for every program we start."""
    return {k: v for k, v in os.environ.items() if not k.startswith(JOB_VARIABLE_PREFIX)}


def runner_env(work: Path, response: Path) -> dict[str, str]:
    """The variables the runner sets for a job whose temp dir is ``work`` (for `job init`)."""
    return {
        TMPDIR_ENV: str(work),
        RESPONSE_FILE_ENV: str(response),
        BUILD_FAILURE_ENV: str(build_failure_code()),
        SYSTEM_FAILURE_ENV: str(system_failure_code()),
        BUILD_EXIT_CODE_FILE_ENV: str(work / "build_exit_code"),
    }


def _exit_code(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip().isdigit() else default


def build_failure_code() -> int:
    return _exit_code(BUILD_FAILURE_ENV, DEFAULT_BUILD_FAILURE)


def system_failure_code() -> int:
    return _exit_code(SYSTEM_FAILURE_ENV, DEFAULT_SYSTEM_FAILURE)


def write_build_exit_code(code: int) -> None:
    """Tell the runner the script's own exit code (makes ``allow_failure: exit_codes`` work)."""
    path = os.environ.get(BUILD_EXIT_CODE_FILE_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{code}\n")


def config_output(
    *,
    builds_dir: str,
    cache_dir: str,
    hostname: str,
    driver_name: str,
    driver_version: str,
    job_env: Mapping[str, str],
) -> dict[str, object]:
    """The config stage's JSON (config_exec's stdout)."""
    return {
        "builds_dir": builds_dir,
        "cache_dir": cache_dir,
        "builds_dir_is_shared": False,  # one VM per job: nothing else writes there
        "hostname": hostname,
        "driver": {"name": driver_name, "version": driver_version},
        "job_env": dict(job_env),
    }


# --- the job's identity ---------------------------------------------------------------------
#
# ``CUSTOM_ENV_*`` variables belong to the job's author and can say anything
# (``CUSTOM_ENV_CI_JOB_ID`` included); the response file is written by the
# runner from what GitLab sent, so it is the only source of who the job is.


def synthetic_response(job_id: int, project_id: int) -> dict[str, object]:
    """A minimal job payload, for stages run by hand and for `doctor --create`."""
    return {
        "id": job_id,
        "token": "synthetic-job-token",
        "job_info": {"name": "debug", "stage": "test", "project_id": project_id},
        "variables": [
            {"key": "CI_JOB_ID", "value": str(job_id), "public": True},
            {"key": "CI_PROJECT_ID", "value": str(project_id), "public": True},
        ],
    }


def read_job(path: str | None = None) -> Job:
    """The job this stage serves, from the runner's response file."""
    from pydantic import ValidationError

    from driver.payload import Job, JobResponse

    path = path or os.environ.get(RESPONSE_FILE_ENV)
    if not path:
        raise JobError(
            f"{RESPONSE_FILE_ENV} is not set: the job's identity is unknown",
            hint="gitlab-runner sets it; to run a stage by hand, "
            'eval "$(gitlab-machine-driver job init)" first',
        )
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise JobError(f"cannot read the job response file {path}: {e.strerror}") from None
    try:
        response = JobResponse.model_validate_json(raw)
    except ValidationError as e:
        fields = ", ".join(".".join(map(str, err["loc"])) or "(whole file)" for err in e.errors())
        raise JobError(
            f"the job response file {path} is not a job payload (bad or missing: {fields})",
            hint="it must be the response.json gitlab-runner writes for the job",
        ) from None
    pipeline = next((v.value for v in response.variables if v.key == "CI_PIPELINE_ID"), "")
    # The first: GitLab's own predefined value; a job's variables of that name come after.
    server = next((v.value for v in response.variables if v.key == "CI_SERVER_URL"), "")
    return Job(
        id=response.id,
        project_id=response.job_info.project_id,
        pipeline_id=int(pipeline) if pipeline.isdigit() else None,
        name=response.job_info.name,
        stage=response.job_info.stage,
        server_url=server,
    )
