"""A claim's check that a pool machine is alive: bounded, on the pool's open connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from driver import ssh
from driver.errors import CommandTimedOut
from driver.process import Result
from driver.settings import parse_settings
from driver.stages import claim
from driver.state import MachineDir


@pytest.fixture
def machine(tmp_path: Path) -> MachineDir:
    where = MachineDir(tmp_path / "pool" / "machines" / "gmd-p000000e1")
    where.create()
    return where


def test_a_vm_gone_without_a_word_is_not_waited_for_beyond_the_claim_bound(
    machine: MachineDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = parse_settings({"ssh": {"connect_timeout": 30}})
    machine.control_path.touch()  # the pool's master connection is open
    given: list[float] = []

    def hangs(where: MachineDir, command: str, *, timeout: float, check: bool) -> Result:
        given.append(timeout)
        raise CommandTimedOut(["ssh"], timeout, "")

    monkeypatch.setattr(ssh, "run", hangs)
    assert claim.answers(settings, machine) is False
    assert given == [claim.CLAIM_CHECK_TIMEOUT]


def test_without_an_open_connection_the_check_gets_the_connect_timeout(
    machine: MachineDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = parse_settings({"ssh": {"connect_timeout": 30}})
    given: list[float] = []

    def answers(where: MachineDir, command: str, *, timeout: float, check: bool) -> Result:
        given.append(timeout)
        return Result(["ssh"], 0, "", "")

    monkeypatch.setattr(ssh, "run", answers)
    assert claim.answers(settings, machine) is True
    assert given == [35]


def test_the_master_connection_moves_to_the_job(tmp_path: Path) -> None:
    pool, job = MachineDir(tmp_path / "pool-m"), MachineDir(tmp_path / "job")
    pool.create()
    job.create()
    pool.control_path.write_text("a socket")
    assert ssh.hand_over_master(pool, job) is True
    assert job.control_path.read_text() == "a socket" and not pool.control_path.exists()
    assert ssh.hand_over_master(pool, job) is False  # none left: the job connects itself
