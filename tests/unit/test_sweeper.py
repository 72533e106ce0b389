"""The sweeper's decision, and its re-check under the owners' locks.

`decide` is pure: a table of the cases and a property test over generated
facts. The races run the real sweep against a real state dir and a fake
docker-machine whose calls are hooks: the interleavings are forced by those
hooks, never by sleeps.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver import sweeper
from driver.commands import sweep as sweep_command
from driver.errors import CommandTimedOut
from driver.process import Result
from driver.settings import Settings, parse_settings
from driver.state import (
    Address,
    JobPhase,
    JobRecord,
    LockTimeout,
    PoolPhase,
    PoolRecord,
    StateDir,
    ancestors,
    boot_clock,
    boot_id,
    pid_namespace,
)

MAX_AGE, GRACE = 3600.0, 600.0


def config(tmp_path: Path) -> Settings:
    return parse_settings(
        {
            "state_dir": str(tmp_path / "st"),
            "machine": {"name_prefix": "gmd"},
            "docker_machine": {"storage_path": str(tmp_path / "dm")},
            "sweeper": {"max_age": MAX_AGE, "grace": GRACE},
            "cleanup": {"timeout": 5, "remove_attempts": 1, "remove_timeout": 5},
        }
    )


def facts(**overrides: object) -> sweeper.Facts:
    base: dict[str, object] = {
        "name": "gmd-7",
        "listed": "Running",
        "has_entry": True,
        "owner": "job",
        "job_id": 7,
        "project_id": 3,
        "phase": JobPhase.READY,
    }
    return sweeper.Facts(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "remove", "reason"),
    [
        (facts(busy=True, runner_gone=True), False, "working on it"),
        (facts(stage_running=True, gitlab="success"), False, "a stage of its job is running"),
        (facts(phase=JobPhase.CREATING), True, "left half-made"),
        (facts(phase=JobPhase.CREATING, busy=True), False, "working on it"),
        (facts(listed="Error"), False, "may still be running"),  # Error during a create
        (facts(runner_gone=True), True, "runner process that owned its job is gone"),
        (facts(runner_gone=True, runner_unseen=True), False, "another PID namespace"),
        (facts(gitlab="canceled"), True, "its job is canceled"),
        (facts(gitlab="success", last_stage_age=5.0), False, "a stage ran 5s ago"),
        (facts(gitlab="running", taken_age=MAX_AGE * 2), False, "its job is running"),
        (facts(gitlab="unknown (GitLab answered 404 for project 3)"), False, "may still be"),
        (facts(gitlab="unknown (404)", taken_age=MAX_AGE + 1), True, "over max_age"),
        (facts(taken_age=MAX_AGE - 1), False, "may still be running"),
        (facts(phase=JobPhase.KEPT, kept_for=100.0), False, "kept for inspection"),
        (facts(phase=JobPhase.KEPT, kept_for=0.0), True, "its time is up"),
        (facts(record_ok=False, taken_age=10.0), False, "unreadable"),
        (facts(owner="pool", phase=PoolPhase.READY, taken_age=MAX_AGE * 9), False, "idle"),
        (facts(owner="pool", phase=PoolPhase.CREATING), True, "abandoned"),
        (facts(owner="pool", phase=PoolPhase.CREATING, busy=True), False, "working on it"),
        (facts(owner="pool", phase=PoolPhase.WITHDRAWN), True, "withdrawn"),
        (facts(owner="claim", phase=PoolPhase.CLAIMED), True, "died before taking it"),
        (facts(owner="claim", phase=PoolPhase.CLAIMED, busy=True), False, "working on it"),
        (facts(owner="none"), True, "no record on this host names it"),
        (facts(owner="none", record_ok=False), False, "unreadable and may name it"),
        (facts(record_ok=False, taken_age=MAX_AGE + 1, stage_running=True), False, "a stage"),
    ],
)
def test_verdicts(tmp_path: Path, given: sweeper.Facts, remove: bool, reason: str) -> None:
    verdict = sweeper.decide(given, config(tmp_path))
    assert verdict.remove == remove, verdict.reason
    assert reason in verdict.reason


def may_still_be_used(f: sweeper.Facts) -> bool:
    """The rule, written independently of `decide`: could a job still use this machine?"""
    if f.busy or f.stage_running:
        return True
    if f.owner == "pool":
        # Claimable. Of a pool nobody serves it is withdrawn before its removal: a claim
        # and a withdrawal are renames of one marker, one wins.
        return f.phase == PoolPhase.READY and not f.pool_off
    if f.owner in ("job", "none") and not f.record_ok:
        return True  # an unreadable record: it may name this machine, and be in use
    if f.owner != "job":
        return False
    if f.phase != JobPhase.READY:
        return False  # creating/created with its prepare gone never reaches a stage; kept
    if f.runner_gone and not f.runner_unseen:  # PIDs of another namespace prove nothing
        return False
    return f.gitlab not in sweeper.FINISHED or (
        f.last_stage_age is not None and f.last_stage_age < GRACE
    )


@given(
    owner=st.sampled_from(["job", "pool", "claim", "none"]),
    has_entry=st.booleans(),
    phase=st.sampled_from([*JobPhase, *PoolPhase]),
    record_ok=st.booleans(),
    busy=st.booleans(),
    stage_running=st.booleans(),
    runner_gone=st.booleans(),
    runner_unseen=st.booleans(),
    gitlab=st.sampled_from(
        [None, *sweeper.FINISHED, *sweeper.ALIVE, "unknown (404)", "unknown (401)", "weird"]
    ),
    taken_age=st.one_of(st.none(), st.floats(0, MAX_AGE * 3)),
    last_stage_age=st.one_of(st.none(), st.floats(0, GRACE * 3)),
    kept_for=st.floats(0, 100),
    failed=st.booleans(),
    listed=st.sampled_from(["Running", "Error", "Stopped", ""]),
    pool_off=st.sampled_from(["", "the warm pool is off"]),
)
def test_no_machine_a_job_may_still_use_is_removed_before_max_age(
    owner: str,
    has_entry: bool,
    phase: str,
    record_ok: bool,
    busy: bool,
    stage_running: bool,
    runner_gone: bool,
    runner_unseen: bool,
    gitlab: str | None,
    taken_age: float | None,
    last_stage_age: float | None,
    kept_for: float,
    failed: bool,
    listed: str,
    pool_off: str,
) -> None:
    f = facts(
        owner=owner,
        has_entry=has_entry,
        phase=phase,
        record_ok=record_ok,
        busy=busy,
        stage_running=stage_running,
        runner_gone=runner_gone,
        runner_unseen=runner_unseen,
        gitlab=gitlab,
        taken_age=taken_age,
        last_stage_age=last_stage_age,
        kept_for=kept_for,
        failed=failed,
        listed=listed,
        pool_off=pool_off,
    )
    verdict = sweeper.decide(f, SETTINGS)
    if verdict.remove and may_still_be_used(f):
        # The only removal of a machine a job may use: past max_age, nobody on it,
        # and GitLab not saying the job runs.
        assert not (busy or stage_running)
        assert taken_age is not None and taken_age > MAX_AGE
        assert gitlab not in sweeper.ALIVE
    if busy or stage_running or (owner == "pool" and phase == PoolPhase.READY and not pool_off):
        assert not verdict.remove
    if owner == "job" and record_ok and failed and phase == JobPhase.READY and kept_for > 0:
        assert not verdict.remove  # its cleanup keeps it for inspection


SETTINGS = parse_settings({"sweeper": {"max_age": MAX_AGE, "grace": GRACE}})


# --- the sweep against real state, with docker-machine's calls as hooks -----------------------


class FakeMachines:
    """docker-machine's store as the sweeper sees it; `on_list` runs inside `ls`."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.removed: list[str] = []
        self.on_entries: Callable[[], None] = lambda: None

    def add(self, name: str) -> None:
        (self.storage / "machines" / name).mkdir(parents=True, exist_ok=True)

    def entry_dir(self, name: str) -> Path:
        return self.storage / "machines" / name

    def entries(self, pattern: str) -> list[str]:
        import re

        self.on_entries()
        folder = self.storage / "machines"
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        return sorted(n for n in names if re.fullmatch(pattern, n))

    def exists(self, name: str) -> bool:
        return self.entry_dir(name).is_dir()

    def list(self, pattern: str) -> dict[str, str]:
        return {name: "Error" for name in self.entries(pattern)}

    def remove(self, name: str, *, force: bool, timeout: float) -> Result:
        import shutil

        shutil.rmtree(self.entry_dir(name), ignore_errors=True)
        self.removed.append(name)
        return Result(["docker-machine", "rm", name], 0, "", "")


def world(tmp_path: Path) -> tuple[Settings, StateDir, FakeMachines]:
    settings = config(tmp_path)
    return settings, StateDir(settings.state_dir), FakeMachines(tmp_path / "dm")


def run_sweep(settings: Settings, dm: FakeMachines) -> list[str]:
    said: list[str] = []
    sweeper.sweep(dm, settings, None, dry_run=False, progress=said.append)  # type: ignore[arg-type]
    return said


def live_job(state: StateDir, job_id: int, machine: str, phase: str = JobPhase.READY) -> None:
    job = state.job(job_id)
    job.create()
    job.save(
        JobRecord(
            job_id=job_id,
            project_id=1,
            machine=machine,
            phase=phase,
            owners=ancestors(),  # this test process's chain: a live runner
            boot_id=boot_id(),
            pid_ns=pid_namespace(),
            taken_at=1e12,
        )
    )


def ready_pool_machine(state: StateDir, dm: FakeMachines, name: str) -> None:
    dm.add(name)
    state.save_pool(PoolRecord(name=name, address=Address(host="10.0.0.9")))
    (state.pool_dir(name).known_hosts).write_text("")
    state.mark_ready(name)


def after_the_look(monkeypatch: pytest.MonkeyPatch, name: str, action: Callable[[], None]) -> None:
    """Run ``action`` right after the sweep's first, unlocked look at ``name``: the
    window in which other processes change what the sweep saw."""
    look = sweeper.Sweep.facts
    done: list[bool] = []

    def facts_then_act(self: sweeper.Sweep, machine: str, **kwargs: Any) -> sweeper.Facts:
        seen = look(self, machine, **kwargs)
        if machine == name and not kwargs.get("locked") and not done:
            done.append(True)
            action()
        return seen

    monkeypatch.setattr(sweeper.Sweep, "facts", facts_then_act)


def test_a_claim_right_after_the_sweeps_look_is_never_destroyed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sweep vs claim: the machine is ready in the pool when the sweep looks; a job
    claims it before the sweep acts. Ready machines are never candidates, and a
    claim wins over a withdrawal or loses, never both."""
    settings, state, dm = world(tmp_path)
    ready_pool_machine(state, dm, "gmd-p0000abcd")

    def job_claims_it() -> None:
        taken = state.claim(42)
        assert taken is not None
        live_job(state, 42, taken.name)
        state.release_claims(42)
        state.forget_pool(taken.name)

    after_the_look(monkeypatch, "gmd-p0000abcd", job_claims_it)
    said = run_sweep(settings, dm)
    assert dm.removed == [], said
    assert state.job(42).load().machine == "gmd-p0000abcd"


def test_a_record_written_after_the_sweeps_look_saves_the_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sweep vs job create: when the sweep looks, no record names gmd-42 (a removal
    candidate); its prepare records it before the sweep takes the locks. The
    re-check under the job's lock sees the record and keeps the machine."""
    settings, state, dm = world(tmp_path)
    dm.add("gmd-42")
    after_the_look(monkeypatch, "gmd-42", lambda: live_job(state, 42, "gmd-42"))
    said = run_sweep(settings, dm)
    assert dm.removed == [], said
    assert any("gmd-42: keeping" in line for line in said), said


def test_a_machine_removed_since_the_sweep_listed_it_is_not_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _state, dm = world(tmp_path)
    dm.add("gmd-43")
    after_the_look(monkeypatch, "gmd-43", lambda: shutil.rmtree(dm.entry_dir("gmd-43")))
    said = run_sweep(settings, dm)
    assert "0 removed" in said[-1], said


def test_a_claim_racing_the_removal_of_a_withdrawn_machine_gets_nothing(tmp_path: Path) -> None:
    settings, state, dm = world(tmp_path)
    ready_pool_machine(state, dm, "gmd-p0000abcd")
    assert state.withdraw("gmd-p0000abcd")  # the pool service takes it out to remove it
    assert state.claim(42) is None
    run_sweep(settings, dm)
    assert dm.removed == ["gmd-p0000abcd"]


def test_a_prepare_creating_its_machine_is_left_alone(tmp_path: Path) -> None:
    """Sweep vs job create: docker-machine lists it as Error; the job's lock says
    a create is in progress."""
    settings, state, dm = world(tmp_path)
    dm.add("gmd-5")
    live_job(state, 5, "gmd-5", phase=JobPhase.CREATING)
    with state.job(5).locked(timeout=1):  # the live prepare
        said = run_sweep(settings, dm)
    assert dm.removed == [], said
    # Once its prepare is gone (lock free, never ready), it is reclaimed.
    run_sweep(settings, dm)
    assert dm.removed == ["gmd-5"]


def test_a_pool_create_in_progress_is_left_alone(tmp_path: Path) -> None:
    settings, state, dm = world(tmp_path)
    dm.add("gmd-p00000001")
    state.save_pool(PoolRecord(name="gmd-p00000001", creator_pid=os.getpid()))
    lock = state.pool_lock("gmd-p00000001")
    assert lock.try_acquire()  # the pool service, creating it
    run_sweep(settings, dm)
    assert dm.removed == []
    lock.release()
    run_sweep(settings, dm)
    assert dm.removed == ["gmd-p00000001"]


def test_a_sweep_racing_cleanup_removes_nothing_twice(tmp_path: Path) -> None:
    """Sweep vs cleanup: cleanup holds the job's lock; the sweep keeps its hands off."""
    settings, state, dm = world(tmp_path)
    dm.add("gmd-6")
    live_job(state, 6, "gmd-6")
    record = state.job(6).load()
    record.owners = [[2**22 + 7, 1]]  # its runner is gone: proof enough
    state.job(6).save(record)
    with state.job(6).locked(timeout=1):
        run_sweep(settings, dm)
        assert dm.removed == []
    run_sweep(settings, dm)
    assert dm.removed == ["gmd-6"]
    assert not state.job(6).exists()


def test_a_running_stage_protects_its_machine(tmp_path: Path) -> None:
    settings, state, dm = world(tmp_path)
    dm.add("gmd-8")
    live_job(state, 8, "gmd-8")
    record = state.job(8).load()
    record.owners = [[2**22 + 7, 1]]
    state.job(8).save(record)
    stage = state.job(8).stage_lock()
    assert stage.try_acquire()  # `run` is in a stage
    run_sweep(settings, dm)
    assert dm.removed == []
    stage.release()


def test_gitlab_is_not_asked_about_a_machine_a_running_stage_keeps(tmp_path: Path) -> None:
    settings, state, dm = world(tmp_path)
    for job_id in (8, 9):
        dm.add(f"gmd-{job_id}")
        live_job(state, job_id, f"gmd-{job_id}")
    stage = state.job(8).stage_lock()
    assert stage.try_acquire()  # job 8's `run` is in a stage
    asked: list[int] = []

    def job_status(project_id: int, job_id: int, seconds: float) -> str:
        asked.append(job_id)
        return "running"

    sweeper.sweep(dm, settings, job_status, dry_run=False, progress=lambda _: None)  # type: ignore[arg-type]
    stage.release()
    assert asked == [9]  # job 9 only: nothing GitLab says could have removed gmd-8
    assert dm.removed == []


def test_two_sweeps_at_once_do_not_both_act(tmp_path: Path) -> None:
    settings, _, dm = world(tmp_path)
    dm.add("gmd-9")  # no record: proof
    inner: list[list[str]] = []
    dm.on_entries = lambda: inner.append(run_sweep(settings, FakeMachines(dm.storage)))
    run_sweep(settings, dm)
    assert "another sweep is running" in inner[0][0]
    assert dm.removed == ["gmd-9"]


def test_a_short_lived_parent_does_not_make_a_live_job_look_dead(tmp_path: Path) -> None:
    """Its prepare ran under `sh -c` (or sudo, a wrapper): that parent is gone, the
    runner above it is not."""
    settings, state, dm = world(tmp_path)
    dm.add("gmd-11")
    live_job(state, 11, "gmd-11")
    record = state.job(11).load()
    record.owners = [[2**22 + 5, 12345], *record.owners]  # the dead wrapper, then us
    state.job(11).save(record)
    run_sweep(settings, dm)
    assert dm.removed == []


def test_a_claim_left_by_a_dead_prepare_is_reclaimed(tmp_path: Path) -> None:
    settings, state, dm = world(tmp_path)
    ready_pool_machine(state, dm, "gmd-p0000beef")
    assert state.claim(77) is not None  # its prepare then died before taking it over
    run_sweep(settings, dm)
    assert dm.removed == ["gmd-p0000beef"]
    assert state.claims() == []


def test_a_job_dir_whose_machine_is_gone_is_reclaimed_while_its_runner_lives(
    tmp_path: Path,
) -> None:
    settings, state, dm = world(tmp_path)
    live_job(state, 12, "gmd-12")  # its machine was deleted behind its back
    run_sweep(settings, dm)
    assert not state.job(12).exists()
    assert state.machines_owned() == (0, 0)


def test_one_broken_record_does_not_stop_the_sweep(tmp_path: Path) -> None:
    settings, state, dm = world(tmp_path)
    dm.add("gmd-13")
    dm.add("gmd-14")
    live_job(state, 14, "gmd-14")
    record = state.job(14).load()
    record.owners = [[2**22 + 7, 1]]  # its runner is gone: proof
    state.job(14).save(record)
    state.job(13).create()
    state.job(13).state_file.write_text("{trunc")
    said = run_sweep(settings, dm)
    assert dm.removed == ["gmd-14"], said
    assert any("gmd-13: keeping" in line and "unreadable" in line for line in said)


def test_lock_waiters_never_share_a_removed_lock(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    first = state.job(1).lock()
    first.acquire(1)
    got: list[str] = []
    waiting = threading.Event()

    def waiter() -> None:
        lock = state.job(1).lock()
        waiting.set()
        lock.acquire(5)
        got.append("waiter")
        other = state.job(1).lock()
        got.append("other too" if other.try_acquire() else "other refused")
        lock.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    waiting.wait()
    first.release(remove=True)  # the holder removes the file while the waiter waits
    thread.join()
    assert got == ["waiter", "other refused"]


def test_the_sweeper_holds_the_stage_lock_through_the_removal(tmp_path: Path) -> None:
    """A stage that starts while the sweeper removes its machine finds the lock held
    (and waits, then finds the job gone), never a machine being removed under it."""
    settings, state, dm = world(tmp_path)
    dm.add("gmd-15")
    live_job(state, 15, "gmd-15")
    record = state.job(15).load()
    record.owners = [[2**22 + 7, 1]]  # its runner is gone: proof
    state.job(15).save(record)
    stage_could_start: list[bool] = []
    remove = dm.remove

    def remove_while_a_stage_tries(name: str, *, force: bool, timeout: float) -> Result:
        stage = state.job(15).stage_lock()
        stage_could_start.append(stage.try_acquire())
        stage.release()
        return remove(name, force=force, timeout=timeout)

    dm.remove = remove_while_a_stage_tries  # type: ignore[method-assign]
    run_sweep(settings, dm)
    assert dm.removed == ["gmd-15"]
    assert stage_could_start == [False]


# --- tombstones: retried under the locks of their name, one per VM ---------------------------


class FailingRemovals(FakeMachines):
    """`rm` fails (the cloud will not let go) for entries whose config.json says so;
    `during_rm` runs inside each `rm` without -f: what other processes do meanwhile."""

    def __init__(self, storage: Path) -> None:
        super().__init__(storage)
        self.during_rm: Callable[[str], None] = lambda name: None
        self.forced: list[str] = []

    def machine(self, name: str, cloud_id: str) -> None:
        self.add(name)
        (self.entry_dir(name) / "config.json").write_text(f'{{"InstanceId": "{cloud_id}"}}')

    def remove(self, name: str, *, force: bool, timeout: float) -> Result:
        if force:
            self.forced.append(name)
            return super().remove(name, force=force, timeout=timeout)
        self.during_rm(name)
        config = self.entry_dir(name) / "config.json"
        if config.exists() and "stuck" in config.read_text():
            return Result(["docker-machine", "rm", name], 1, "", "Error: InternalError")
        return super().remove(name, force=force, timeout=timeout)


def buried(state: StateDir, dm: FailingRemovals, name: str, cloud_id: str) -> None:
    """A VM of ``name`` that could only be force-removed: its tombstone, no entry."""
    dm.machine(name, cloud_id)
    state.graves.bury(name, dm.entry_dir(name), "InternalError")
    shutil.rmtree(dm.entry_dir(name))


def test_a_tombstone_retry_never_removes_a_new_machine_of_that_name(tmp_path: Path) -> None:
    """The runner retries prepare for job 42 while a sweep retries the tombstone of
    gmd-42 and its `rm` hangs: the prepare must not replace the restored entry with
    a new machine that the sweep's `rm -f` then removes."""
    settings, state, _ = world(tmp_path)
    dm = FailingRemovals(tmp_path / "dm")
    buried(state, dm, "gmd-42", "i-old-stuck")

    def retried_prepare(name: str) -> None:
        lock = state.job(42).lock()
        if not lock.try_acquire():
            return  # it waits for the job's lock: it comes after the sweep
        try:  # removes the entry as "left over", creates its own, runs a stage
            shutil.rmtree(dm.entry_dir(name))
            dm.machine(name, "i-new")
            live_job(state, 42, name)
        finally:
            lock.release()

    dm.during_rm = retried_prepare
    run_sweep(settings, dm)
    if state.job(42).exists():
        assert dm.exists("gmd-42"), "the live job's new machine was removed"
    assert len(state.tombstones()) == 1  # the old VM is still remembered


def test_a_tombstone_retry_force_removes_only_the_entry_it_put_back(tmp_path: Path) -> None:
    settings, state, _ = world(tmp_path)
    dm = FailingRemovals(tmp_path / "dm")
    buried(state, dm, "gmd-43", "i-old-stuck")

    def another_entry_appears(name: str) -> None:
        (dm.entry_dir(name) / "config.json").write_text('{"InstanceId": "i-other-stuck"}')

    dm.during_rm = another_entry_appears
    run_sweep(settings, dm)
    assert dm.forced == []
    assert dm.exists("gmd-43")


def test_a_tombstone_retry_skips_a_name_a_record_uses(tmp_path: Path) -> None:
    settings, state, _ = world(tmp_path)
    dm = FailingRemovals(tmp_path / "dm")
    buried(state, dm, "gmd-44", "i-old")
    live_job(state, 44, "gmd-44", phase=JobPhase.CREATING)  # its prepare is about to create
    with state.job(44).locked(timeout=1):
        run_sweep(settings, dm)
    assert dm.removed == [] and not dm.exists("gmd-44")
    assert len(state.tombstones()) == 1


def test_a_second_vm_of_a_name_is_not_forgotten_when_the_first_goes(tmp_path: Path) -> None:
    settings, state, _ = world(tmp_path)
    dm = FailingRemovals(tmp_path / "dm")
    buried(state, dm, "gmd-45", "i-first")  # the cloud lets go of this one
    buried(state, dm, "gmd-45", "i-second-stuck")
    assert state.machines_owned()[0] == 2
    said = run_sweep(settings, dm)
    assert [t.name for t in state.tombstones()] == ["gmd-45"], said
    assert "stuck" in (state.tombstones()[0].entry / "config.json").read_text()
    assert state.machines_owned()[0] == 1


class HangingRemovals(FailingRemovals):
    def remove(self, name: str, *, force: bool, timeout: float) -> Result:
        config = self.entry_dir(name) / "config.json"
        if not force and config.exists() and "hang" in config.read_text():
            raise CommandTimedOut(["docker-machine", "rm", "-y", name], timeout, "")
        return super().remove(name, force=force, timeout=timeout)


def test_a_tombstone_retry_that_raises_does_not_wedge_the_others(tmp_path: Path) -> None:
    settings, state, _ = world(tmp_path)
    dm = HangingRemovals(tmp_path / "dm")
    buried(state, dm, "gmd-46", "i-hang")  # the cloud API hangs for this one
    buried(state, dm, "gmd-47", "i-fine")
    report = sweeper.sweep(dm, settings, None, dry_run=False, progress=lambda _: None)  # type: ignore[arg-type]
    assert [t.name for t in state.tombstones()] == ["gmd-46"]
    assert report.tombstone_errors == 1
    assert not dm.exists("gmd-46")  # the entry put back does not stay to count twice


def test_forget_waits_for_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forget during a retry would let the retry bury the VM again, or leave a
    tombstone with no entry: it waits for the sweep lock."""
    settings, state, _ = world(tmp_path)
    dm = FailingRemovals(tmp_path / "dm")
    buried(state, dm, "gmd-48", "i-old-stuck")
    sweep_lock = state.lock("sweep")
    assert sweep_lock.try_acquire()  # a sweep is retrying it
    monkeypatch.setattr(sweep_command, "FORGET_WAIT", 0.05, raising=False)
    with pytest.raises(LockTimeout):
        sweep_command.forget(settings, ["gmd-48"])
    assert len(state.tombstones()) == 1
    sweep_lock.release()
    sweep_command.forget(settings, ["gmd-48"])
    assert state.tombstones() == []


# --- unreadable records ----------------------------------------------------------------------


def truncated_record(state: StateDir, job_id: int, age: float) -> None:
    """A zero-length state.json, as a power cut leaves it, untouched for ``age`` seconds."""
    job = state.job(job_id)
    job.create()
    job.state_file.write_text("")
    then = time.time() - age
    os.utime(job.state_file, (then, then))
    os.utime(job.path, (then, then))


def test_an_unreadable_record_gives_its_slot_back_after_max_age(tmp_path: Path) -> None:
    settings, state, dm = world(tmp_path)
    truncated_record(state, 20, age=MAX_AGE + 60)
    assert state.machines_owned() == (1, 0)  # with max_machines = 1, every job waits
    said = run_sweep(settings, dm)
    assert not state.job(20).exists(), said
    assert state.machines_owned() == (0, 0)
    assert "1 unreadable job record(s)" in said[-1]


def test_an_unreadable_record_is_kept_while_young_locked_or_in_a_stage(tmp_path: Path) -> None:
    settings, state, dm = world(tmp_path)
    truncated_record(state, 21, age=MAX_AGE - 60)
    truncated_record(state, 22, age=MAX_AGE + 60)
    truncated_record(state, 23, age=MAX_AGE + 60)
    stage = state.job(23).stage_lock()
    assert stage.try_acquire()
    then = time.time() - MAX_AGE - 60  # a stage that has run for longer than max_age
    for path in (state.job(23).stage_lock_path, state.job(23).path):
        os.utime(path, (then, then))
    with state.job(22).locked(timeout=1):
        said = run_sweep(settings, dm)
    stage.release()
    assert state.job(21).exists() and state.job(22).exists() and state.job(23).exists(), said


def test_a_young_unreadable_record_is_no_proof_that_no_record_names_a_machine(
    tmp_path: Path,
) -> None:
    """The truncated record may be the one that names pool machine gmd-p000000aa,
    taken over by its job: "no record names it" is not proven."""
    settings, state, dm = world(tmp_path)
    dm.add("gmd-p000000aa")
    truncated_record(state, 24, age=60)
    said = run_sweep(settings, dm)
    assert dm.removed == [], said
    truncated_record(state, 24, age=MAX_AGE + 60)
    said = run_sweep(settings, dm)
    assert dm.removed == ["gmd-p000000aa"], said


def test_a_failed_job_kept_for_inspection_is_not_swept_before_its_cleanup(
    tmp_path: Path,
) -> None:
    """keep_failed_machines: a stage failed, GitLab says "failed", the stage ended over
    `grace` ago, and the runner has not run cleanup yet (which would mark it kept)."""
    settings = parse_settings(
        {
            **config(tmp_path).model_dump(mode="json", include={"state_dir", "docker_machine"}),
            "machine": {"name_prefix": "gmd"},
            "sweeper": {"max_age": MAX_AGE, "grace": GRACE},
            "debug": {"keep_failed_machines": True, "keep_max_age": 3600},
        }
    )
    state, dm = StateDir(settings.state_dir), FakeMachines(tmp_path / "dm")
    dm.add("gmd-30")
    live_job(state, 30, "gmd-30")
    state.job(30).failed_marker.write_text("build_script")
    state.job(30).stage_lock_path.touch()
    then = time.time() - GRACE - 60
    os.utime(state.job(30).stage_lock_path, (then, then))
    said: list[str] = []
    sweeper.sweep(dm, settings, lambda p, j, s: "failed", dry_run=False, progress=said.append)  # type: ignore[arg-type]
    assert dm.removed == [], said
    assert any("kept for inspection" in line for line in said), said


def test_a_runner_in_another_pid_namespace_is_not_taken_for_dead(tmp_path: Path) -> None:
    settings, state, dm = world(tmp_path)
    dm.add("gmd-32")
    live_job(state, 32, "gmd-32")
    record = state.job(32).load()
    record.owners = [[2**22 + 7, 1]]  # no such process in *this* namespace
    record.pid_ns = pid_namespace() + 1  # the runner's container
    state.job(32).save(record)
    said = run_sweep(settings, dm)
    assert dm.removed == [], said
    assert any("another PID namespace" in line for line in said), said


def test_a_wall_clock_step_gives_no_machine_the_age_proof(tmp_path: Path) -> None:
    """The wall clock jumps forward by more than max_age (NTP after a cloud outage):
    a job that took its machine 10 s ago is 10 s old, whatever time.time() says."""
    settings, state, dm = world(tmp_path)
    dm.add("gmd-33")
    live_job(state, 33, "gmd-33")
    record = state.job(33).load()
    record.owners = []  # unknown owners: only the age could prove anything
    record.taken_at = time.time() - 3 * MAX_AGE  # as the stepped wall clock sees it
    record.taken_boot = boot_clock() - 10
    state.job(33).save(record)
    said = run_sweep(settings, dm)
    assert dm.removed == [], said
    # Across a reboot the age is unknown: no proof either (the reboot itself is).
    record.boot_id, record.taken_boot = "another boot", 5.0
    assert record.taken_age(time.time()) is None


def test_the_sweeps_own_stage_lock_is_not_a_stage_that_ran(tmp_path: Path) -> None:
    """No stage ever ran: the stage lock the sweep makes to hold must not read as a
    stage that ran just now (its job, finished at GitLab, would be kept for grace)."""
    settings, state, dm = world(tmp_path)
    dm.add("gmd-34")
    live_job(state, 34, "gmd-34")
    said: list[str] = []
    sweeper.sweep(dm, settings, lambda p, j, s: "success", dry_run=False, progress=said.append)  # type: ignore[arg-type]
    assert dm.removed == ["gmd-34"], said
