"""prepare's start of a stopped pool machine: what it reads again after the start,
what it refuses, and that a failure costs the machine, never the job. docker-machine
is a fake here (each fault as the double's, testing/docker_machine/power.py, words
it); the whole path on the double's VMs is in tests/integration/test_pool_stopped.py."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from driver import engine, metrics, signals, ssh
from driver.docker_machine import MachineInfo
from driver.errors import Cancelled, CommandError, CommandTimedOut, DriverError
from driver.payload import Job
from driver.process import Result
from driver.settings import Settings, parse_settings
from driver.stages import stopped
from driver.stages.common import Stage
from driver.state import Address, JobDir, JobPhase, PoolRecord, StateDir
from tests.unit.test_sweeper import FakeMachines

NAME = "gmd-p0000a001"
CREATED_AT = "10.213.0.6"  # where the create put it
PINNED = "machine ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedAtItsCreation\n"


class StartingMachines(FakeMachines):
    """docker-machine for a stopped machine: `start` (or its fault), then `ip` says where
    it is now while `inspect` (the store) keeps the create's address, as amazonec2 does."""

    def __init__(
        self, storage: Path, now_at: str = CREATED_AT, start_fault: str = "", port_after: int = 22
    ) -> None:
        super().__init__(storage)
        self.now_at = now_at
        self.start_fault = start_fault
        self.port_after = port_after  # virtualbox's start may forward SSH on another port
        self.started = False
        self.calls: list[tuple[str, float]] = []

    def power(self, action: str, name: str, timeout: float) -> None:
        self.calls.append((action, timeout))
        if action == "start" and self.start_fault == "hang":
            raise CommandTimedOut(["docker-machine", "start", name], timeout, "")
        if action == "start" and self.start_fault == "fail":
            raise CommandError(
                ["docker-machine", "start", name],
                1,
                "InsufficientInstanceCapacity: Insufficient capacity to start the instance",
            )
        self.started = self.started or action == "start"

    def inspect(self, name: str) -> MachineInfo:
        return MachineInfo(
            name=name,
            driver="amazonec2",
            host=CREATED_AT,
            ssh_port=self.port_after if self.started else 22,
            ssh_user="ubuntu",
            ssh_key=str(self.storage / "machines" / name / "id_rsa"),
            ca_cert="ca.pem",
            client_cert="cert.pem",
            client_key="key.pem",
            labels={},
            cloud_id="i-0abc",
        )

    def ip(self, name: str) -> str:
        if not self.started:  # a stopped VM has no address (the double's `ip` fails too)
            raise CommandError(["docker-machine", "ip", name], 1, "Host is not running")
        return self.now_at

    def url(self, name: str) -> str:
        return f"tcp://{self.now_at}:2376"

    def remove(self, name: str, *, force: bool, timeout: float) -> Result:
        self.calls.append(("rm", timeout))
        return super().remove(name, force=force, timeout=timeout)


class Connections:
    """ssh.wait_ready as a fake: what it was given; ``presents`` the host key the machine
    shows (PINNED, or another one: then ssh refuses, as StrictHostKeyChecking yes does)."""

    def __init__(self, presents: str = PINNED) -> None:
        self.presents = presents
        self.seen: list[tuple[str, str, bool]] = []  # (ssh_config, known_hosts, pinned)

    def wait_ready(self, where: JobDir, *, target: str, pinned: bool = False, **_: object) -> None:
        known = where.known_hosts.read_text()
        self.seen.append((where.ssh_config.read_text(), known, pinned))
        if self.presents not in known.splitlines(keepends=True):
            raise ssh.HostKeyChanged(f"the machine at {target} presented a different SSH host key")


def world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: bool = False, mode: str = "shell"
) -> tuple[Settings, StateDir, Connections]:
    settings = parse_settings(
        {
            "state_dir": str(tmp_path / "st"),
            "machine": {"name_prefix": "gmd"},
            "docker_machine": {"storage_path": str(tmp_path / "dm")},
            "cleanup": {"timeout": 5, "remove_attempts": 1, "remove_timeout": 5},
            "pool": {"stopped_count": 1, "start_timeout": 120},
            "docker": {"check": check},
            "image": {"mode": mode},
        }
    )
    state = StateDir(settings.state_dir)
    state.save_pool(PoolRecord(name=NAME, address=Address(host=CREATED_AT), ready_at=1.0))
    state.pool_dir(NAME).known_hosts.write_text(PINNED)
    state.mark_ready(NAME, "stopped")
    connections = Connections()
    monkeypatch.setattr(ssh, "wait_ready", connections.wait_ready)
    monkeypatch.setattr(ssh, "stop_master", lambda where: None)
    return settings, state, connections


def stage_of(settings: Settings, state: StateDir, job_id: int) -> Stage:
    job = Job(id=job_id, project_id=7, pipeline_id=70, name="build")
    job_dir = state.job(job_id)
    job_dir.create()
    return Stage(settings, job, state, job_dir, settings.machine_name(job_id))


def take(stage: Stage, dm: StartingMachines) -> bool:
    return stopped.take(stage, dm)  # type: ignore[arg-type]


def counted(settings: Settings, metric: metrics.Counter, label: str, value: str) -> float:
    counters = metrics.load(settings.state_dir)["counters"]
    return float(counters.get(metric.key({label: value}), 0))


def test_a_machine_back_at_a_new_address_is_reached_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, state, connections = world(tmp_path, monkeypatch)
    dm = StartingMachines(tmp_path / "dm", now_at="10.214.0.6")
    dm.add(NAME)
    stage = stage_of(settings, state, 41)
    assert take(stage, dm) is True
    record = stage.job_dir.load()
    assert (record.machine, record.phase) == (NAME, JobPhase.READY)
    assert record.address.host == "10.214.0.6"
    config, known, pinned = connections.seen[0]
    assert "  HostName 10.214.0.6\n" in config
    assert (known, pinned) == (PINNED, True)  # the key pinned at its creation, only that
    # Without [docker] check or image mode the engine's TLS is not used: no new certs.
    assert [action for action, _ in dm.calls] == ["start"]
    assert state.pool_names() == []  # the job's now, not the pool's
    assert counted(settings, metrics.POOL_STOPPED_STARTS, "result", "started") == 1


def test_the_ssh_port_is_read_after_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, state, connections = world(tmp_path, monkeypatch)
    dm = StartingMachines(tmp_path / "dm", port_after=50022)
    dm.add(NAME)
    stage = stage_of(settings, state, 49)
    assert take(stage, dm) is True
    assert stage.job_dir.load().address.port == 50022
    assert "  Port 50022\n" in connections.seen[0][0]


def test_new_engine_certs_when_it_moved_and_the_engine_is_spoken_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, state, _ = world(tmp_path, monkeypatch, check=True)
    engines: list[str] = []

    def answers(at: engine.Engine, **_: object) -> str:
        engines.append(at.url)
        return "27.0"

    monkeypatch.setattr(engine, "wait_ready", answers)
    dm = StartingMachines(tmp_path / "dm", now_at="10.214.0.6")
    dm.add(NAME)
    assert take(stage_of(settings, state, 42), dm) is True
    assert [action for action, _ in dm.calls] == ["start", "regenerate-certs"]
    assert engines == ["tcp://10.214.0.6:2376"]


def test_in_image_mode_an_engine_that_refuses_costs_the_machine_not_the_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Image mode speaks to the engine over TLS even without [docker] check: asked here,
    # a refusal (certificates made again, but for the wrong address) removes the machine
    # and the job creates its own, instead of failing its prepare when its containers start.
    settings, state, _ = world(tmp_path, monkeypatch, mode="container")

    def refuses(at: engine.Engine, **_: object) -> str:
        raise DriverError(f"the VM's Docker engine at {at.url} did not answer: IP address mismatch")

    monkeypatch.setattr(engine, "wait_ready", refuses)
    dm = StartingMachines(tmp_path / "dm", now_at="10.214.0.6")
    dm.add(NAME)
    assert take(stage_of(settings, state, 44), dm) is False
    assert [action for action, _ in dm.calls] == ["start", "regenerate-certs", "rm"]
    assert counted(settings, metrics.POOL_STOPPED_STARTS, "result", "failed") == 1


def test_no_new_certs_when_it_came_back_where_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, state, _ = world(tmp_path, monkeypatch, check=True)
    monkeypatch.setattr(engine, "wait_ready", lambda at, **_: "27.0")
    dm = StartingMachines(tmp_path / "dm")
    dm.add(NAME)
    assert take(stage_of(settings, state, 43), dm) is True
    assert [action for action, _ in dm.calls] == ["start"]


def test_another_host_key_is_refused_and_the_machine_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, state, connections = world(tmp_path, monkeypatch)
    connections.presents = "machine ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAnotherVm\n"
    dm = StartingMachines(tmp_path / "dm", now_at="10.214.0.6")
    dm.add(NAME)
    stage = stage_of(settings, state, 44)
    assert take(stage, dm) is False  # the job creates its own
    assert dm.removed == [NAME]
    assert not stage.job_dir.state_file.exists()
    assert state.pool_names() == []
    assert counted(settings, metrics.POOL_DISCARDED, "reason", "host_key_changed") == 1
    assert counted(settings, metrics.POOL_STOPPED_STARTS, "result", "host_key_changed") == 1


@pytest.mark.parametrize("fault", ["fail", "hang"])
def test_a_start_that_fails_or_hangs_costs_the_machine_not_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    settings, state, connections = world(tmp_path, monkeypatch)
    dm = StartingMachines(tmp_path / "dm", start_fault=fault)
    dm.add(NAME)
    stage = stage_of(settings, state, 45)
    assert take(stage, dm) is False
    actions = [action for action, _ in dm.calls]
    assert actions == ["start", "rm"]
    assert dm.calls[0][1] <= settings.pool.start_timeout  # bounded
    assert connections.seen == []
    assert not stage.job_dir.state_file.exists() and state.pool_names() == []
    assert counted(settings, metrics.POOL_DISCARDED, "reason", "start_failed") == 1


def test_a_machine_without_its_pinned_key_is_never_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its pinned key lost (a disk error, a hand): nothing could prove the machine is
    ours, so it is removed unstarted, counted as a failed start, not as an attack."""
    settings, state, connections = world(tmp_path, monkeypatch)
    state.pool_dir(NAME).known_hosts.unlink()
    dm = StartingMachines(tmp_path / "dm")
    dm.add(NAME)
    stage = stage_of(settings, state, 48)
    assert take(stage, dm) is False
    assert [action for action, _ in dm.calls] == ["rm"]
    assert connections.seen == []
    assert counted(settings, metrics.POOL_DISCARDED, "reason", "start_failed") == 1
    assert counted(settings, metrics.POOL_DISCARDED, "reason", "host_key_changed") == 0


def test_two_jobs_for_one_stopped_machine_one_starts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, state, _ = world(tmp_path, monkeypatch)
    dm = StartingMachines(tmp_path / "dm")
    dm.add(NAME)
    both_looked = threading.Barrier(2, timeout=10)
    listed = StateDir.ready

    def ready_then_meet(self: StateDir, kind: str = "ready") -> list[str]:
        names = listed(self, kind)
        both_looked.wait()  # each saw the machine before either renames its marker
        return names

    monkeypatch.setattr(StateDir, "ready", ready_then_meet)
    stages = [stage_of(settings, state, job) for job in (46, 47)]
    results: dict[int, bool] = {}
    threads = [
        threading.Thread(target=lambda s=s: results.__setitem__(s.job.id, take(s, dm)))
        for s in stages
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results.values()) == [False, True]
    assert [action for action, _ in dm.calls] == ["start"]
    winner = next(s for s in stages if results[s.job.id])
    assert winner.job_dir.load().machine == NAME
    loser = next(s for s in stages if not results[s.job.id])
    assert not loser.job_dir.state_file.exists()


def test_a_cancel_during_the_start_ends_the_prepare_not_the_machine_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, state, connections = world(tmp_path, monkeypatch)
    dm = StartingMachines(tmp_path / "dm")
    dm.add(NAME)
    stage = stage_of(settings, state, 48)
    starting = dm.power

    def cancelled_while_starting(action: str, name: str, timeout: float) -> None:
        starting(action, name, timeout)
        os.kill(os.getpid(), signal.SIGTERM)  # the runner cancels the job (prepare's handler)

    monkeypatch.setattr(dm, "power", cancelled_while_starting)
    previous = signal.getsignal(signal.SIGTERM)
    signals.raise_on_termination()
    try:
        with pytest.raises(Cancelled):  # prepare ends: it must not go on to create a machine
            take(stage, dm)
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Its record names the machine still: prepare's failure path (and cleanup) removes it.
    assert stage.job_dir.load().machine == NAME
    assert counted(settings, metrics.POOL_DISCARDED, "reason", "start_failed") == 0
    assert connections.seen == []
