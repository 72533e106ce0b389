"""The pool service's claim desk (driver.pool.claims), over a real Unix socket: who may
ask, what a bad request gets, when it sends prepare down its own path, and that a
claim it makes leaves the job what prepare's own claim leaves."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from driver import metrics, ssh
from driver.docker_machine import DockerMachine
from driver.errors import DriverError
from driver.payload import Job
from driver.pool import claims
from driver.pool.claims import ClaimDesk, ClaimServer, Reply, Request
from driver.settings import Settings, load_settings
from driver.stages import claim
from driver.stages.common import Stage
from driver.stages.prepare_fast import ask
from driver.state import (
    Address,
    JobDir,
    MachineDir,
    PoolRecord,
    StateDir,
    ancestors,
    pid_namespace,
    write_private,
)
from testing.world import wait_for

CONFIG = """\
state_dir = "{state}"
[machine]
driver = "local"
name_prefix = "gmdu"
[docker_machine]
storage_path = "{storage}"
[pool]
idle_count = 2
"""


@dataclass
class World:
    base: Path
    config: Path
    settings: Settings
    state: StateDir
    dm: DockerMachine

    @property
    def socket(self) -> Path:
        return self.state.pool_root / "claim.sock"

    def response(self, job_id: int) -> Path:
        path = self.base / f"response-{job_id}.json"
        job = {"id": job_id, "token": "t", "job_info": {"project_id": 1}}
        path.write_text(json.dumps(job))
        return path

    def ready(self, name: str) -> None:
        """A ready pool machine, as the service leaves it."""
        address = Address(host="10.1.2.3", port=2222, user="core", key_path="/keys/id")
        self.state.save_pool(PoolRecord(name=name, address=address, ready_at=time.time()))
        write_private(self.state.pool_dir(name).known_hosts, f"{name} ssh-ed25519 AAAAkey\n")
        self.state.mark_ready(name)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    config = tmp_path / "driver.toml"
    state = tmp_path / "st"
    config.write_text(CONFIG.format(state=state, storage=tmp_path / "dm"))
    settings = load_settings(config)
    monkeypatch.setattr(claim, "answers", lambda settings, machine: True)  # no VM here
    return World(tmp_path, config, settings, StateDir(state), DockerMachine(settings))


def request(world: World, job_id: int, **changes: object) -> dict[str, object]:
    return {
        "config": str(world.config),
        "response_file": str(world.response(job_id)),
        "pid": os.getpid(),
        "owners": ancestors(),
        "pid_ns": pid_namespace(),
        **changes,
    }


@pytest.fixture
def desk(world: World) -> Iterator[ClaimServer]:
    server = ClaimServer(world.socket, ClaimDesk(world.settings, world.config, world.dm).answer)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def asked(world: World, body: dict[str, object]) -> dict[str, object]:
    reply = json.loads(ask(str(world.socket), body))
    assert isinstance(reply, dict)
    return reply


def send_raw(path: Path, data: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = json.loads(sock.makefile("rb").read())
    assert isinstance(reply, dict)
    return reply


# --- the socket


def test_a_peer_of_another_uid_is_refused_and_the_next_one_served(world: World) -> None:
    uids = iter([os.getuid() + 1, os.getuid()])
    answered: list[Request] = []

    def answer(request: Request, peer_pid: int) -> Reply:
        answered.append(request)
        return Reply("miss")

    server = ClaimServer(world.socket, answer, peer=lambda conn: (1, next(uids)))
    server.start()
    try:
        refused = asked(world, request(world, 11))
        assert refused["outcome"] == "error"
        other, mine = os.getuid() + 1, os.getuid()
        assert refused["reason"] == f"refused: uid {other} is not the pool service's ({mine})"
        assert answered == []
        assert asked(world, request(world, 11))["outcome"] == "miss"
        assert len(answered) == 1
    finally:
        server.stop()


def test_a_busy_service_is_not_held_up_by_a_peer_that_sends_nothing(
    world: World, desk: ClaimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every serving slot taken; a peer connects and sends nothing. The accepting thread
    # answers it "busy" without waiting on it, so the next peer is answered well within
    # its wait while the silent one still holds its connection open.
    monkeypatch.setattr(claims, "READ_TIMEOUT", 600.0)
    for _ in range(claims.MAX_AT_ONCE):
        assert desk.slots.acquire(blocking=False)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
            silent.connect(str(world.socket))
            reply = asked(world, request(world, 13))  # prepare's client, its own timeout
            assert reply["outcome"] == "not_here"
            assert reply["reason"] == "the pool service is busy"
            wait_for(lambda: len(desk.told_busy) == 1)  # closed by the peer: closed here
        wait_for(lambda: not desk.told_busy)
    finally:
        for _ in range(claims.MAX_AT_ONCE):
            desk.slots.release()


def test_bad_requests_get_a_clear_error_and_the_service_goes_on(
    world: World, desk: ClaimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        b"not json, password=hunter2\n": "bad request: the request is not a JSON line",
        b'["a list"]\n': "bad request: the request is not a JSON object",
        json.dumps({"config": "relative.toml"}).encode() + b"\n": (
            "bad request: config: an absolute path is needed"
        ),
        b"x" * (claims.MAX_REQUEST + 10): (
            f"bad request: the request is over {claims.MAX_REQUEST} bytes"
        ),
    }
    for data, reason in cases.items():
        assert send_raw(world.socket, data) == {"outcome": "error", "reason": reason, "lines": []}
    world.ready("gmdu-p1")
    assert asked(world, request(world, 12))["outcome"] == "claimed"
    assert "hunter2" not in capsys.readouterr().out  # the admin log never gets a request


def test_the_socket_is_private_replaces_a_stale_one_and_goes_at_stop(world: World) -> None:
    world.state.pool_root.mkdir(parents=True)
    world.socket.write_text("left by a killed service")
    server = ClaimServer(world.socket, lambda request, pid: Reply("miss"))
    server.start()
    assert stat.S_ISSOCK(world.socket.stat().st_mode)
    assert stat.S_IMODE(world.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(world.state.pool_root.stat().st_mode) == 0o700
    server.stop()
    assert not world.socket.exists()
    assert [p.name for p in world.state.pool_root.iterdir()] == []


# --- what the desk answers


def test_another_config_or_a_changed_one_is_not_the_services(
    world: World, desk: ClaimServer
) -> None:
    world.ready("gmdu-p1")
    other = world.base / "other.toml"
    other.write_text(world.config.read_text())
    reply = asked(world, request(world, 21, config=str(other)))
    assert (reply["outcome"], reply["reason"]) == (
        "not_here",
        "another config file than the pool service's",
    )
    world.config.write_text(world.config.read_text() + "\n# edited\n")
    reply = asked(world, request(world, 21))
    assert (reply["outcome"], reply["reason"]) == (
        "not_here",
        "the config file changed since the pool service started",
    )
    assert world.state.ready() == ["gmdu-p1"]


def test_image_mode_is_left_to_prepare(world: World) -> None:
    world.config.write_text(world.config.read_text() + '[image]\nmode = "container"\n')
    settings = load_settings(world.config)
    server = ClaimServer(world.socket, ClaimDesk(settings, world.config, world.dm).answer)
    server.start()
    try:
        world.ready("gmdu-p1")
        reply = asked(world, request(world, 22))
    finally:
        server.stop()
    assert (reply["outcome"], reply["reason"]) == (
        "not_here",
        "image mode: prepare starts the job's containers itself",
    )
    assert world.state.ready() == ["gmdu-p1"]


def test_a_pid_that_is_not_the_callers_is_refused(world: World, desk: ClaimServer) -> None:
    world.ready("gmdu-p1")
    reply = asked(world, request(world, 23, pid=os.getpid() + 1))
    assert reply["reason"] == "refused: the pid given is not the connecting process's"
    assert world.state.ready() == ["gmdu-p1"]


@pytest.mark.parametrize("leftover", ["a job record", "a claimed pool machine", "machine"])
def test_a_job_with_leftovers_is_left_to_prepare(
    world: World, desk: ClaimServer, leftover: str
) -> None:
    job_id = 31
    job_dir = world.state.job(job_id)
    if leftover == "a job record":
        job_dir.create()
        job_dir.state_file.write_text("{}")
    elif leftover == "a claimed pool machine":
        world.ready("gmdu-p0")
        assert world.state.claim(job_id) is not None
    else:
        world.dm.entry_dir(f"gmdu-{job_id}").mkdir(parents=True)
        leftover = f"machine gmdu-{job_id}"
    world.ready("gmdu-p1")
    reply = asked(world, request(world, job_id))
    assert (reply["outcome"], reply["reason"]) == (
        "not_here",
        f"left over from an earlier attempt: {leftover}",
    )
    assert world.state.ready() == ["gmdu-p1"]


def test_a_miss_is_not_counted_by_the_desk(world: World, desk: ClaimServer) -> None:
    reply = asked(world, request(world, 41))
    assert reply == {"outcome": "miss", "reason": "no ready machine answered", "lines": []}
    assert metrics.POOL_CLAIMS.key({"result": "miss"}) not in counters(world)
    assert world.state.job_ids() == []  # prepare starts from nothing


def test_a_dead_machine_is_passed_over_and_counted(
    world: World, desk: ClaimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.ready("gmdu-p1")
    monkeypatch.setattr(claim, "answers", lambda settings, machine: False)
    reply = asked(world, request(world, 42))
    assert reply["outcome"] == "miss"
    assert reply["lines"] == ["Pool machine gmdu-p1 did not answer: left for the pool to remove"]
    assert world.state.withdrawn() == ["gmdu-p1"]
    assert counters(world)[metrics.POOL_DISCARDED.key({"reason": "dead_at_claim"})] == 1


def counters(world: World) -> dict[str, float]:
    found = metrics.load(world.settings.state_dir)["counters"]
    assert isinstance(found, dict)
    return found


def taken_by_prepare(world: World, job_id: int) -> bool:
    """prepare's own claim (no desk) of a ready machine for job ``job_id``."""
    stage = Stage(
        world.settings,
        Job(id=job_id, project_id=1, pipeline_id=None, name=""),
        world.state,
        world.state.job(job_id),
        f"gmdu-{job_id}",
    )
    stage.job_dir.create()
    return claim.take_from_pool(stage, lambda line: None)


def test_a_claim_through_the_socket_leaves_what_prepares_own_claim_leaves(
    world: World, desk: ClaimServer
) -> None:
    world.ready("gmdu-p1")
    reply = asked(world, request(world, 51))
    assert reply["outcome"] == "claimed"
    lines = reply["lines"]
    assert isinstance(lines, list) and len(lines) == 1
    assert str(lines[0]).startswith("Took machine gmdu-p1 from the warm pool (ready 0s ago, ")
    # The same claim, by prepare's own path, for a twin job.
    world.ready("gmdu-p2")
    assert taken_by_prepare(world, 52)
    fast, own = world.state.job(51), world.state.job(52)
    fast_record, own_record = fast.load(), own.load()
    for field in ("phase", "prepare_pid", "owners", "pid_ns", "boot_id", "log_path"):
        assert getattr(fast_record, field) == getattr(own_record, field), field
    assert fast_record.prepare_pid == os.getpid()  # the asking process, not the service
    assert (fast_record.machine, own_record.machine) == ("gmdu-p1", "gmdu-p2")
    assert vars(fast_record.address) == vars(own_record.address)

    def same(text: str) -> str:
        return text.replace("gmdu-p1", "M").replace("gmdu-p2", "M").replace("/51/", "/J/")

    for name in ("known_hosts", "ssh_config"):
        fast_text = (fast.path / name).read_text()
        own_text = (own.path / name).read_text().replace("/52/", "/J/")
        assert same(fast_text) == same(own_text), name
    assert world.state.ready() == [] and world.state.claims() == []
    assert counters(world)[metrics.POOL_CLAIMS.key({"result": "hit"})] == 2
    histogram = metrics.load(world.settings.state_dir)["histograms"]
    assert histogram[metrics.PREPARE_SECONDS.key({"source": "pool"})]["count"] == 1


def test_a_response_file_that_is_no_file_is_not_read_by_the_service(
    world: World, desk: ClaimServer
) -> None:
    world.ready("gmdu-p1")
    fifo = world.base / "fifo"
    os.mkfifo(fifo)  # read, it would hold the service's thread until someone writes
    reply = asked(world, request(world, 71, response_file=str(fifo)))
    assert (reply["outcome"], reply["reason"]) == (
        "not_here",
        "the job's response file is no regular file of a job's size",
    )
    assert world.state.ready() == ["gmdu-p1"]


# --- a prepare cancelled while the service claims for it


@pytest.fixture
def claimant() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing for the job's prepare (the runner cancels it: SIGTERM)."""
    process = subprocess.Popen(["sleep", "600"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def cancelled(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait()  # reaped, as the runner does before it runs cleanup


def ask_for(world: World, process: subprocess.Popen[bytes], job_id: int) -> Reply:
    desk = ClaimDesk(world.settings, world.config, world.dm)
    body = request(world, job_id, pid=process.pid)
    return desk.answer(claims.parse_request(json.dumps(body).encode()), process.pid)


def test_a_prepare_cancelled_before_the_claim_gets_no_machine(
    world: World, claimant: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    world.ready("gmdu-p1")
    # The cancel comes after the desk read the request, before it holds the job's lock.
    job = StateDir.job

    def cancelled_then_job(self: StateDir, job_id: int) -> JobDir:
        cancelled(claimant)
        return job(self, job_id)

    monkeypatch.setattr(StateDir, "job", cancelled_then_job)
    reply = ask_for(world, claimant, 81)
    assert (reply.outcome, reply.reason) == ("not_here", "the asking prepare is gone")
    assert world.state.ready() == ["gmdu-p1"]  # still the pool's
    assert world.state.job_ids() == []


def test_a_prepare_cancelled_during_the_claim_leaves_no_machine_held(
    world: World, claimant: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    world.ready("gmdu-p1")

    def answers_then_cancelled(settings: Settings, machine: object) -> bool:
        cancelled(claimant)  # the runner's cleanup waits for the job's lock
        return True

    monkeypatch.setattr(claim, "answers", answers_then_cancelled)
    reply = ask_for(world, claimant, 82)
    assert (reply.outcome, reply.reason) == ("failed", "the asking prepare is gone")
    # Nothing is left for a cleanup that may have come and gone: no record, no machine.
    assert world.state.job_ids() == [] and world.state.claims() == []
    assert world.state.pool_names() == []


def test_a_claim_the_desk_could_not_hand_over_is_not_counted_twice(
    world: World, desk: ClaimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.ready("gmdu-p1")
    world.ready("gmdu-p2")
    handing_over = ssh.hand_over_master
    failures = iter([DriverError("the pool's connection could not be handed over")])

    def fails_once(source: MachineDir, target: MachineDir) -> bool:
        for error in failures:
            raise error
        return handing_over(source, target)

    monkeypatch.setattr(ssh, "hand_over_master", fails_once)
    reply = asked(world, request(world, 91))
    assert reply["outcome"] == "failed"  # its prepare goes down its own path: one more claim
    assert taken_by_prepare(world, 91)
    assert counters(world)[metrics.POOL_CLAIMS.key({"result": "hit"})] == 1  # one job, one hit


def test_a_failed_hand_over_does_not_tell_the_job_its_prepare_failed(
    world: World, desk: ClaimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.ready("gmdu-p1")

    def fails(source: MachineDir, target: MachineDir) -> bool:
        raise DriverError("the pool's connection could not be handed over")

    monkeypatch.setattr(ssh, "hand_over_master", fails)
    reply = asked(world, request(world, 92))
    assert reply["outcome"] == "failed"
    # Its prepare goes on (and may well succeed): the job log says what happened, no more.
    assert reply["lines"] == [
        "The pool service could not hand a machine over (the pool's connection could not "
        "be handed over); it was removed: preparing without it"
    ]
    assert world.state.pool_names() == [] and world.state.job_ids() == []
