"""The stopped tier ([pool] stopped_count) and the sweeper: a stopped machine the
service keeps is never removed; one nobody serves (the tier turned off, or no
service for longer than idle_time) is removed as an unserved ready one is."""

from __future__ import annotations

from pathlib import Path

from driver.commands import pool as pool_command
from driver.settings import Settings
from driver.state import Address, PoolPhase, PoolRecord, StateDir, machine_counts
from tests.unit.test_sweeper import FakeMachines, run_sweep
from tests.unit.test_sweeper_pool import IDLE_TIME, pool_world, service_running, service_seen


def stopped_world(tmp_path: Path, stopped_count: int) -> tuple[Settings, StateDir, FakeMachines]:
    return pool_world(tmp_path, 1, stopped_count=stopped_count)


def stopped_pool_machine(state: StateDir, dm: FakeMachines, name: str) -> None:
    dm.add(name)
    state.save_pool(PoolRecord(name=name, address=Address(host="10.0.0.9"), ready_at=1.0))
    state.pool_dir(name).known_hosts.write_text("")
    state.mark_ready(name, "stopped")


def test_a_stopped_machine_the_service_keeps_survives_a_sweep(tmp_path: Path) -> None:
    settings, state, dm = stopped_world(tmp_path, stopped_count=1)
    stopped_pool_machine(state, dm, "gmd-p000000s1")
    service_seen(state, ago=IDLE_TIME * 5)  # a service in a long tick still holds its lock
    with service_running(state):
        said = run_sweep(settings, dm)
    assert dm.removed == [], said
    assert any("keeping (stopped in the warm pool's stopped tier)" in s for s in said), said
    assert state.pool_phase("gmd-p000000s1") == PoolPhase.STOPPED
    assert machine_counts(state)["stopped"] == 1
    assert state.machines_owned() == (1, 0)  # counted against [limits]


def test_a_stopped_tier_turned_off_gives_its_machines_back(tmp_path: Path) -> None:
    settings, state, dm = stopped_world(tmp_path, stopped_count=0)
    stopped_pool_machine(state, dm, "gmd-p000000s2")
    service_seen(state, ago=5)
    said = run_sweep(settings, dm)
    assert dm.removed == ["gmd-p000000s2"], said
    assert any("the stopped tier is off ([pool] stopped_count = 0)" in s for s in said), said
    assert state.pool_names() == [] and state.machines_owned() == (0, 0)


def test_stopped_machines_without_a_service_for_longer_than_idle_time_are_reclaimed(
    tmp_path: Path,
) -> None:
    settings, state, dm = stopped_world(tmp_path, stopped_count=1)
    stopped_pool_machine(state, dm, "gmd-p000000s3")
    service_seen(state, ago=IDLE_TIME - 60)
    run_sweep(settings, dm)
    assert dm.removed == []
    service_seen(state, ago=IDLE_TIME + 60)
    said = run_sweep(settings, dm)
    assert dm.removed == ["gmd-p000000s3"], said
    assert any(
        "stopped in a warm pool nobody serves: no pool service has run" in s for s in said
    ), said


def test_pool_drain_removes_the_stopped_machines_too(tmp_path: Path) -> None:
    settings, state, dm = stopped_world(tmp_path, stopped_count=1)
    stopped_pool_machine(state, dm, "gmd-p000000s4")
    said: list[str] = []
    assert pool_command.drain(settings, progress=said.append, dm=dm) == 0  # type: ignore[arg-type]
    assert dm.removed == ["gmd-p000000s4"]
    assert said[-1] == "pool: 1 of 1 ready or stopped machine(s) removed"


def test_a_claim_and_a_withdrawal_of_one_stopped_machine_one_wins(tmp_path: Path) -> None:
    _, state, dm = stopped_world(tmp_path, stopped_count=1)
    stopped_pool_machine(state, dm, "gmd-p000000s5")
    assert state.claim(7) is None  # a ready claim never takes a stopped machine
    taken = state.claim(7, "stopped")
    assert taken is not None and taken.name == "gmd-p000000s5"
    assert state.withdraw("gmd-p000000s5") is False
    assert state.claim(8, "stopped") is None
