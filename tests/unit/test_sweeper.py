import os
from pathlib import Path

import pytest

from driver import settings, sweeper
from driver.state import MachineState, process_start_time

NOW = 1_000_000.0


def config(tmp_path: Path) -> settings.Settings:
    return settings.parse_settings(
        {"state_dir": str(tmp_path), "sweeper": {"max_age": 3600, "grace": 600}}
    )


def local(
    phase: str = "ready", *, prepare_alive: bool = False, runner_alive: bool = True
) -> MachineState:
    me = os.getpid()
    return MachineState(
        job_id=7,
        project_id=3,
        pipeline_id=None,
        machine="gmd-7",
        phase=phase,
        pid=me if prepare_alive else 0,
        runner_pid=me if runner_alive else 2**22 + 17,
        runner_started=process_start_time(me) if runner_alive else 1,
    )


def owned(
    age: float | None = 60, state: str = "Running", loc: MachineState | None = None
) -> sweeper.Owned:
    return sweeper.Owned(
        name="gmd-7",
        state=state,
        job_id=7,
        project_id=3,
        created=None if age is None else NOW - age,
        local=loc,
    )


def status_of(value: str) -> sweeper.JobStatus:
    return lambda project, job: value


@pytest.mark.parametrize(
    ("machine", "status", "remove", "reason"),
    [
        (
            owned(loc=local("creating", prepare_alive=True), age=99999),
            None,
            False,
            "being prepared",
        ),
        (owned(age=4000, loc=local()), status_of("running"), True, "older than max_age"),
        (owned(loc=local("creating")), None, True, "left half-created"),
        (owned(state="Error", loc=local()), None, True, "in Error state"),
        (owned(loc=local(runner_alive=False)), None, True, "runner process that owned"),
        (owned(loc=local()), status_of("canceled"), True, "its job is canceled"),
        (owned(loc=local()), status_of("success"), True, "its job is success"),
        (owned(loc=local()), status_of("missing"), True, "unknown to GitLab"),
        (owned(loc=local()), status_of("running"), False, "its job is running"),
        (owned(loc=local()), None, False, "may still be running"),
        (owned(age=60, loc=None), None, False, "may still be running"),
        (owned(age=700, loc=None), None, True, "no job on this host owns it"),
    ],
)
def test_verdicts(
    tmp_path: Path,
    machine: sweeper.Owned,
    status: sweeper.JobStatus | None,
    remove: bool,
    reason: str,
) -> None:
    verdict = sweeper.decide(machine, NOW, config(tmp_path), status)
    assert (verdict.remove, reason in verdict.reason) == (remove, True), verdict.reason


def test_runner_alive_tells_a_reused_pid_apart() -> None:
    state = local()
    assert sweeper.runner_alive(state)
    state.runner_started += 1
    assert not sweeper.runner_alive(state)
