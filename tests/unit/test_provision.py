"""provision.create and provision.destroy against a fake docker-machine: retries, back-off,
what is left behind, and what the job log says."""

import random
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from driver import metrics, process, provision
from driver.docker_machine import PRE_CREATE_CHECK_FAILED, DockerMachine
from driver.errors import CommandError, CommandTimedOut, DriverError
from driver.settings import Settings, parse_settings

NAME = "gmd-1"
TRANSIENT = "Error creating machine: Error in driver during machine creation: connection reset"
RATE_LIMITED = "Error creating machine: RequestLimitExceeded: Request limit exceeded."
PERMANENT = "Incorrect Usage. flag provided but not defined: -amazonec2-regoin"


class FakeDockerMachine(DockerMachine):
    """docker-machine as create and destroy see it: a set of machines, every call recorded,
    failures on demand. It never runs a program."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.machines: set[str] = set()
        self.calls: list[str] = []
        self.certs = False
        # Outputs of the next creates that fail (each leaves an Error entry, as clouds do),
        # with docker-machine's exit code; then creates succeed.
        self.create_failures: list[tuple[str, int]] = []
        # What the next `rm -y` calls do: "fail" (the machine stays), "timeout", or
        # "fail-but-gone" (an error, yet the machine is gone); then they succeed.
        self.remove_outcomes: list[str] = []

    def _argv(self, *args: str) -> list[str]:
        raise AssertionError(f"the fake docker-machine was asked to run {args}")

    def certs_exist(self) -> bool:
        return self.certs

    def make_certs(self, scratch_name: str) -> None:
        self.calls.append("make certs")
        self.certs = True

    def create(self, name: str, labels: Mapping[str, str], timeout: float) -> None:
        self.calls.append(f"create {name}")
        self.machines.add(name)
        if self.create_failures:
            output, exit_code = self.create_failures.pop(0)
            raise CommandError(["docker-machine", "create", name], exit_code, output)

    def exists(self, name: str) -> bool:
        return name in self.machines

    def remove(self, name: str, *, force: bool, timeout: float) -> process.Result:
        argv = ["docker-machine", "rm", "-f" if force else "-y", name]
        self.calls.append(" ".join(argv[1:]))
        outcome = "" if force or not self.remove_outcomes else self.remove_outcomes.pop(0)
        if outcome == "timeout":
            raise CommandTimedOut(argv, timeout, "", message=f"docker-machine rm {name}")
        if outcome == "fail":
            return process.Result(argv, 1, "", "Error removing host: the cloud said no")
        self.machines.discard(name)
        if outcome == "fail-but-gone":
            return process.Result(argv, 1, "", "Error removing host: already gone")
        return process.Result(argv, 0, f"Successfully removed {name}\n", "")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return parse_settings(
        {
            "state_dir": str(tmp_path / "state"),
            "docker_machine": {"storage_path": str(tmp_path / "machine")},
            "machine": {"driver": "amazonec2"},
            "create": {"attempts": 4, "backoff": 10, "backoff_max": 60},
            "cleanup": {"remove_attempts": 3},
        }
    )


@pytest.fixture
def dm(settings: Settings) -> FakeDockerMachine:
    settings.state_dir.mkdir(mode=0o700)
    return FakeDockerMachine(settings)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The back-off waits, instead of waiting; no jitter, so they can be compared."""
    waited: list[float] = []
    monkeypatch.setattr(time, "sleep", waited.append)
    monkeypatch.setattr(random, "uniform", lambda low, high: 1.0)
    return waited


def counted(settings: Settings, metric: metrics.Counter, **labels: str) -> int:
    value = metrics.load(settings.state_dir)["counters"].get(metric.key(labels), 0)
    assert isinstance(value, int)
    return value


def nowhere(line: str) -> None:
    """Progress nobody reads."""


def create(dm: FakeDockerMachine, settings: Settings, said: list[str]) -> int:
    return provision.create(dm, NAME, {"job": "1"}, settings, said.append)


def test_a_create_that_works_at_once_makes_the_certificates_first(
    dm: FakeDockerMachine, settings: Settings, sleeps: list[float]
) -> None:
    said: list[str] = []
    assert create(dm, settings, said) == 1
    assert dm.calls == ["make certs", f"create {NAME}"]
    assert dm.machines == {NAME}
    assert sleeps == []
    assert said[0] == f"Creating machine {NAME} with driver amazonec2 (attempt 1/4)..."
    assert said[1].startswith("Making docker-machine's certificates in ")


def test_transient_failures_are_retried_with_doubling_back_off(
    dm: FakeDockerMachine, settings: Settings, sleeps: list[float]
) -> None:
    dm.create_failures = [(TRANSIENT, 1)] * 3
    said: list[str] = []
    assert create(dm, settings, said) == 4
    assert sleeps == [10, 20, 40]
    assert "Retrying in 10.0s..." in said
    assert dm.machines == {NAME}
    assert counted(settings, metrics.MACHINE_CREATION_FAILURES, kind="transient") == 3


def test_the_back_off_stops_growing_at_its_maximum(
    dm: FakeDockerMachine, settings: Settings, sleeps: list[float]
) -> None:
    settings = settings.model_copy(
        update={"create": settings.create.model_copy(update={"attempts": 6})}
    )
    dm.create_failures = [(TRANSIENT, 1)] * 5
    assert create(dm, settings, []) == 6
    assert sleeps == [10, 20, 40, 60, 60]


def test_what_a_failed_attempt_left_is_removed_before_the_next(
    dm: FakeDockerMachine, settings: Settings, sleeps: list[float]
) -> None:
    dm.create_failures = [(TRANSIENT, 1)] * 2
    create(dm, settings, [])
    assert dm.calls == [
        "make certs",
        f"create {NAME}",
        f"rm -y {NAME}",
        f"create {NAME}",
        f"rm -y {NAME}",
        f"create {NAME}",
    ]


def test_when_every_attempt_fails_nothing_is_left_and_the_error_says_why(
    dm: FakeDockerMachine, settings: Settings, sleeps: list[float]
) -> None:
    dm.create_failures = [(TRANSIENT, 1)] * 4
    said: list[str] = []
    with pytest.raises(DriverError) as failed:
        create(dm, settings, said)
    assert failed.value.message == (
        f"could not create machine {NAME} in 4 attempt(s); the last error is shown above"
    )
    assert "the runner retries prepare on its own" in failed.value.hint
    assert dm.machines == set()
    assert dm.calls.count(f"create {NAME}") == 4
    assert len(sleeps) == 3  # no wait after the last attempt
    assert any(TRANSIENT in line for line in said)  # docker-machine's own words, in the job log


@pytest.mark.parametrize(
    ("output", "exit_code"),
    [(PERMANENT, 1), ("Error with pre-create check: quota exceeded", PRE_CREATE_CHECK_FAILED)],
)
def test_a_permanent_failure_stops_at_once(
    dm: FakeDockerMachine,
    settings: Settings,
    sleeps: list[float],
    output: str,
    exit_code: int,
) -> None:
    dm.create_failures = [(output, exit_code)]
    with pytest.raises(DriverError, match="retrying cannot help") as failed:
        create(dm, settings, [])
    assert "fix [machine] driver/options or the cloud credentials" in failed.value.hint
    assert dm.calls.count(f"create {NAME}") == 1
    assert sleeps == []
    assert dm.machines == set()
    assert counted(settings, metrics.MACHINE_CREATION_FAILURES, kind="permanent") == 1


def test_a_rate_limit_backs_off_more_than_a_transient_failure(
    dm: FakeDockerMachine, settings: Settings, sleeps: list[float]
) -> None:
    dm.create_failures = [(TRANSIENT, 1)] * 3
    create(dm, settings, [])
    transient = list(sleeps)
    sleeps.clear()
    dm.machines.clear()
    dm.create_failures = [(RATE_LIMITED, 1)] * 3
    create(dm, settings, [])
    assert len(sleeps) == len(transient) == 3
    assert all(r > t for r, t in zip(sleeps, transient, strict=True))
    assert max(sleeps) <= settings.create.backoff_max
    assert counted(settings, metrics.MACHINE_CREATION_FAILURES, kind="rate_limited") == 3


def test_destroying_a_missing_machine_succeeds_and_says_so(
    dm: FakeDockerMachine, settings: Settings
) -> None:
    said: list[str] = []
    assert provision.destroy(dm, NAME, settings, said.append) is True
    assert said == [f"Machine {NAME} does not exist: nothing to remove"]
    assert dm.calls == []
    said.clear()
    assert provision.destroy(dm, NAME, settings, said.append, quiet_if_missing=True) is True
    assert said == []


def test_a_clean_removal(dm: FakeDockerMachine, settings: Settings) -> None:
    dm.machines.add(NAME)
    said: list[str] = []
    assert provision.destroy(dm, NAME, settings, said.append) is True
    assert dm.calls == [f"rm -y {NAME}"]
    assert said[0].startswith(f"Removed machine {NAME} in ")
    assert counted(settings, metrics.MACHINE_REMOVALS, result="clean") == 1


def test_a_failing_rm_is_retried(
    dm: FakeDockerMachine, settings: Settings, sleeps: list[float]
) -> None:
    dm.machines.add(NAME)
    dm.remove_outcomes = ["fail", "timeout"]
    said: list[str] = []
    assert provision.destroy(dm, NAME, settings, said.append) is True
    assert dm.calls == [f"rm -y {NAME}"] * 3
    assert len(sleeps) == 2
    assert said[0].startswith(f"Removing {NAME} failed (attempt 1/3)")
    assert "the cloud said no" in said[0]
    assert dm.machines == set()


def test_an_rm_that_fails_after_removing_the_machine_counts_as_removed(
    dm: FakeDockerMachine, settings: Settings, sleeps: list[float]
) -> None:
    dm.machines.add(NAME)
    dm.remove_outcomes = ["fail-but-gone"]
    assert provision.destroy(dm, NAME, settings, nowhere) is True
    assert dm.calls == [f"rm -y {NAME}"]


def test_when_rm_keeps_failing_the_entry_is_forced_out_with_an_orphan_warning(
    dm: FakeDockerMachine,
    settings: Settings,
    sleeps: list[float],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dm.machines.add(NAME)
    dm.remove_outcomes = ["fail"] * 3
    assert provision.destroy(dm, NAME, settings, nowhere) is False
    assert dm.calls == [f"rm -y {NAME}"] * 3 + [f"rm -f {NAME}"]
    assert dm.machines == set()  # docker-machine no longer counts it
    warning = capsys.readouterr().err
    assert f"machine {NAME} could not be removed cleanly" in warning
    assert "MAY BE ORPHANED" in warning
    assert "the cloud said no" in warning  # the last error, for the admin
    assert counted(settings, metrics.MACHINE_REMOVALS, result="maybe_orphaned") == 1


def test_a_cleanup_out_of_time_forces_the_entry_out_at_once(
    dm: FakeDockerMachine,
    settings: Settings,
    sleeps: list[float],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dm.machines.add(NAME)
    deadline = time.monotonic()  # already reached
    assert provision.destroy(dm, NAME, settings, nowhere, deadline=deadline) is False
    assert dm.calls == [f"rm -f {NAME}"]
    assert "MAY BE ORPHANED" in capsys.readouterr().err
