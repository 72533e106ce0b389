"""What a sweep reclaims besides machines: job dirs whose machine is gone (or whose
record is unreadable and old), lock files whose records are gone, and the tombstones
of force-removed machines, retried under the locks of their name. Called by
driver.sweeper, under the sweep lock."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from driver import log, metrics, ssh
from driver.docker_machine import DockerMachine
from driver.errors import DriverError
from driver.state import Lock, PoolPhase
from driver.tombstones import Tombstone

if TYPE_CHECKING:
    from driver.sweeper import Report, Sweep


def sweep_job_dirs(
    pass_: Sweep, dry_run: bool, progress: Callable[[str], None], report: Report
) -> None:
    """Job dirs whose machine is gone, nobody holds, and no stage runs in: they only
    block capacity, even while their runner lives. So do unreadable records, once
    untouched for max_age."""
    state = pass_.state
    for job_id in state.job_ids():
        job_dir = state.job(job_id)
        # A dry run creates no lock file: where there is none, nobody holds it.
        lock = Lock(job_dir.lock_path, create=not dry_run)
        with contextlib.suppress(FileNotFoundError):
            if not lock.try_acquire():
                continue
        # Held through the removal. Not created: that would make an unreadable record's
        # dir look young. Without the file no stage ever ran; one starting now finds the
        # dir gone, or an unreadable record, or a machine that is gone.
        stage = Lock(job_dir.stage_lock_path, make_dir=False, create=False)
        try:
            with contextlib.suppress(FileNotFoundError):
                if not stage.try_acquire():
                    continue  # a stage runs
            try:
                record = job_dir.load()
            except DriverError:
                record = None
            machine = record.machine if record else pass_.settings.machine_name(job_id)
            if pass_.dm.exists(machine):
                continue
            why = "its machine is gone"
            if record is None and job_dir.state_file.exists():
                # Unreadable (a power cut, a newer version): it holds a slot until its dir
                # is older than max_age with no lock and no stage held (both held here).
                age = job_dir.age(time.time())
                if age is None or age <= pass_.settings.sweeper.max_age:
                    progress(f"job state {job_dir.path}: keeping (its record is unreadable)")
                    continue
                report.unreadable += 1
                why = f"its record is unreadable, untouched for {age:.0f}s, over max_age"
            progress(
                f"job state {job_dir.path}: {'would remove' if dry_run else 'removing'} ({why})"
            )
            log.get().info("sweep_job_dir", job_id=job_id, machine=machine, reason=why)
            if not dry_run:
                ssh.stop_master(job_dir)
                job_dir.remove()
        finally:
            stage.release()
            lock.release(remove=not job_dir.exists())


def unused_lock(pass_: Sweep, path: Path) -> bool:
    """Whether the lock file ``path`` guards no record any more: a job's without its
    dir, a pool machine's with no pool record or claim of it. Asked under that lock."""
    name = path.name.removesuffix(".lock")
    state = pass_.state
    if name.startswith("job-") and name[4:].isdigit():
        return not state.job(int(name[4:])).exists()
    if name.startswith("pool-") and name != "pool-service":
        return state.pool_phase(name[5:]) == PoolPhase.GONE
    return False  # host-wide locks (capacity, sweep, pool-service, ...) stay


def sweep_lock_files(pass_: Sweep) -> None:
    """Lock files whose records are gone (a job cleaned up, a pool machine a job took
    over, files of earlier versions): removed under their lock, so a process that opened
    one meanwhile finds it is not the path's file any more and takes the new one."""
    folder = pass_.state.locks
    paths = sorted(folder.glob("job-*.lock")) + sorted(folder.glob("pool-*.lock"))
    for path in paths:
        if not unused_lock(pass_, path):
            continue
        lock = Lock(path, create=False)
        try:
            if not lock.try_acquire():
                continue  # someone is working under it
        except FileNotFoundError:
            continue
        lock.release(remove=unused_lock(pass_, path))


def retry_tombstones(pass_: Sweep, progress: Callable[[str], None], report: Report) -> None:
    """Machines force-removed earlier may still run in the cloud: put each one's entry
    back and ask docker-machine to remove it properly again, under the locks any
    removal of that name takes."""
    for tombstone in pass_.state.tombstones():
        try:
            _retry_tombstone(pass_, tombstone, progress)
        except (DriverError, OSError) as e:
            # One VM the cloud will not let go of (a hung `rm`, a failed copy) never
            # stops the retries of the others, nor the sweep: report it, go on.
            report.tombstone_errors += 1
            progress(f"{tombstone.name}: retrying its removal failed; its tombstone stays: {e}")
            log.get().warning("tombstone_retry_failed", machine=tombstone.name, error=str(e))


def _retry_tombstone(pass_: Sweep, tombstone: Tombstone, progress: Callable[[str], None]) -> None:
    state, dm, name = pass_.state, pass_.dm, tombstone.name
    if not tombstone.entry.is_dir():
        return  # nothing to retry with: it counts until an admin forgets it
    with pass_.holding(name) as held:
        # Under the job lock of that name (or the pool lock): no prepare makes a machine
        # of that name meanwhile. A name a record uses, or an entry of it, is someone's.
        if not held or pass_.name_in_use(name) or dm.exists(name):
            return
        if not _restore(dm, name, tombstone):
            return
        timeout = pass_.settings.cleanup.remove_timeout
        try:
            result = dm.remove(name, force=False, timeout=timeout)
        except BaseException:
            # Timed out: the entry put back must not stay (it would count twice).
            if tombstone.same_vm(dm.entry_dir(name)):
                with contextlib.suppress(DriverError, OSError):
                    dm.remove(name, force=True, timeout=timeout)
            raise
        if result.exit_code == 0 and not dm.exists(name):
            state.graves.exhume(tombstone)
            metrics.count(pass_.settings.state_dir, metrics.MACHINE_REMOVALS, {"result": "clean"})
            progress(f"{name}: removed at last (it had been force-removed)")
            log.get().info("tombstone_removed", machine=name, tombstone=tombstone.key)
            return
        # Force-remove only the entry put back just now, never another of that name.
        if tombstone.same_vm(dm.entry_dir(name)):
            dm.remove(name, force=True, timeout=timeout)
        again = state.graves.bury(name, tombstone.entry, result.output)
        if again.key != tombstone.key:  # one made by 0.1: now kept under its VM's key
            state.graves.exhume(tombstone)
        progress(f"{name}: still cannot be removed; its tombstone stays: {result.output[-200:]}")


def _restore(dm: DockerMachine, name: str, tombstone: Tombstone) -> bool:
    """Put the tombstone's entry back, whole or not at all (False: the name is taken)."""
    target = dm.entry_dir(name)
    making = target.parent.parent / ".gmd-restore" / f"{name}.{os.getpid()}"
    shutil.rmtree(making, ignore_errors=True)
    making.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        shutil.copytree(tombstone.entry, making, symlinks=True)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.rename(making, target)
    except OSError:
        shutil.rmtree(making, ignore_errors=True)
        if target.is_dir():
            return False  # another entry of that name
        raise
    return True
