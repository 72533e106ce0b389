import json
import os
import threading
import time
from pathlib import Path

import pytest

from driver import limits
from driver.errors import DriverError
from driver.settings import LimitSettings


def add_job(state_dir: Path, job_id: int, phase: str, pid: int) -> Path:
    path = state_dir / "jobs" / str(job_id)
    path.mkdir(parents=True)
    (path / "state.json").write_text(json.dumps({"phase": phase, "pid": pid}))
    return path


def test_usage_counts_every_machine_and_only_live_creates(tmp_path: Path) -> None:
    add_job(tmp_path, 1, "ready", 0)
    add_job(tmp_path, 2, "creating", os.getpid())
    add_job(tmp_path, 3, "creating", 2**22 + 12345)  # a prepare that died mid-create
    own = add_job(tmp_path, 4, "creating", os.getpid())
    assert limits.usage(tmp_path, exclude=own) == limits.Usage(machines=3, creating=1)


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
            tmp_path,
            tmp_path / "jobs" / "2",
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
        tmp_path,
        tmp_path / "jobs" / "2",
        LimitSettings(max_machines=1, wait_timeout=10),
        claim=lambda: claimed.append(True),
        progress=lambda _: None,
    )
    assert claimed == [True]
    assert time.monotonic() - start < 5


def test_claims_never_exceed_the_cap_under_contention(tmp_path: Path) -> None:
    results: list[str] = []

    def job(i: int) -> None:
        job_dir = tmp_path / "jobs" / str(i)
        job_dir.mkdir(parents=True)

        def claim() -> None:
            (job_dir / "state.json").write_text('{"phase": "ready"}')

        try:
            limits.claim_slot(
                tmp_path,
                job_dir,
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
    assert limits.usage(tmp_path).machines == 3


def test_pool_machines_count_against_the_cap(tmp_path: Path) -> None:
    add_job(tmp_path, 1, "ready", 0)
    (tmp_path / "pool" / "machines" / "gmd-p00000001").mkdir(parents=True)
    assert limits.usage(tmp_path).machines == 2
