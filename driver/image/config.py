"""The admin's ``[image]`` section: where jobs run and what they may use.

Kept apart from driver.settings (which imports it) so image mode's settings
live beside its code. Shell mode stays the default: an existing config file
keeps running every job in the VM's shell until the admin sets
``mode = "container"``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PullPolicy = Literal["always", "if-not-present", "never"]
PULL_POLICIES: tuple[PullPolicy, ...] = ("always", "if-not-present", "never")
# docker's own volume syntax: "/ctr" (a volume) or "host:ctr[:ro|rw]" (a bind mount).
VOLUME = re.compile(r"^(/[^:]*)(?::(/[^:]*))?(?::(ro|rw))?$")


class _Section(BaseModel):
    # As driver.settings.Section: a typo is an error, not an ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceSettings(_Section):
    """One of [[image.services]]: started for every job, like [[runners.docker.services]]."""

    name: str
    alias: str = ""  # several separated by commas or spaces
    command: list[str] = []
    entrypoint: list[str] = []
    environment: list[str] = []  # "KEY=VALUE", as [[runners.docker.services]] writes them

    @field_validator("environment")
    @classmethod
    def _key_value(cls, environment: list[str]) -> list[str]:
        for entry in environment:
            if "=" not in entry or entry.startswith("="):
                raise ValueError(f"{entry!r} must be KEY=VALUE")
        return environment


class ImageSettings(_Section):
    # "shell": every job in the VM's shell (the original mode, the default).
    # "container": as docker+machine: the job's image:, else `default`; with `default`
    # empty, jobs that name no image keep running in the VM's shell.
    mode: Literal["shell", "container"] = "shell"
    default: str = ""  # [runners.docker] image
    # [runners.docker] helper_image; "" = GitLab's helper for the runner's version and
    # the engine's architecture. ${CI_RUNNER_VERSION} and ${CI_RUNNER_REVISION} are expanded.
    helper_image: str = ""
    pull_policy: list[PullPolicy] = ["always"]
    allowed_pull_policies: list[PullPolicy] = []  # empty: those in pull_policy
    allowed_images: list[str] = []  # doublestar globs; empty: any
    allowed_services: list[str] = []
    allowed_users: list[str] = []  # for the job's docker:user; empty: any
    user: str = ""  # wins over the job's docker:user
    privileged: bool = False
    cap_add: list[str] = []
    cap_drop: list[str] = []
    docker_socket: bool = True  # the VM's /var/run/docker.sock in the build container
    volumes: list[str] = []  # binds/volumes for the build, helper and service containers
    services: list[ServiceSettings] = []
    services_limit: Annotated[int, Field(ge=-1)] = -1  # -1: no limit
    wait_for_services_timeout: Annotated[float, Field(ge=-1)] = 30.0  # -1: do not wait
    disable_entrypoint_overwrite: bool = False
    # A docker config.json ({"auths": {...}}) on the runner host: the admin's registry
    # credentials, as the runner user's ~/.docker/config.json is for the docker executor.
    auth_config_file: Path | None = None
    pull_timeout: Annotated[float, Field(gt=0)] = 600.0
    # The warm pool also pulls this many of the images recent jobs ran most (within
    # pool_recent_window seconds) into each new machine; 0: only [pool] images and these.
    pool_recent_images: Annotated[int, Field(ge=0)] = 3
    pool_recent_window: Annotated[float, Field(gt=0)] = 86400.0

    @field_validator("volumes")
    @classmethod
    def _volume_syntax(cls, volumes: list[str]) -> list[str]:
        for volume in volumes:
            if not VOLUME.match(volume):
                raise ValueError(
                    f"volume {volume!r} must be '/path/in/container' or "
                    "'/host/path:/path/in/container[:ro|rw]'"
                )
        return volumes

    @property
    def container_mode(self) -> bool:
        return self.mode == "container"

    @property
    def effective_allowed_pull_policies(self) -> list[PullPolicy]:
        return list(self.allowed_pull_policies or self.pull_policy)


def parse_volume(volume: str) -> tuple[str | None, str, str]:
    """(host path or None for an anonymous volume, container path, mode)."""
    match = VOLUME.match(volume)
    if match is None:  # validated at load
        raise ValueError(volume)
    first, second, mode = match.groups()
    if second is None:
        return None, first, mode or "rw"
    return first, second, mode or "rw"


def pool_images(settings: ImageSettings) -> list[str]:
    """What the warm pool pulls into each machine for image mode: the default image and an
    explicit helper image (the default helper's tag depends on the runner's version, which
    only a job tells)."""
    if not settings.container_mode:
        return []
    images = [settings.default] if settings.default else []
    if settings.helper_image and "$" not in settings.helper_image:
        images.append(settings.helper_image)
    return images
