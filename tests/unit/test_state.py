"""The state dir's owner: records and their phases, claims, locks, tombstones."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from driver import tombstones
from driver.errors import JobError
from driver.main import error_handler
from driver.state import (
    Address,
    JobDir,
    JobPhase,
    JobRecord,
    Lock,
    LockTimeout,
    PoolPhase,
    PoolRecord,
    StateDir,
    machine_counts,
)


def record(job_id: int = 7, **fields: object) -> JobRecord:
    return JobRecord(job_id=job_id, project_id=1, machine=f"gmd-{job_id}", **fields)  # type: ignore[arg-type]


def test_a_record_round_trips_and_older_records_still_load(tmp_path: Path) -> None:
    job = StateDir(tmp_path).job(7)
    job.create()
    saved = record(address=Address(host="10.0.0.5", port=2222, engine_url="tcp://10.0.0.5:2377"))
    job.save(saved)
    assert stat.S_IMODE(job.state_file.stat().st_mode) == 0o600
    loaded = job.load()
    assert vars(loaded.address) == vars(saved.address)
    assert loaded.phase == JobPhase.CREATING
    # A record from an older version: unknown keys ignored, missing ones defaulted.
    job.state_file.write_text(
        json.dumps(
            {
                "job_id": 7,
                "project_id": 1,
                "machine": "gmd-7",
                "phase": "ready",
                "runner_pid": 12,
                "host": "x",
            }
        )
    )
    assert job.load().phase == JobPhase.READY


def test_a_corrupt_record_is_named(tmp_path: Path) -> None:
    job = StateDir(tmp_path).job(7)
    job.create()
    job.state_file.write_text("{")
    with pytest.raises(JobError, match=r"state\.json is corrupt"):
        job.load()


def ready_machine(state: StateDir, name: str) -> None:
    state.save_pool(PoolRecord(name=name, ready_at=time.time()))
    state.mark_ready(name)


def test_claims_are_atomic_under_contention(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    for i in range(3):
        ready_machine(state, f"gmd-p0000000{i}")
    won: list[str] = []
    barrier = threading.Barrier(16)

    def grab(job_id: int) -> None:
        barrier.wait()
        taken = state.claim(job_id)
        if taken:
            won.append(taken.name)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [f"gmd-p0000000{i}" for i in range(3)]
    assert state.ready() == []
    assert sorted(name for name, _ in state.claims()) == sorted(won)


def test_a_machine_is_either_claimed_or_withdrawn_never_both(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    ready_machine(state, "gmd-pabcdef01")
    assert state.withdraw("gmd-pabcdef01")
    assert state.claim(1) is None
    assert state.pool_phase("gmd-pabcdef01") == PoolPhase.WITHDRAWN
    ready_machine(state, "gmd-pabcdef02")
    assert state.claim(2) is not None
    assert not state.withdraw("gmd-pabcdef02")  # a claimer won the race
    assert state.pool_phase("gmd-pabcdef02") == PoolPhase.CLAIMED
    assert state.claimer("gmd-pabcdef02") == 2
    assert state.release_claims(2) == ["gmd-pabcdef02"]


def test_machine_counts_speak_one_vocabulary(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    for job_id, phase in ((1, JobPhase.CREATING), (2, JobPhase.READY), (3, JobPhase.KEPT)):
        state.job(job_id).create()
        state.job(job_id).save(record(job_id, phase=phase))
    ready_machine(state, "gmd-p00000001")
    state.save_pool(PoolRecord(name="gmd-p00000002"))  # being created
    state.save_pool(PoolRecord(name="gmd-p00000003"))
    state.mark_ready("gmd-p00000003", "stopped")  # the stopped tier's
    counts = machine_counts(state)
    assert counts == {
        "creating": 2,
        "idle": 1,
        "stopped": 1,
        "claimed": 0,
        "in_use": 1,
        "kept": 1,
        "removing": 0,
        "orphaned": 0,
    }


def test_a_tombstone_keeps_the_entry_to_retry_and_counts(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "st")
    entry = tmp_path / "dm" / "machines" / "gmd-4"
    entry.mkdir(parents=True)
    (entry / "config.json").write_text('{"Driver": {"InstanceId": "i-0abc"}}')
    tombstone = state.graves.bury("gmd-4", entry, "InternalError")
    assert [t.name for t in state.tombstones()] == ["gmd-4"]
    assert "i-0abc" in (tombstone.entry / "config.json").read_text()
    assert state.machines_owned() == (1, 0)
    assert machine_counts(state)["orphaned"] == 1
    state.graves.exhume(tombstone)
    assert state.tombstones() == []


def test_each_vm_of_a_name_keeps_its_own_tombstone(tmp_path: Path) -> None:
    """Two VMs of one name that could not be removed: both are remembered, each once."""
    state = StateDir(tmp_path / "st")
    entry = tmp_path / "dm" / "machines" / "gmd-4"
    entry.mkdir(parents=True)
    (entry / "config.json").write_text('{"Driver": {"InstanceId": "i-first"}}')
    first = state.graves.bury("gmd-4", entry, "InternalError")
    assert state.graves.bury("gmd-4", entry, "again") == first  # the same VM: one
    (entry / "config.json").write_text('{"Driver": {"InstanceId": "i-second"}}')
    second = state.graves.bury("gmd-4", entry, "InternalError")
    assert len(state.tombstones()) == 2
    assert state.machines_owned() == (2, 0)
    state.graves.exhume(first)  # the first VM is removed at last
    assert state.tombstones() == [second]
    assert "i-second" in (second.entry / "config.json").read_text()


def test_a_failed_copy_leaves_no_half_made_tombstone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "st")
    entry = tmp_path / "dm" / "machines" / "gmd-4"
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")
    (entry / "key.pem").write_text("k")

    def disk_full(source: Path, target: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tombstones, "copy_file", disk_full)
    with pytest.raises(OSError):
        state.graves.bury("gmd-4", entry, "InternalError")
    assert state.tombstones() == []
    assert os.listdir(tmp_path / "st" / "tombstones") == []


def test_a_lock_not_acquired_in_time_says_who_to_ask(tmp_path: Path) -> None:
    holder = Lock(tmp_path / "locks" / "job-1.lock")
    holder.acquire(1)
    with pytest.raises(LockTimeout, match="held by another process") as raised:
        Lock(holder.path).acquire(0.2, "the lock of job 1")
    assert "fuser" in raised.value.hint
    holder.release()


def test_a_lock_dies_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "job-1.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import time
from pathlib import Path
from driver.state import Lock
Lock(Path({str(path)!r})).acquire(5)
print("held", flush=True)
time.sleep(60)
""",
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"held\n"
    assert not Lock(path).try_acquire()
    holder.kill()
    holder.wait()
    assert Lock(path).try_acquire()


def test_stages_share_their_lock_and_keep_the_sweeper_out(tmp_path: Path) -> None:
    job = StateDir(tmp_path).job(1)
    job.create()
    first, second = job.stage_lock(), job.stage_lock()
    assert first.try_acquire() and second.try_acquire()
    assert not Lock(job.stage_lock_path).try_acquire()  # the sweeper's exclusive look
    first.release()
    second.release()
    assert Lock(job.stage_lock_path).try_acquire()


def test_a_full_disk_is_reported_as_such_not_as_a_bug(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEM_FAILURE_EXIT_CODE", "34")
    with pytest.raises(SystemExit) as ended, error_handler():
        raise OSError(errno.ENOSPC, "No space left on device", "/var/lib/gmd/jobs/1/state.json")
    assert ended.value.code == 34
    err = capsys.readouterr().err
    assert "No space left on device (/var/lib/gmd/jobs/1/state.json)" in err
    assert "the disk is full" in err
    assert "internal error" not in err


def test_a_permission_problem_is_reported_with_the_fix(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEM_FAILURE_EXIT_CODE", "34")
    with pytest.raises(SystemExit), error_handler():
        raise PermissionError(errno.EACCES, "Permission denied", "/var/lib/gmd/locks/capacity.lock")
    err = capsys.readouterr().err
    assert "Permission denied (/var/lib/gmd/locks/capacity.lock)" in err
    assert "owns the state dir" in err


def test_every_state_write_is_synced_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut right after a write leaves the old or the new record, never an empty
    one: the file is synced before its rename, the directory after."""
    synced: list[str] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    job = JobDir(tmp_path / "st", 5)
    job.create()
    job.save(JobRecord(job_id=5, project_id=1, machine="gmd-5"))
    assert synced == ["file", "dir"]
