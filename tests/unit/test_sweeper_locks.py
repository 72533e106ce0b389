"""Lock files do not only grow: once the records a lock file guards are gone, it is
removed under that lock (a pool machine's, a job's), and a sweep's look at a lock
never makes a removed file again."""

from __future__ import annotations

from pathlib import Path

import pytest

from driver import sweeper
from driver.state import Lock, PoolRecord
from tests.unit.test_sweeper import live_job, run_sweep, world


def lock_files(locks: Path) -> list[str]:
    """Lock files of jobs and pool machines, and the sweep's and capacity's."""
    host_wide = ("sweep.lock", "capacity.lock")
    return sorted(
        p.name
        for p in locks.iterdir()
        if p.name.startswith(("job-", "pool-")) or p.name in host_wide
    )


def test_a_removed_pool_machine_leaves_no_lock_file(tmp_path: Path) -> None:
    settings, state, dm = world(tmp_path)
    dm.add("gmd-p0000aa01")
    state.save_pool(PoolRecord(name="gmd-p0000aa01"))
    state.mark_withdrawn("gmd-p0000aa01")
    said = run_sweep(settings, dm)
    assert dm.removed == ["gmd-p0000aa01"], said
    assert lock_files(state.locks) == ["sweep.lock"]


def test_lock_files_whose_records_are_gone_are_removed_and_others_stay(tmp_path: Path) -> None:
    settings, state, dm = world(tmp_path)
    dm.add("gmd-60")
    live_job(state, 60, "gmd-60")
    dm.add("gmd-p0000bb01")
    state.save_pool(PoolRecord(name="gmd-p0000bb01"))
    creating = state.pool_lock("gmd-p0000bb01")  # the pool service is creating it
    assert creating.try_acquire()
    held = state.job(61).lock()  # a prepare that has not written its dir yet
    assert held.try_acquire()
    for name in ("job-60", "job-62", "job-63", "pool-gmd-p0000bb02"):
        made = Lock(state.locks / f"{name}.lock")
        assert made.try_acquire()
        made.release()  # made, then let go
    (state.locks / "capacity.lock").touch()
    try:
        run_sweep(settings, dm)
    finally:
        held.release()
        creating.release()
    assert lock_files(state.locks) == [
        "capacity.lock",  # host-wide: stays
        "job-60.lock",  # its job is live
        "job-61.lock",  # held
        "pool-gmd-p0000bb01.lock",  # being created
        "sweep.lock",
    ]


def test_a_look_at_a_lock_file_removed_meanwhile_does_not_make_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look saw the file; its holder removed it (its job is over) before the look
    opened it: opening it must not create it again."""
    settings, state, dm = world(tmp_path)
    gone = state.job(64).lock_path
    look = sweeper.Sweep(dm, settings, job_status=None)  # type: ignore[arg-type]
    seen = Path.exists

    def seen_before_its_removal(self: Path) -> bool:
        return True if self == gone else seen(self)

    monkeypatch.setattr(Path, "exists", seen_before_its_removal)
    assert not look._held(state.job(64).lock())
    monkeypatch.undo()
    assert not gone.exists()
