"""The pool service's stopped tier ([pool] stopped_count): made ready, stopped, kept at
its count, never taken for ready machines to come, surplus removed, kept across a
restart of the service. docker-machine and the cloud are fakes; the threads run inline."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from driver import metrics, provision
from driver.errors import CommandError
from driver.payload import Job
from driver.pool.service import PoolService
from driver.settings import parse_settings
from driver.stages import claim
from driver.stages.common import Stage
from driver.state import Address, PoolPhase, PoolRecord, StateDir


class Cloud:
    """What the service asks of docker-machine and the VMs, recorded."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, str]] = []
        self.stop_fails = False

    def power(self, action: str, name: str, timeout: float) -> None:
        self.actions.append((action, name))
        if self.stop_fails:
            raise CommandError(["docker-machine", action, name], 1, "the cloud said no")


def service_with(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stopped_count: int,
    idle_count: int = 0,
    drain_on_stop: bool = False,
) -> tuple[PoolService, Cloud, list[str]]:
    pool = {"idle_count": idle_count, "stopped_count": stopped_count}
    settings = parse_settings(
        {
            "state_dir": str(tmp_path),
            "machine": {"driver": "amazonec2"},
            "pool": {**pool, "drain_on_stop": drain_on_stop},
        }
    )
    service = PoolService(settings)
    cloud = Cloud()
    removed: list[str] = []

    def make_ready(*args: object, reached: Callable[[str], None], **options: object) -> None:
        reached("ssh")

    monkeypatch.setattr(provision, "create", lambda *args: 1)
    monkeypatch.setattr(provision, "locate", lambda *args: Address(host="10.0.0.9"))
    monkeypatch.setattr(provision, "make_ready", make_ready)
    monkeypatch.setattr(service.dm, "power", cloud.power)
    monkeypatch.setattr(service, "_start", lambda work: work())

    def remove(name: str, why: str, held: object = None, deadline: object = None) -> None:
        removed.append(name)
        service.state.forget_pool(name)

    monkeypatch.setattr(service, "_remove", remove)
    return service, cloud, removed


def test_the_service_keeps_its_count_of_stopped_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, cloud, _ = service_with(tmp_path, monkeypatch, stopped_count=2)
    service.tick(time.time())
    stopped = service.state.ready("stopped")
    assert len(stopped) == 2 and service.state.ready() == []
    assert sorted(cloud.actions) == sorted(("stop", name) for name in stopped)
    assert all(service.state.pool_phase(n) == PoolPhase.STOPPED for n in stopped)
    service.tick(time.time())  # at its count: nothing more
    assert len(cloud.actions) == 2
    taken = service.state.claim(9, "stopped")  # a job took one
    assert taken is not None
    service.state.release_claims(9)
    service.state.forget_pool(taken.name)
    service.tick(time.time())
    assert len(service.state.ready("stopped")) == 2  # made again
    assert service.stopped.pending == 0 and service.creating == set()


def test_a_stopped_tier_lowered_removes_the_surplus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _, _ = service_with(tmp_path, monkeypatch, stopped_count=2)
    service.tick(time.time())
    first = service.state.ready("stopped")[0]  # the longest stopped
    # The config lowered it, the service restarted: what is beyond the count goes.
    lowered, _, removed = service_with(tmp_path, monkeypatch, stopped_count=1)
    lowered.adopt()
    lowered.tick(time.time())
    assert removed == [first]
    assert len(lowered.state.ready("stopped")) == 1


def test_a_failed_stop_discards_the_machine_and_counts_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, cloud, removed = service_with(tmp_path, monkeypatch, stopped_count=1)
    cloud.stop_fails = True
    service.tick(time.time())
    assert len(removed) == 1 and service.state.ready("stopped") == []
    counters = metrics.load(tmp_path)["counters"]
    assert counters[metrics.POOL_DISCARDED.key({"reason": "stop_failed"})] == 1


def test_the_tiers_creates_are_no_ready_machines_to_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _, _ = service_with(tmp_path, monkeypatch, stopped_count=1, idle_count=1)
    seen: list[int] = []

    def make_ready(*args: object, reached: Callable[[str], None], **options: object) -> None:
        seen.append(service.observe()[0].creating)  # while a create is in flight

    monkeypatch.setattr(provision, "make_ready", make_ready)
    service.stopped.tick()  # the tier's create only
    assert seen == [0]


def test_a_restarted_service_keeps_its_stopped_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _, _ = service_with(tmp_path, monkeypatch, stopped_count=1)
    service.tick(time.time())
    again, _, removed = service_with(tmp_path, monkeypatch, stopped_count=1)
    again.adopt()
    assert removed == [] and len(again.state.ready("stopped")) == 1


def test_a_create_about_to_end_is_no_reason_to_remove_a_stopped_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tier create has marked its machine stopped and not yet ended (still pending)
    when the tick looks: that machine is the count, not beyond it."""
    service, cloud, removed = service_with(tmp_path, monkeypatch, stopped_count=1)
    service.state.save_pool(PoolRecord(name="gmd-p000000d1", address=Address(host="10.0.0.9")))
    service.state.mark_ready("gmd-p000000d1", "stopped")
    service.stopped.pending = 1  # its create's thread, between the mark and its end
    service.tick(time.time())
    assert removed == [] and cloud.actions == []
    assert service.state.ready("stopped") == ["gmd-p000000d1"]


@pytest.mark.parametrize("tier", ["ready", "stopped"])
def test_a_machine_made_ready_as_a_drain_on_stop_lists_the_pool_is_drained_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tier: str
) -> None:
    counts = {"stopped_count": 1} if tier == "stopped" else {"stopped_count": 0, "idle_count": 1}
    service, _, removed = service_with(tmp_path, monkeypatch, drain_on_stop=True, **counts)
    marking = service.state.mark_ready

    def stop_begins_first(name: str, kind: str = "ready") -> None:
        # The create checked for a stop a moment ago; the service's stop begins now, and
        # its drain lists what is claimable: this machine is not, yet.
        service.stopping.set()
        assert service.state.ready() + service.state.ready("stopped") == []
        marking(name, kind)

    monkeypatch.setattr(service.state, "mark_ready", stop_begins_first)
    service._create_one(tier=tier)
    assert service.state.ready() + service.state.ready("stopped") == []
    assert len(removed) == 1 and service.state.pool_names() == []


def test_a_machine_a_job_takes_while_a_restarted_service_looks_is_left_to_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _, removed = service_with(tmp_path, monkeypatch, stopped_count=1, idle_count=1)
    state = service.state
    for name, kind in (("gmd-p00000001", "ready"), ("gmd-p00000002", "stopped")):
        state.save_pool(PoolRecord(name=name, address=Address(host="10.0.0.9"), ready_at=1.0))
        state.mark_ready(name, kind)
    taken: list[str] = []

    def healthy_while_a_job_starts_the_stopped_one(record: PoolRecord) -> bool:
        # The restarted service checks its ready machines one by one; a job's prepare
        # meanwhile takes the stopped one, all the way (driver.stages.stopped.take).
        claimed = state.claim(7, "stopped")
        if claimed is not None:
            state.release_claims(7)
            state.forget_pool(claimed.name)
            taken.append(claimed.name)
        return True

    monkeypatch.setattr(service, "_healthy", healthy_while_a_job_starts_the_stopped_one)
    service.adopt()
    assert taken == ["gmd-p00000002"]
    assert removed == []  # the job's now: not the service's to remove
    assert state.ready() == ["gmd-p00000001"]


def test_a_machine_a_job_is_taking_over_while_a_restarted_service_looks_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, _, removed = service_with(tmp_path, monkeypatch, stopped_count=0, idle_count=2)
    state = service.state
    for name, age in (("gmd-p00000001", 10), ("gmd-p00000002", 20)):  # 2 idle the longest
        state.save_pool(PoolRecord(name=name, address=Address(host="10.0.0.9"), ready_at=1.0))
        state.pool_dir(name).known_hosts.write_text(f"{name} ssh-ed25519 AAAAkey\n")
        state.mark_ready(name)
        os.utime(state.pool_root / "ready" / name, (time.time() - age, time.time() - age))
    monkeypatch.setattr(claim, "answers", lambda settings, machine: True)
    # The job's take stops between dropping its claim and the pool's record of the
    # machine (whichever it does first) until the service has looked at every machine.
    between, go = threading.Event(), threading.Event()
    dropped: list[str] = []
    for method in ("release_claims", "forget_pool"):
        original = getattr(StateDir, method)

        def dropping(
            self: StateDir, arg: object, _original: Callable[..., object] = original
        ) -> object:
            if threading.current_thread().name == "job" and len(dropped) == 1:
                between.set()
                assert go.wait(10)
            dropped.append(str(arg))
            return _original(self, arg)

        monkeypatch.setattr(StateDir, method, dropping)
    job = Job(id=7, project_id=1, pipeline_id=None, name="")
    stage = Stage(service.settings, job, state, state.job(7), "gmd-7")
    stage.job_dir.create()
    taking = threading.Thread(target=claim.take_from_pool, args=(stage, print), name="job")

    def healthy_while_a_job_takes_the_other(record: PoolRecord) -> bool:
        if not taking.is_alive() and not between.is_set():
            taking.start()
            assert between.wait(10)
        return True

    monkeypatch.setattr(service, "_healthy", healthy_while_a_job_takes_the_other)
    try:
        service.adopt()
    finally:
        go.set()
        taking.join(10)
    assert stage.job_dir.load().machine == "gmd-p00000002"
    assert removed == []  # the job's: not the service's to remove


def test_a_create_that_ends_while_the_tier_counts_is_not_made_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its machine is stopped just after the tier listed its stopped machines, and no more
    pending when it looks at the creates in flight: counted in one of the two, not neither."""
    service, cloud, _ = service_with(tmp_path, monkeypatch, stopped_count=1)
    service.stopped.pending = 1  # a create in flight
    listed = StateDir.ready
    looked: list[str] = []

    def listed_then_create_ends(self: StateDir, kind: str = "ready") -> list[str]:
        names = listed(self, kind)
        if kind == "stopped" and not looked:
            looked.append(kind)
            self.save_pool(PoolRecord(name="gmd-p000000e1", address=Address(host="10.0.0.9")))
            self.mark_ready("gmd-p000000e1", "stopped")
            with service.lock:
                service.stopped.pending -= 1
        return names

    monkeypatch.setattr(StateDir, "ready", listed_then_create_ends)
    service.stopped.tick()
    assert cloud.actions == []  # nothing made: the tier is at its count
    assert service.state.ready("stopped") == ["gmd-p000000e1"]
