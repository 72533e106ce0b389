"""The job's images on the VM's engine: each pulled at most once, under its pull policies.

The docker executor's order: each policy in turn (``always``, ``if-not-present``,
``never``) until one gives the image; the job's registry credentials go to the
engine only, never into a container.

A pull that fails is the job's failure, as on the docker executor (the runner does
not retry prepare on a new VM, which would pull again and meet the same rate limit):
transient errors (rate limit, 5xx, network) are retried here with back-off, and the
whole pull is bounded by ``pull_timeout``. Only losing the VM's engine itself is a
system failure.
"""

from __future__ import annotations

import queue
import random
import re
import threading
import time
from collections.abc import Callable, Sequence

from driver.engine import ImageAPI, first_line
from driver.errors import DriverError
from driver.image.auth import Credentials
from driver.image.config import PullPolicy
from driver.image.policy import ImageRefused
from driver.image.progress import PullProgress
from driver.image.reference import pull_target, with_tag

Say = Callable[[str], None]

_JOB_FAULT = re.compile(
    r"not found|manifest unknown|pull access denied|unauthorized|authentication required|"
    r"no basic auth credentials|denied|invalid reference format|repository name must|"
    r"no matching manifest",
    re.IGNORECASE,
)
# What may pass if tried again a little later: a rate limit, a registry's 5xx, the
# network between the VM and the registry.
_TRANSIENT = re.compile(
    r"toomanyrequests|too many requests|rate limit|\b429\b|\b5\d\d\b|internal server error|"
    r"bad gateway|service unavailable|gateway time-?out|connection refused|connection reset|"
    r"i/o timeout|timed? ?out|TLS handshake|no such host|temporary failure|"
    r"network is unreachable|unexpected EOF|\bEOF\b",
    re.IGNORECASE,
)
ATTEMPTS = 3
BACKOFF = 2.0  # seconds before the second attempt; doubled for each next, with jitter
BACKOFF_MAX = 30.0


class ImageUnavailable(ImageRefused):
    """The image cannot be had (missing, refused or not served by the registry): a job
    failure, as on the docker executor; the runner does not retry prepare on a new VM."""


class PullTimedOut(Exception):
    """The pull did not end by its deadline (``pull_timeout``)."""


class Puller:
    """Pulls into one engine (``api``, an API client) for one job.

    ``timeout``: ``pull_timeout``, the bound on each image's pull, retries included.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        machine: str,
        say: Say,
        warn: Say,
        timeout: float = 600.0,
    ) -> None:
        self.credentials = credentials
        self.machine = machine
        self.say = say
        self.warn = warn
        self.timeout = timeout
        self.pulled: set[str] = set()

    def ensure(
        self, api: ImageAPI, image: str, policies: Sequence[PullPolicy], platform: str
    ) -> None:
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

    def _pull(self, api: ImageAPI, ref: str, platform: str) -> None:
        """Pull with retries of transient errors, all within ``timeout``."""
        login = self.credentials.for_image(ref)
        if login is not None:
            self.say(f"Authenticating with credentials from {login.source}")
        self.say(f"Pulling docker image {ref} ...")
        deadline = time.monotonic() + self.timeout
        for attempt in range(1, ATTEMPTS + 1):
            try:
                error = stream_pull(
                    api,
                    ref,
                    login.auth_config() if login else None,
                    platform,
                    deadline,
                    self.say,
                )
            except PullTimedOut:
                raise ImageUnavailable(
                    f"pulling image {ref} did not finish within pull_timeout ({self.timeout:g}s)",
                    hint="the registry may be slow or the image large: ask the runner's "
                    "admin to raise [image] pull_timeout or to pre-pull it ([pool] images)",
                ) from None
            if not error:
                image = api.inspect_image(ref)
                self.say(f"Using docker image {image.get('Id', '?')} for {ref} ...")
                return
            delay = backoff(attempt)
            retry = (
                attempt < ATTEMPTS
                and not _JOB_FAULT.search(error)
                and _TRANSIENT.search(error) is not None
                and time.monotonic() + delay < deadline
            )
            if not retry:
                raise _failure(ref, error)
            self.say(
                f"Retrying pull of {ref} in {delay:.0f}s (attempt {attempt + 1}/{ATTEMPTS}): "
                f"{error}"
            )
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt raises or returns")


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, jittered
    (+-25 %) so that the VMs a rate limit hit together do not all come back together."""
    jitter = random.uniform(0.75, 1.25)  # noqa: S311 - not for secrets
    return float(min(BACKOFF * 2.0 ** (attempt - 1), BACKOFF_MAX) * jitter)


def stream_pull(
    api: ImageAPI,
    ref: str,
    auth_config: dict[str, str] | None,
    platform: str,
    deadline: float,
    say: Say,
) -> str:
    """One pull: the engine's error ("" if none), progress said every few seconds.

    docker-py's stream has no overall timeout (its socket timeout bounds only each
    read): the stream is read in a thread, abandoned at ``deadline`` (PullTimedOut).
    An error of the connection to the engine itself is the VM's: DriverError.
    """
    from docker.errors import APIError
    from requests.exceptions import ConnectionError as EngineUnreachable
    from requests.exceptions import ReadTimeout

    events: queue.Queue[tuple[str, object]] = queue.Queue()
    repository, tag = pull_target(ref)

    def read() -> None:
        try:
            for event in api.pull(
                repository,
                tag=tag,
                stream=True,
                decode=True,
                auth_config=auth_config,
                platform=platform or None,
            ):
                events.put(("event", event))
            events.put(("end", None))
        except BaseException as e:  # handed to the reader below
            events.put(("raised", e))

    threading.Thread(target=read, name=f"pull {ref}", daemon=True).start()
    progress = PullProgress(ref, time.monotonic())
    error = ""
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise PullTimedOut(ref)
        try:
            kind, value = events.get(timeout=max(0.0, min(deadline, progress.next_report) - now))
        except queue.Empty:
            line = progress.report(time.monotonic())
            if line:
                say(line)
            continue
        if kind == "end":
            return error
        if kind == "raised":
            if isinstance(value, ReadTimeout):
                raise PullTimedOut(ref)
            if isinstance(value, APIError):
                return str(value.explanation or value)
            if isinstance(value, EngineUnreachable):
                raise DriverError(
                    f"the VM's Docker engine stopped answering while pulling {ref}: "
                    f"{first_line(value)}",
                    hint="the VM may have failed; the runner retries the job on a new one",
                )
            assert isinstance(value, BaseException)
            raise value
        if isinstance(value, dict):
            if value.get("error"):
                error = str(value["error"])
            progress.feed(value)
        line = progress.report(time.monotonic())
        if line:
            say(line)


def _failure(ref: str, error: str) -> ImageUnavailable:
    if _JOB_FAULT.search(error):
        hint = (
            "check the image's name, tag and platform, and the registry credentials "
            "(DOCKER_AUTH_CONFIG, or the job token for GitLab's registry)"
        )
    elif re.search(r"toomanyrequests|too many requests|rate limit|\b429\b", error, re.I):
        hint = (
            "the registry's pull rate limit: authenticate the pulls (DOCKER_AUTH_CONFIG), "
            "use a registry mirror, or have the runner's admin pre-pull the image ([pool] images)"
        )
    else:
        hint = "the registry may be unreachable from the VM, or failing; retry the job later"
    return ImageUnavailable(f"pulling image {ref} failed: {error}", hint=hint)
