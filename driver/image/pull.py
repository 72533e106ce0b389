"""The job's images on the VM's engine: each pulled at most once, under its pull policies.

The docker executor's order: each policy in turn (``always``, ``if-not-present``,
``never``) until one gives the image; the job's registry credentials go to the
engine only, never into a container.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from driver.errors import DriverError
from driver.image.auth import Credentials
from driver.image.config import PullPolicy
from driver.image.engine import first_line
from driver.image.plan import with_tag
from driver.image.policy import ImageRefused

Say = Callable[[str], None]

_JOB_FAULT = re.compile(
    r"not found|manifest unknown|pull access denied|unauthorized|authentication required|"
    r"no basic auth credentials|denied|invalid reference format|repository name must",
    re.IGNORECASE,
)


class ImageUnavailable(ImageRefused):
    """The image cannot be had (missing, refused by the registry): the job's to fix."""


class Puller:
    """Pulls into one engine (``api``, an API client) for one job."""

    def __init__(self, credentials: Credentials, *, machine: str, say: Say, warn: Say) -> None:
        self.credentials = credentials
        self.machine = machine
        self.say = say
        self.warn = warn
        self.pulled: set[str] = set()

    def ensure(self, api: Any, image: str, policies: Sequence[PullPolicy], platform: str) -> None:
        from docker.errors import DockerException, ImageNotFound

        ref = with_tag(image)
        if ref in self.pulled:
            return
        self.say(f"Using effective pull policy of [{', '.join(policies)}] for container {ref}")
        failure: Exception | None = None
        for attempt, pull_policy in enumerate(policies, start=1):
            if attempt > 1:
                self.say(f'Attempt #{attempt}: Trying "{pull_policy}" pull policy')
            try:
                if pull_policy != "always":
                    try:
                        api.inspect_image(ref)
                        self.say(f"Using locally found image {ref}")
                        self.pulled.add(ref)
                        return
                    except ImageNotFound:
                        if pull_policy == "never":
                            raise ImageUnavailable(
                                f'image "{ref}" is not on the machine and its pull policy is '
                                '"never"',
                                hint='use pull_policy "if-not-present" or "always", or have '
                                "the runner's admin pre-pull it ([pool] images)",
                            ) from None
                self._pull(api, ref, platform)
                self.pulled.add(ref)
                return
            except (ImageRefused, DriverError, DockerException) as e:
                failure = e
                if len(policies) > attempt:
                    self.warn(f'Failed to pull image with policy "{pull_policy}": {first_line(e)}')
        assert failure is not None
        raise failure

    def _pull(self, api: Any, ref: str, platform: str) -> None:
        from docker.errors import DockerException

        login = self.credentials.for_image(ref)
        if login is not None:
            self.say(f"Authenticating with credentials from {login.source}")
        self.say(f"Pulling docker image {ref} ...")
        repository, tag = _split_reference(ref)
        error = ""
        try:
            for event in api.pull(
                repository,
                tag=tag,
                stream=True,
                decode=True,
                auth_config=login.auth_config() if login else None,
                platform=platform or None,
            ):
                if isinstance(event, dict) and event.get("error"):
                    error = str(event["error"])
        except DockerException as e:
            error = first_line(e)
        if not error:
            image = api.inspect_image(ref)
            self.say(f"Using docker image {image.get('Id', '?')} for {ref} ...")
            return
        if _JOB_FAULT.search(error):
            raise ImageUnavailable(
                f"pulling image {ref} failed: {error}",
                hint="check the image's name and tag, and the registry credentials "
                "(DOCKER_AUTH_CONFIG, or the job token for GitLab's registry)",
            )
        raise DriverError(
            f"pulling image {ref} into {self.machine} failed: {error}",
            hint="the registry may be unreachable from the VM; the runner may retry the job",
        )


def _split_reference(ref: str) -> tuple[str, str | None]:
    if "@" in ref:
        return ref, None
    repository, _, tag = ref.rpartition(":")
    return repository, tag
