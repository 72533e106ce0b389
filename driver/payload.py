"""The shape of the job payload gitlab-runner writes to JOB_RESPONSE_FILE (pydantic).

Only the fields the driver reads; everything else is ignored. Imported lazily
(by ``contract.read_job``): pydantic is too heavy for the per-stage ``run``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from driver.image.payload import Credential, ImageSpec


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore")


class JobInfo(Payload):
    project_id: int = Field(ge=0)
    name: str = ""
    stage: str = ""  # gitlab-runner's common.JobInfo: the pool learns pipeline shapes from it


class Variable(Payload):
    key: str
    value: str = ""
    public: bool = False  # predefined and .gitlab-ci.yml variables; not project settings
    masked: bool = False
    file: bool = False


class JobResponse(Payload):
    id: int = Field(gt=0)
    job_info: JobInfo
    variables: list[Variable] = []
    # Image mode (driver/image): what the job runs in, beside what, pulled with what.
    image: ImageSpec | None = None
    services: list[ImageSpec] | None = None
    credentials: list[Credential] | None = None
    # `secrets:` (Vault and friends), by variable name; the values reach only the
    # environment, resolved by the runner.
    secrets: dict[str, object] | None = None


@dataclass(frozen=True)
class Job:
    """Who the job is: only from the response file, never from CUSTOM_ENV_* variables."""

    id: int
    project_id: int
    pipeline_id: int | None
    name: str
    stage: str = ""
    # The GitLab instance (CI_SERVER_URL as GitLab sent it): job ids are only unique in one.
    server_url: str = ""
