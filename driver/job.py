"""The job's identity, read from the runner's JOB_RESPONSE_FILE.

``CUSTOM_ENV_*`` variables belong to the job's author and can say anything
(``CUSTOM_ENV_CI_JOB_ID`` included); the response file is written by the
runner from what GitLab sent, so it is the only source of who the job is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from driver.errors import JobError

RESPONSE_FILE_ENV = "JOB_RESPONSE_FILE"


class _JobInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")
    project_id: int = Field(ge=0)
    name: str = ""


class _Variable(BaseModel):
    model_config = ConfigDict(extra="ignore")
    key: str
    value: str = ""


class _JobResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int = Field(gt=0)
    job_info: _JobInfo
    variables: list[_Variable] = []


@dataclass(frozen=True)
class Job:
    id: int
    project_id: int
    pipeline_id: int | None
    name: str


def from_response_file(path: str | None = None) -> Job:
    path = path or os.environ.get(RESPONSE_FILE_ENV)
    if not path:
        raise JobError(
            f"{RESPONSE_FILE_ENV} is not set: the job's identity is unknown",
            hint="gitlab-runner sets it; to run a stage by hand, use "
            "`gitlab-machine-driver job env` to get the environment a runner gives",
        )
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise JobError(f"cannot read the job response file {path}: {e.strerror}") from None
    try:
        response = _JobResponse.model_validate_json(raw)
    except ValidationError as e:
        fields = ", ".join(".".join(map(str, err["loc"])) or "(whole file)" for err in e.errors())
        raise JobError(
            f"the job response file {path} is not a job payload (bad or missing: {fields})",
            hint="it must be the response.json gitlab-runner writes for the job",
        ) from None
    pipeline = next((v.value for v in response.variables if v.key == "CI_PIPELINE_ID"), "")
    return Job(
        id=response.id,
        project_id=response.job_info.project_id,
        pipeline_id=int(pipeline) if pipeline.isdigit() else None,
        name=response.job_info.name,
    )
