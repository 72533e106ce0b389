"""The shape of the job payload gitlab-runner writes to JOB_RESPONSE_FILE (pydantic).

Only the fields the driver reads; everything else is ignored. Imported lazily
(by ``contract.read_job``): pydantic is too heavy for the per-stage ``run``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore")


class JobInfo(Payload):
    project_id: int = Field(ge=0)
    name: str = ""


class Variable(Payload):
    key: str
    value: str = ""


class JobResponse(Payload):
    id: int = Field(gt=0)
    job_info: JobInfo
    variables: list[Variable] = []
