"""Pulls: failures are the job's, transient ones retried with back-off, all within
pull_timeout; the engine refusing to start a container is the job's too."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from docker.errors import APIError

from driver.errors import DriverError
from driver.image import pull
from driver.image.auth import Credentials
from driver.image.containers import starting
from driver.image.pull import ImageUnavailable, Puller

REF = "registry.example.com/ci/app:1"
RATE_LIMIT = "toomanyrequests: You have reached your pull rate limit."


class FakeApi:
    """Each pull gives the next of ``outcomes``: an error text, "" for success, or a
    number of seconds to hang for."""

    def __init__(self, outcomes: list[str | float]) -> None:
        self.outcomes = outcomes
        self.pulls = 0

    def pull(self, repository: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        outcome = self.outcomes[self.pulls]
        self.pulls += 1
        yield {"status": "Pulling from ci/app", "id": "1"}
        if isinstance(outcome, float):
            time.sleep(outcome)
        elif outcome:
            yield {"error": outcome, "errorDetail": {"message": outcome}}

    def inspect_image(self, ref: str) -> dict[str, str]:
        return {"Id": "sha256:feed"}


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pull, "BACKOFF", 0.01)


def puller(said: list[str], timeout: float = 60) -> Puller:
    return Puller(
        Credentials([]), machine="gmd-1", say=said.append, warn=said.append, timeout=timeout
    )


def test_a_rate_limit_is_retried_with_back_off_then_pulls() -> None:
    said: list[str] = []
    api = FakeApi([RATE_LIMIT, "received unexpected HTTP status: 503 Service Unavailable", ""])
    puller(said).ensure(api, REF, ["always"], "")
    assert api.pulls == 3
    retries = [line for line in said if line.startswith("Retrying pull of")]
    assert retries[0].startswith(f"Retrying pull of {REF} in 0s (attempt 2/3): toomanyrequests")
    assert "(attempt 3/3): received unexpected HTTP status: 503" in retries[1]


def test_a_rate_limit_that_stays_is_a_job_failure_after_three_attempts() -> None:
    api = FakeApi([RATE_LIMIT] * 3)
    with pytest.raises(ImageUnavailable) as failure:
        puller([]).ensure(api, REF, ["always"], "")
    assert api.pulls == 3
    assert f"pulling image {REF} failed: toomanyrequests" in failure.value.message
    assert "rate limit" in failure.value.hint


@pytest.mark.parametrize(
    "error",
    [
        "manifest for registry.example.com/ci/app:1 not found: manifest unknown",
        "no matching manifest for linux/arm64/v8 in the manifest list entries",
        "unauthorized: authentication required",
    ],
)
def test_what_a_retry_cannot_mend_fails_the_job_at_once(error: str) -> None:
    api = FakeApi([error, ""])
    with pytest.raises(ImageUnavailable):
        puller([]).ensure(api, REF, ["always"], "")
    assert api.pulls == 1


def test_a_network_error_is_retried_and_then_the_jobs_failure() -> None:
    error = "Get http://registry.example.com/v2/: dial tcp 10.0.0.9:80: connect: connection refused"
    api = FakeApi([error] * 3)
    with pytest.raises(ImageUnavailable):
        puller([]).ensure(api, REF, ["always"], "")
    assert api.pulls == 3


def test_pull_timeout_bounds_a_pull_that_hangs() -> None:
    started = time.monotonic()
    with pytest.raises(ImageUnavailable) as failure:
        puller([], timeout=0.5).ensure(FakeApi([30.0]), REF, ["always"], "")
    assert time.monotonic() - started < 5
    assert "pull_timeout" in failure.value.message


def test_losing_the_engine_is_a_system_failure() -> None:
    from requests.exceptions import ConnectionError as Unreachable

    class Gone(FakeApi):
        def pull(self, repository: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
            raise Unreachable("Connection aborted")

    with pytest.raises(DriverError):
        puller([]).ensure(Gone([]), REF, ["always"], "")


def test_a_shell_less_image_gives_the_daemons_message_as_a_job_failure() -> None:
    message = (
        "failed to create task for container: failed to create shim task: OCI runtime create "
        'failed: unable to start container process: exec: "sh": executable file not found in '
        "$PATH: unknown"
    )

    def start() -> None:
        raise APIError("500 Server Error", explanation=message)

    with pytest.raises(ImageUnavailable) as failure:
        starting(start)
    assert 'exec: "sh": executable file not found in $PATH' in failure.value.message


def test_other_engine_errors_on_start_are_the_vms() -> None:
    def start() -> None:
        raise APIError("500 Server Error", explanation="devmapper: thin pool is full")

    with pytest.raises(DriverError):
        starting(start)
