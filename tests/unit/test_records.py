"""The records the state dir keeps (driver.records): their JSON, the phases their
machines go through, and when a record proves its runner gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driver.errors import JobError
from driver.records import Address, JobPhase, JobRecord, PoolRecord
from driver.state import ancestors, boot_id, pid_namespace, process_start_time


def record(job_id: int = 7, **fields: object) -> JobRecord:
    return JobRecord(job_id=job_id, project_id=1, machine=f"gmd-{job_id}", **fields)  # type: ignore[arg-type]


def test_records_round_trip_through_json_and_ignore_unknown_keys() -> None:
    saved = record(phase=JobPhase.READY, address=Address(host="10.0.0.5", port=2222))
    loaded = JobRecord.from_json(saved.to_json())
    assert vars(loaded.address) == vars(saved.address)
    assert loaded.phase == JobPhase.READY
    newer = json.loads(saved.to_json()) | {"a_field_of_a_newer_version": 1}
    assert JobRecord.from_json(json.dumps(newer)).machine == "gmd-7"
    pool = PoolRecord.from_json(PoolRecord(name="gmd-p00000001", created=5.0).to_json())
    assert (pool.name, pool.created) == ("gmd-p00000001", 5.0)
    with pytest.raises(ValueError, match="not a JSON object"):
        JobRecord.from_json("[]")


def test_every_field_of_a_record_survives_its_json() -> None:
    saved = record(
        pipeline_id=3,
        stage="test",
        phase=JobPhase.KEPT,
        address=Address(host="h", port=2, user="u", key_path="k", engine_url="tcp://h:2376"),
        kill_grace=4,
        log_path="/var/log/gmd.log",
        prepare_pid=11,
        owners=[[11, 1234], [1, 5]],
        boot_id="b",
        taken_at=1.5,
        kept_until=2.5,
        timings={"create": 30.0},
        pid_ns=4026531836,
        taken_boot=9.25,
    )
    loaded = JobRecord.from_json(saved.to_json())
    assert {**vars(loaded), "address": vars(loaded.address)} == {
        **vars(saved),
        "address": vars(saved.address),
    }
    pool = PoolRecord(
        name="gmd-p1", address=Address(host="h"), created=1, ready_at=2, creator_pid=3
    )
    again = PoolRecord.from_json(pool.to_json())
    assert {**vars(again), "address": vars(again.address)} == {
        **vars(pool),
        "address": vars(pool.address),
    }


@pytest.mark.parametrize(
    "change",
    [{"port": "22"}, {"owners": [["1", 2]]}, {"timings": {"create": "slow"}}, {"machine": None}],
    ids=["port", "owners", "timings", "machine"],
)
def test_a_field_of_the_wrong_type_is_a_corrupt_record(change: dict[str, object]) -> None:
    data = json.loads(record().to_json())
    if "port" in change:
        data["address"] |= change
    else:
        data |= change
    with pytest.raises(TypeError):
        JobRecord.from_json(json.dumps(data))


@pytest.mark.parametrize(
    ("start", "to", "allowed"),
    [
        (JobPhase.CREATING, JobPhase.CREATED, True),
        (JobPhase.CREATED, JobPhase.READY, True),
        (JobPhase.READY, JobPhase.KEPT, True),
        (JobPhase.CREATING, JobPhase.READY, False),  # never ready without its checks
        (JobPhase.KEPT, JobPhase.READY, False),
        (JobPhase.READY, JobPhase.CREATING, False),
    ],
)
def test_phases_only_move_forward(start: JobPhase, to: JobPhase, allowed: bool) -> None:
    r = record(phase=start)
    if allowed:
        r.advance(to)
        assert r.phase == to
    else:
        with pytest.raises(JobError, match="cannot go from"):
            r.advance(to)


def test_the_runner_is_gone_only_when_every_process_above_prepare_is(tmp_path: Path) -> None:
    mine = ancestors()
    assert mine and mine[0][0] == os.getppid()
    alive = record(
        owners=[[2**22 + 3, 99], *mine], boot_id=boot_id(), pid_ns=pid_namespace()
    )  # a dead wrapper
    assert not alive.runner_gone()
    assert record(owners=[[2**22 + 3, 99]], boot_id=boot_id(), pid_ns=pid_namespace()).runner_gone()
    assert record(owners=mine, boot_id="another-boot").runner_gone()  # the host rebooted
    assert not record(
        owners=[], boot_id=boot_id(), pid_ns=pid_namespace()
    ).runner_gone()  # unknown is no proof
    # A reused pid is not the same process.
    reused = [[os.getppid(), process_start_time(os.getppid()) + 1]]
    assert record(owners=reused, pid_ns=pid_namespace()).runner_gone()


def test_a_runner_that_exited_but_was_not_reaped_yet_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start_time(child.pid)
    assert started
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)  # exited; we (its parent) have not reaped it: a zombie
    assert record(
        owners=[[child.pid, started]], boot_id=boot_id(), pid_ns=pid_namespace()
    ).runner_gone()
    child.wait()


def test_owners_of_another_pid_namespace_are_never_proof(tmp_path: Path) -> None:
    """A runner in the container image, a sweeper on the host (or the reverse): the
    recorded PIDs name unrelated processes here."""
    dead = [[2**22 + 3, 99]]  # no such process here
    other = record(owners=dead, boot_id=boot_id(), pid_ns=pid_namespace() + 1)
    assert not other.runner_gone()
    assert not record(owners=dead, boot_id=boot_id()).runner_gone()  # not recorded: unknown
    assert record(owners=dead, boot_id=boot_id(), pid_ns=pid_namespace()).runner_gone()
    # A reboot is proof in any namespace: the boot id is the kernel's.
    assert record(owners=dead, boot_id="another boot", pid_ns=pid_namespace() + 1).runner_gone()
