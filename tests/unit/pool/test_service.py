"""The pool service on its state dir: one instance at a time; what its policy learned kept."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from driver.errors import DriverError
from driver.pool import service as service_module
from driver.pool.control import DemandPolicy, Observation
from driver.pool.service import PoolService
from driver.process import Result
from driver.settings import parse_settings
from driver.state import PoolRecord

ROOT = Path(__file__).resolve().parents[3]


def test_a_second_pool_service_on_one_state_dir_refuses_naming_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "START_WAIT", 0.2)  # the refusal, not the wait, is tested
    settings = parse_settings({"state_dir": str(tmp_path), "pool": {"idle_count": 1}})
    first, second = PoolService(settings), PoolService(settings)
    refused = f"another pool service \\(pid {os.getpid()}\\)"
    with first.only_instance(), pytest.raises(DriverError, match=refused), second.only_instance():
        pass
    with second.only_instance():  # the first one stopped: the next may start
        pass


def test_the_policys_learning_is_kept_for_the_next_start(tmp_path: Path) -> None:
    settings = parse_settings({"state_dir": str(tmp_path), "pool": {"policy": "demand"}})
    first = PoolService(settings)
    policy = first.controller.policy
    assert isinstance(policy, DemandPolicy)
    an_hour_ago = time.time() - 3600
    for minute in range(1, 60):
        policy.observe(
            an_hour_ago + 60 * minute, Observation(ready=(), creating=0, in_use=0, hits=2)
        )
    first.remember()
    saved = first.state.pool_memory_file
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    second = PoolService(settings)
    second.recall()
    recalled = second.controller.policy
    assert isinstance(recalled, DemandPolicy)
    assert list(recalled.sizes) == list(policy.sizes)


def test_an_unreadable_memory_costs_the_learning_only(tmp_path: Path) -> None:
    settings = parse_settings({"state_dir": str(tmp_path), "pool": {"policy": "demand"}})
    service = PoolService(settings)
    service.state.pool_root.mkdir(parents=True)
    for junk in ("{not json", json.dumps({"version": 1, "starts": [1.0]}), "[]"):
        service.state.pool_memory_file.write_text(junk)
        service.recall()  # no exception: the pool starts afresh
        policy = service.controller.policy
        assert isinstance(policy, DemandPolicy) and len(policy.sizes) == 0


@pytest.mark.parametrize(
    ("failing", "reason"),
    [("create", "create_failed"), ("ssh", "ssh_not_ready"), ("engine", "engine_not_ready")],
)
def test_a_discarded_machine_is_counted_by_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, reason: str
) -> None:
    from driver import metrics, provision
    from driver.state import Address

    settings = parse_settings(
        {"state_dir": str(tmp_path), "pool": {"idle_count": 1}, "machine": {"driver": "none"}}
    )
    service = PoolService(settings)
    removed: list[str] = []

    def create(*args: object) -> int:
        if failing == "create":
            raise DriverError("the cloud said no")
        return 1

    def make_ready(*args: object, reached: Callable[[str], None], **options: object) -> None:
        for step in ("ssh", "tools", "engine"):
            reached(step)
            if step == failing:
                raise DriverError(f"{step} did not answer")

    monkeypatch.setattr(provision, "create", create)
    monkeypatch.setattr(provision, "locate", lambda *args: Address(host="10.0.0.9"))
    monkeypatch.setattr(provision, "make_ready", make_ready)
    monkeypatch.setattr(service, "_remove", lambda name, why, held=None: removed.append(why))
    service._create_one()
    assert removed == ["its preparation failed"]
    counters = metrics.load(tmp_path)["counters"]
    discarded = {key: n for key, n in counters.items() if "pool_discarded" in key}
    assert discarded == {metrics.POOL_DISCARDED.key({"reason": reason}): 1}


class MeetingRemovals:
    """docker-machine whose `rm` waits until ``together`` removals are in flight: a
    drain one machine after another never gets there, and the barrier breaks."""

    def __init__(self, storage: Path, together: int) -> None:
        self.storage = storage
        self.barrier = threading.Barrier(together, timeout=30)
        self.removed: list[str] = []

    def entry_dir(self, name: str) -> Path:
        return self.storage / "machines" / name

    def exists(self, name: str) -> bool:
        return self.entry_dir(name).is_dir()

    def remove(self, name: str, *, force: bool, timeout: float) -> Result:
        self.barrier.wait()
        shutil.rmtree(self.entry_dir(name))
        self.removed.append(name)
        return Result(["docker-machine", "rm", "-y", name], 0, "", "")


def test_the_drain_on_stop_removes_the_ready_machines_at_once(tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "state_dir": str(tmp_path / "st"),
            "docker_machine": {"storage_path": str(tmp_path / "dm")},
            "pool": {"idle_count": 3, "drain_on_stop": True},
        }
    )
    service = PoolService(settings)
    dm = MeetingRemovals(tmp_path / "dm", together=3)
    service.dm = dm  # type: ignore[assignment]
    names = ["gmd-p000000a1", "gmd-p000000a2", "gmd-p000000a3"]
    for name in names:
        dm.entry_dir(name).mkdir(parents=True)
        service.state.save_pool(PoolRecord(name=name))
        service.state.mark_ready(name)
    service.shutdown()
    assert sorted(dm.removed) == names
    assert service.state.pool_names() == [] and service.errors == []


def test_the_service_stops_within_its_units_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd kills the service at TimeoutStopSec: its own wait must end before, even
    with a create in flight that would take [create] timeout + 60 s."""
    unit = ROOT / "packaging" / "systemd" / "gitlab-machine-driver-pool@.service"
    limit = next(
        float(line.split("=", 1)[1])
        for line in unit.read_text().splitlines()
        if line.startswith("TimeoutStopSec=")
    )
    assert limit >= service_module.STOP_WITHIN + 30
    settings = parse_settings(
        {"state_dir": str(tmp_path), "create": {"timeout": 900}, "pool": {"idle_count": 1}}
    )
    service = PoolService(settings)
    service.creating.add("gmd-p000000b1")  # a create that will not finish in time
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    monkeypatch.setattr(time, "sleep", sleep)
    service.shutdown()
    monkeypatch.undo()
    assert now[0] - 1000.0 <= service_module.STOP_WITHIN + 1


def test_the_discard_reasons_are_one_vocabulary_with_the_docs() -> None:
    from driver import metrics

    assert set(service_module.FAILURE_REASONS.values()) <= set(metrics.DISCARD_REASONS)
    row = next(
        line
        for line in (ROOT / "docs" / "metrics.md").read_text().splitlines()
        if metrics.POOL_DISCARDED.full_name in line
    )
    listed = re.sub(r"\([^)]*\)", "", row.split("`reason`:")[1])  # without the comments
    assert {word.strip(" |") for word in listed.split(",")} == set(metrics.DISCARD_REASONS)


def ready_machine(service: PoolService, name: str) -> None:
    from driver.state import Address

    service.state.save_pool(PoolRecord(name=name, address=Address(host="10.0.0.9")))
    service.state.mark_ready(name)


def test_a_ready_machine_that_fails_its_health_check_is_counted_ssh_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driver import metrics, ssh

    settings = parse_settings({"state_dir": str(tmp_path), "pool": {"idle_count": 1}})
    service = PoolService(settings)
    ready_machine(service, "gmd-p000000b1")  # the target: the controller keeps it
    monkeypatch.setattr(ssh, "run", lambda *args, **kw: Result(["ssh"], 255, "", "gone"))
    removed: list[str] = []
    monkeypatch.setattr(service, "_start", lambda work: work())
    monkeypatch.setattr(service, "_remove", lambda name, why, held=None: removed.append(name))
    service.tick(time.time())
    assert removed == ["gmd-p000000b1"]
    counters = metrics.load(tmp_path)["counters"]
    assert counters == {metrics.POOL_DISCARDED.key({"reason": "ssh_lost"}): 1}


def test_a_machine_a_job_rejected_at_its_claim_is_removed_by_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = parse_settings({"state_dir": str(tmp_path), "pool": {"idle_count": 0}})
    service = PoolService(settings)
    for name in ("gmd-p000000c1", "gmd-p000000c2"):
        ready_machine(service, name)
        assert service.state.claim(7) is not None
        service.state.reject_claim(name, 7)  # the job found it dead
    busy = service.state.pool_lock("gmd-p000000c2")  # being removed by a sweep
    assert busy.try_acquire()
    removed: list[str] = []

    def remove(name: str, why: str, held: object = None) -> None:
        assert held is not None  # under its lock, which the service took
        removed.append(name)
        service.state.forget_pool(name)

    monkeypatch.setattr(service, "_start", lambda work: work())
    monkeypatch.setattr(service, "_remove", remove)
    service.tick(time.time())
    assert removed == ["gmd-p000000c1"]
    assert service.state.withdrawn() == ["gmd-p000000c2"]
    assert service.state.claims() == []
    busy.release()


def test_a_rejected_machine_removed_meanwhile_is_not_removed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service lists the rejected machines, then takes each one's lock: a sweep
    that removed one in between (under that lock) leaves nothing for the service."""
    settings = parse_settings({"state_dir": str(tmp_path), "pool": {"idle_count": 0}})
    service = PoolService(settings)
    name = "gmd-p000000c3"
    ready_machine(service, name)
    assert service.state.claim(7) is not None
    service.state.reject_claim(name, 7)
    listed = service.state.withdrawn()

    def listed_then_swept() -> list[str]:
        # The listing the service acts on, taken just before a sweep removed it.
        sweep = service.state.pool_lock(name)
        assert sweep.try_acquire()
        service.state.forget_pool(name)
        sweep.release()
        monkeypatch.setattr(service.state, "withdrawn", lambda: [])
        return listed

    monkeypatch.setattr(service.state, "withdrawn", listed_then_swept)
    removed: list[str] = []
    monkeypatch.setattr(service, "_start", lambda work: work())
    monkeypatch.setattr(service, "_remove", lambda name, why, held=None: removed.append(name))
    service.tick(time.time())
    assert removed == []
    assert not service.state.pool_lock(name).path.exists()


def test_a_restart_of_the_service_leaves_the_connections_it_handed_to_jobs() -> None:
    """The SSH masters the service opened go to the jobs that claim their machines:
    systemd must stop the service's own process only, not its whole control group."""
    unit = ROOT / "packaging" / "systemd" / "gitlab-machine-driver-pool@.service"
    assert "KillMode=process" in unit.read_text().splitlines()
