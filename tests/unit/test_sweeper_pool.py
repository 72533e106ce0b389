"""Ready pool machines nobody will hand out: the pool turned off, or no service for
longer than idle_time. The sweeper removes them (each withdrawn first: a claim
wins or loses, never both), and `pool drain` removes them by hand, several at
once. Interleavings are forced through hooks, never sleeps."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driver import sweeper
from driver.commands import pool as pool_command
from driver.errors import DriverError
from driver.process import Result
from driver.settings import Settings, parse_settings
from driver.state import StateDir
from tests.unit.test_sweeper import FakeMachines, live_job, ready_pool_machine, run_sweep

IDLE_TIME = 600.0


def pool_world(
    tmp_path: Path, idle_count: int, **pool: object
) -> tuple[Settings, StateDir, FakeMachines]:
    """``pool``: more [pool] settings."""
    settings = parse_settings(
        {
            "state_dir": str(tmp_path / "st"),
            "machine": {"name_prefix": "gmd"},
            "docker_machine": {"storage_path": str(tmp_path / "dm")},
            "cleanup": {"timeout": 5, "remove_attempts": 1, "remove_timeout": 5},
            "pool": {"idle_count": idle_count, "idle_time": IDLE_TIME, **pool},
        }
    )
    return settings, StateDir(settings.state_dir), FakeMachines(tmp_path / "dm")


@contextlib.contextmanager
def service_running(state: StateDir) -> Iterator[None]:
    """A pool service holds its lock (as `pool run` does while it runs)."""
    service = state.lock("pool-service")
    assert service.try_acquire()
    try:
        yield
    finally:
        service.release()


def service_seen(state: StateDir, ago: float) -> None:
    """A pool service last wrote its status ``ago`` seconds ago."""
    state.pool_root.mkdir(parents=True, exist_ok=True)
    state.pool_status_file.write_text("{}")
    then = time.time() - ago
    os.utime(state.pool_status_file, (then, then))


def test_a_pool_turned_off_gives_its_ready_machines_back(tmp_path: Path) -> None:
    settings, state, dm = pool_world(tmp_path, idle_count=0)
    ready_pool_machine(state, dm, "gmd-p000000a1")
    service_seen(state, ago=5)  # stopped a moment ago, without a drain
    said = run_sweep(settings, dm)
    assert dm.removed == ["gmd-p000000a1"], said
    assert any("idle in a warm pool nobody serves: the warm pool is off" in s for s in said)
    assert state.pool_names() == []
    assert state.machines_owned() == (0, 0)


def test_a_pool_without_a_service_for_longer_than_idle_time_is_reclaimed(
    tmp_path: Path,
) -> None:
    settings, state, dm = pool_world(tmp_path, idle_count=2)
    ready_pool_machine(state, dm, "gmd-p000000b1")
    service_seen(state, ago=IDLE_TIME - 60)  # restarting, say: kept
    run_sweep(settings, dm)
    assert dm.removed == []
    service_seen(state, ago=IDLE_TIME + 60)
    said = run_sweep(settings, dm)
    assert dm.removed == ["gmd-p000000b1"], said
    assert any("no pool service has run for over [pool] idle_time" in s for s in said)


def test_a_running_pool_service_keeps_its_ready_machines(tmp_path: Path) -> None:
    settings, state, dm = pool_world(tmp_path, idle_count=2)
    ready_pool_machine(state, dm, "gmd-p000000c1")
    service_seen(state, ago=IDLE_TIME * 5)  # a service hung in a long tick still holds it
    with service_running(state):
        said = run_sweep(settings, dm)
    assert dm.removed == [], said
    assert any("keeping (idle in the warm pool)" in s for s in said)


def test_a_claim_just_before_the_withdrawal_keeps_the_machine_for_its_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep re-checked under the pool lock; a prepare (which takes no pool lock)
    claims the machine before the sweep withdraws it: the job gets it, whole."""
    settings, state, dm = pool_world(tmp_path, idle_count=0)
    ready_pool_machine(state, dm, "gmd-p000000d1")
    look = sweeper.Sweep.facts

    def facts_then_claim(self: sweeper.Sweep, machine: str, **kwargs: Any) -> sweeper.Facts:
        seen = look(self, machine, **kwargs)
        if kwargs.get("locked"):
            taken = state.claim(43)
            assert taken is not None
            live_job(state, 43, taken.name)
        return seen

    monkeypatch.setattr(sweeper.Sweep, "facts", facts_then_claim)
    said = run_sweep(settings, dm)
    assert dm.removed == [], said
    assert any("a job claimed it just now" in s for s in said), said
    assert dm.exists("gmd-p000000d1")


class MeetingRemovals(FakeMachines):
    """Each `rm` waits until ``together`` removals are in flight: sequential removals
    never meet, and the barrier breaks."""

    def __init__(self, storage: Path, together: int) -> None:
        super().__init__(storage)
        self.barrier = threading.Barrier(together, timeout=30)

    def remove(self, name: str, *, force: bool, timeout: float) -> Result:
        self.barrier.wait()
        return super().remove(name, force=force, timeout=timeout)


def test_pool_drain_removes_the_ready_machines_at_once(tmp_path: Path) -> None:
    settings, state, _ = pool_world(tmp_path, idle_count=3)
    dm = MeetingRemovals(tmp_path / "dm", together=3)
    for name in ("gmd-p000000e1", "gmd-p000000e2", "gmd-p000000e3"):
        ready_pool_machine(state, dm, name)
    said: list[str] = []
    assert pool_command.drain(settings, progress=said.append, dm=dm) == 0  # type: ignore[arg-type]
    assert sorted(dm.removed) == ["gmd-p000000e1", "gmd-p000000e2", "gmd-p000000e3"]
    assert state.pool_names() == [] and state.machines_owned() == (0, 0)
    assert said[-1] == "pool: 3 of 3 ready or stopped machine(s) removed"


def test_pool_drain_is_refused_while_a_service_runs(tmp_path: Path) -> None:
    settings, state, dm = pool_world(tmp_path, idle_count=1)
    ready_pool_machine(state, dm, "gmd-p000000f1")
    service = state.lock("pool-service")
    assert service.try_acquire()
    try:
        with pytest.raises(DriverError, match="a pool service is running"):
            pool_command.drain(settings, progress=lambda _: None, dm=dm)  # type: ignore[arg-type]
    finally:
        service.release()
    assert dm.removed == []
