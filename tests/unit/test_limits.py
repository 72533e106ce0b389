import os
import threading
import time
from pathlib import Path

import pytest

from driver import limits
from driver.errors import DriverError
from driver.settings import LimitSettings
from driver.state import JobRecord, PoolRecord, StateDir


def add_job(state_dir: Path, job_id: int, phase: str, pid: int) -> Path:
    job = StateDir(state_dir).job(job_id)
    job.create()
    job.save(
        JobRecord(
            job_id=job_id, project_id=1, machine=f"gmd-{job_id}", phase=phase, prepare_pid=pid
        )
    )
    return job.path


def test_usage_counts_every_machine_and_only_live_creates(tmp_path: Path) -> None:
    add_job(tmp_path, 1, "ready", 0)
    add_job(tmp_path, 2, "creating", os.getpid())
    add_job(tmp_path, 3, "creating", 2**22 + 12345)  # a prepare that died mid-create
    add_job(tmp_path, 4, "creating", os.getpid())
    assert StateDir(tmp_path).machines_owned(exclude_job=4) == (3, 1)


def test_a_prepare_waiting_for_a_slot_is_not_a_machine(tmp_path: Path) -> None:
    StateDir(tmp_path).job(9).create()  # its dir exists, its record does not yet
    assert StateDir(tmp_path).machines_owned() == (0, 0)


def test_the_bucket_allows_a_burst_then_the_rate(tmp_path: Path) -> None:
    bucket = limits.TokenBucket(tmp_path / "b.json", rate=60, burst=2)
    assert bucket.take(now=100.0) == 0
    assert bucket.take(now=100.0) == 0
    assert bucket.take(now=100.0) == pytest.approx(1.0)  # one a second at 60/min
    assert bucket.take(now=101.0) == 0


def test_a_full_host_waits_then_fails_as_a_system_failure(tmp_path: Path) -> None:
    add_job(tmp_path, 1, "ready", 0)
    said: list[str] = []
    with pytest.raises(DriverError, match=r"no capacity .* 1 of 1 machines in use"):
        limits.claim_slot(
            StateDir(tmp_path),
            LimitSettings(max_machines=1, wait_timeout=0.5),
            claim=lambda: None,
            progress=said.append,
        )
    assert said == ["Waiting for capacity: 1 of 1 machines in use on this host"]


def test_a_slot_freed_while_waiting_is_taken(tmp_path: Path) -> None:
    busy = add_job(tmp_path, 1, "ready", 0)
    claimed: list[bool] = []
    timer = threading.Timer(0.5, lambda: (busy / "state.json").unlink())
    timer.start()
    start = time.monotonic()
    limits.claim_slot(
        StateDir(tmp_path),
        LimitSettings(max_machines=1, wait_timeout=10),
        claim=lambda: claimed.append(True),
        progress=lambda _: None,
    )
    assert claimed == [True]
    assert time.monotonic() - start < 5


def test_while_waiting_it_is_served_otherwise_when_instead_says_so(tmp_path: Path) -> None:
    add_job(tmp_path, 1, "ready", 0)
    looks: list[int] = []

    def pool_machine_ready() -> bool:  # ready at the third look
        looks.append(1)
        return len(looks) == 3

    claimed: list[bool] = []
    got_slot = limits.claim_slot(
        StateDir(tmp_path),
        LimitSettings(max_machines=1, wait_timeout=30),
        claim=lambda: claimed.append(True),
        progress=lambda _: None,
        instead=pool_machine_ready,
    )
    assert (got_slot, claimed, len(looks)) == (False, [], 3)


def test_claims_never_exceed_the_cap_under_contention(tmp_path: Path) -> None:
    results: list[str] = []

    def job(i: int) -> None:
        job = StateDir(tmp_path).job(i)
        job.create()

        def claim() -> None:
            job.save(JobRecord(job_id=i, project_id=1, machine=f"gmd-{i}", phase="ready"))

        try:
            limits.claim_slot(
                StateDir(tmp_path),
                LimitSettings(max_machines=3, wait_timeout=1),
                claim,
                lambda _: None,
            )
            results.append("ok")
        except DriverError:
            results.append("full")

    threads = [threading.Thread(target=job, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 3
    assert StateDir(tmp_path).machines_owned()[0] == 3


def test_pool_machines_and_tombstones_count_against_the_cap(tmp_path: Path) -> None:
    add_job(tmp_path, 1, "ready", 0)
    state = StateDir(tmp_path)
    state.save_pool(PoolRecord(name="gmd-p00000001"))
    state.graves.bury("gmd-7", tmp_path / "no-entry", "rm failed")  # may still run in the cloud
    assert state.machines_owned()[0] == 3


def test_the_pool_and_jobs_never_both_take_the_last_slot(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    add_job(tmp_path, 1, "ready", 0)
    barrier = threading.Barrier(2)
    won: list[str] = []

    def pool() -> None:
        barrier.wait()
        if limits.claim_slot(
            state,
            LimitSettings(max_machines=2, wait_timeout=0.3),
            claim=lambda: state.save_pool(PoolRecord(name="gmd-p00000002")),
            progress=lambda _: None,
            wait=False,
        ):
            won.append("pool")

    def claim_for_a_job() -> None:
        add_job(tmp_path, 2, "creating", os.getpid())

    def job() -> None:
        barrier.wait()
        try:
            limits.claim_slot(
                state,
                LimitSettings(max_machines=2, wait_timeout=0.3),
                claim=claim_for_a_job,
                progress=lambda _: None,
            )
            won.append("job")
        except DriverError:
            pass

    threads = [threading.Thread(target=pool), threading.Thread(target=job)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert state.machines_owned()[0] == 2
