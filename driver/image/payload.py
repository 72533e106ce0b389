"""What a job asks for, as gitlab-runner writes it to JOB_RESPONSE_FILE.

``image`` and every ``services[]`` entry share one shape (gitlab-runner's
``spec.Image``); ``credentials`` are the registry logins GitLab sends (its own
registry and the dependency proxy, with the job token). Fields may be null.
Used by driver.payload's JobResponse.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageVariable(_Payload):
    key: str
    value: str = ""


class ImageSpec(_Payload):
    name: str = ""
    alias: str = ""
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    variables: list[ImageVariable] | None = None
    pull_policy: list[str] | None = None
    # {"docker": {"platform": ..., "user": ...}}; unknown keys are refused later, by name.
    executor_opts: dict[str, object] | None = None

    @field_validator("alias", "name", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return "" if value is None else value

    @property
    def docker_options(self) -> dict[str, object]:
        options = (self.executor_opts or {}).get("docker") or {}
        return options if isinstance(options, dict) else {}

    def aliases(self) -> list[str]:
        """`alias` may hold several, separated by commas and/or spaces."""
        return [a for a in self.alias.replace(",", " ").split() if a]


class Credential(_Payload):
    type: str = ""
    url: str = ""
    username: str = ""
    password: str = ""
