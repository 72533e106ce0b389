"""The sweeper: reclaims the machines nobody will use again, and only those.

A machine is removed only with proof, re-checked under its owners' locks at
the moment of removal (prepare, cleanup and the pool service hold those
locks while they work on a machine, and a running stage holds its job's
stage lock). Proof is one of:

- the runner that owned its job is gone: every process above the job's
  prepare has exited, or the host rebooted;
- GitLab reports its job finished (success, failed, canceled, skipped,
  manual) and no stage of it ran for `grace`;
- it was kept for inspection and its time is up;
- it was being created and its creator (a prepare, the pool service) is gone;
- it was claimed from the warm pool by a prepare that died before taking it
  over, or withdrawn from the pool;
- it is idle (or stopped, `[pool] stopped_count`) in a warm pool nobody serves:
  the config turned the pool (or the stopped tier) off, or no pool service has
  run for over `[pool] idle_time`;
- no record on this host names it (the driver records every machine before
  creating it, so nobody can use one without a record);
- a job took it longer ago than `max_age` and GitLab does not say the job runs.

Everything else is unknown, and unknown keeps the machine (and says so):
GitLab answering 401, 403, 404 (a job the token cannot see, not only a gone
one) or not answering; docker-machine listing it as Error (it does so for
parts of every create); a broken entry. A machine proven dead is removed as
cleanup removes one (driver/provision.py: `rm -y` retried, then `rm -f` keeping a
tombstone of its entry), each on its own, so one never stops a sweep. Then
driver/sweeper_leftovers.py: job dirs and lock files nothing uses any more, and
the tombstones' removals retried.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog

from driver import log, provision, ssh
from driver import sweeper_leftovers as leftovers
from driver.docker_machine import DockerMachine
from driver.errors import DriverError
from driver.pool import served
from driver.settings import Settings
from driver.state import JobDir, JobPhase, JobRecord, Lock, PoolPhase, StateDir
from driver.sweeper_gitlab import ALIVE as ALIVE
from driver.sweeper_gitlab import FINISHED as FINISHED
from driver.sweeper_gitlab import UNKNOWN as UNKNOWN
from driver.sweeper_gitlab import UNKNOWN_ALARM as UNKNOWN_ALARM
from driver.sweeper_gitlab import JobStatus as JobStatus
from driver.sweeper_gitlab import Questions


def name_pattern(settings: Settings) -> str:
    """Job machines are <prefix>-<job id>; pool machines <prefix>-p<8 hex>."""
    return f"{re.escape(settings.machine.name_prefix)}-([0-9]+|p[0-9a-f]{{8}})"


def job_of(settings: Settings, name: str) -> int | None:
    """The job a job machine's name is for (None for pool machines)."""
    suffix = name.removeprefix(f"{settings.machine.name_prefix}-")
    return int(suffix) if suffix != name and suffix.isdigit() else None


@dataclass(frozen=True)
class Facts:
    """What is known about one machine at one moment."""

    name: str
    listed: str  # docker-machine ls's state (for `ls`; the sweep never asks: one API call each)
    has_entry: bool  # docker-machine's storage has it
    owner: str  # "job", "claim", "pool" or "none": which record names it
    job_id: int | None = None
    project_id: int | None = None
    phase: str = ""  # the job's or the pool's phase of the machine
    record_ok: bool = True  # the job's record could be read
    busy: bool = False  # an owner's lock is held (a stage, the pool service, a sweep)
    stage_running: bool = False
    runner_gone: bool = False
    runner_unseen: bool = False  # its runner's PIDs are of another PID namespace: unknown
    gitlab: str | None = None  # the job's status at GitLab, "unknown (...)", or None
    taken_age: float | None = None  # seconds since a job took it (created or claimed it)
    last_stage_age: float | None = None
    kept_for: float = 0.0  # seconds it is still kept for inspection
    failed: bool = False  # a stage failed and keep_failed_machines is on: its cleanup keeps it
    pool_off: str = ""  # why no pool service keeps or hands out this pool machine ("": one does)
    host: str = ""


@dataclass(frozen=True)
class Verdict:
    facts: Facts
    remove: bool
    reason: str


def decide(f: Facts, settings: Settings) -> Verdict:
    """Remove only with proof that nobody will use the machine again; else keep."""
    sweeper = settings.sweeper

    def keep(reason: str) -> Verdict:
        return Verdict(f, False, reason)

    def remove(reason: str) -> Verdict:
        return Verdict(f, True, reason)

    if f.busy:
        return keep("its job's stage, the pool service or another sweep is working on it")
    if f.stage_running:
        return keep("a stage of its job is running")
    if f.owner == "pool":
        if f.phase == PoolPhase.READY:
            if f.pool_off:
                return remove(f"idle in a warm pool nobody serves: {f.pool_off}")
            return keep("idle in the warm pool")
        if f.phase == PoolPhase.STOPPED:
            if f.pool_off:
                return remove(f"stopped in a warm pool nobody serves: {f.pool_off}")
            return keep("stopped in the warm pool's stopped tier")
        if f.phase == PoolPhase.WITHDRAWN:
            return remove("withdrawn from the warm pool")
        return remove("its pool create was abandoned (the pool service is gone)")
    if f.owner == "claim":
        return remove(
            f"claimed from the pool by job {f.job_id}, whose prepare died before taking it"
        )
    if f.owner == "none":
        if not f.has_entry:
            return keep("already gone")  # removed since the sweep listed it
        if not f.record_ok:
            return keep("a job record here is unreadable and may name it; kept until max_age")
        return remove("no record on this host names it")
    # A job's machine.
    status = f.gitlab or ""
    if status in ALIVE:
        return keep(f"its job is {status}")
    if not f.record_ok:
        if f.taken_age is not None and f.taken_age > sweeper.max_age:
            return remove(
                f"its job's record is unreadable and it is over max_age ({f.taken_age:.0f}s)"
            )
        return keep("its job's record is unreadable; kept until max_age")
    if f.phase == JobPhase.KEPT:
        if f.kept_for > 0:
            return keep("kept for inspection after its job failed")
        return remove("kept for inspection, and its time is up")
    if f.failed and f.phase == JobPhase.READY and f.kept_for > 0:
        # Its cleanup will keep it; once that time is up, the usual proofs apply.
        return keep("kept for inspection after a stage failed (its cleanup has not run)")
    if f.phase in (JobPhase.CREATING, JobPhase.CREATED):
        return remove("left half-made: its prepare is gone, and no stage ever used it")
    if f.runner_gone and not f.runner_unseen:
        return remove("the runner process that owned its job is gone")
    if status in FINISHED:
        if f.last_stage_age is not None and f.last_stage_age < sweeper.grace:
            return keep(f"its job is {status}, but a stage ran {f.last_stage_age:.0f}s ago")
        return remove(f"its job is {status}")
    if f.taken_age is not None and f.taken_age > sweeper.max_age:
        return remove(
            f"its job took it over max_age ago ({f.taken_age:.0f}s), and GitLab "
            + ("does not know its state" if status else "was not asked")
        )
    if f.runner_unseen:
        status = f"{status or 'GitLab not asked'}; its runner is in another PID namespace"
    return keep(f"its job may still be running ({status or 'GitLab not asked'})")


# --- gathering the facts ---------------------------------------------------------------------


@dataclass
class Sweep:
    """One pass: the answers asked of GitLab are remembered for the pass."""

    dm: DockerMachine
    settings: Settings
    job_status: JobStatus | None
    state: StateDir = field(init=False)
    questions: Questions = field(init=False)  # to GitLab, within one deadline
    listed: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = StateDir(self.settings.state_dir)
        self.questions = Questions(self.job_status)

    def ask(self, project_id: int, job_id: int) -> str | None:
        return self.questions.ask(project_id, job_id)

    def names(self) -> list[str]:
        """Every machine to decide on: docker-machine's entries (read from its storage, so
        the ones `ls` omits count too) and whatever a record here names."""
        names = set(self.dm.entries(name_pattern(self.settings)))
        names.update(r.machine for r in self.state.job_records().values() if r is not None)
        names.update(self.state.pool_names())
        return sorted(names)

    def facts(self, name: str, *, locked: bool = False, now: float | None = None) -> Facts:
        now = time.time() if now is None else now
        state = self.state
        listed, has_entry = self.listed.get(name, ""), self.dm.exists(name)
        records = state.job_records()
        users = [i for i, r in records.items() if r is not None and r.machine == name]
        named_job = job_of(self.settings, name)
        if not users and named_job is not None and named_job in records:
            record = records[named_job]
            if record is None:  # unreadable: it may name this machine
                return Facts(
                    name=name,
                    listed=listed,
                    has_entry=has_entry,
                    owner="job",
                    job_id=named_job,
                    record_ok=False,
                    taken_age=_youngest(self._entry_age(name, now), state.job(named_job).age(now)),
                    busy=not locked and self._held(state.job(named_job).lock()),
                    stage_running=not locked and self._stage_running(state.job(named_job)),
                )
        if users:
            job_id = users[0]
            record = records[job_id]
            assert record is not None
            job_dir = state.job(job_id)
            busy = not locked and self._held(job_dir.lock())
            # Locked: the sweep holds every stage lock of the job itself.
            stage_running = not locked and self._stage_running(job_dir)
            # GitLab is asked only when its answer can decide: a held lock or a running
            # stage keeps the machine whatever it says.
            ask = record.phase == JobPhase.READY and not busy and not stage_running
            return Facts(
                name=name,
                listed=listed,
                has_entry=has_entry,
                owner="job",
                job_id=job_id,
                project_id=record.project_id,
                phase=record.phase,
                busy=busy,
                stage_running=stage_running,
                runner_gone=record.runner_gone(),
                runner_unseen=bool(record.owners) and not record.owners_visible(),
                gitlab=self.ask(record.project_id, job_id) if ask else None,
                taken_age=record.taken_age(now)
                if record.taken_at or record.taken_boot
                else self._entry_age(name, now),
                last_stage_age=job_dir.last_stage_age(now),
                kept_for=max(0.0, self._kept_until(job_dir, record) - now),
                failed=self._failed(job_dir, record),
                host=record.address.host,
            )
        claimer = state.claimer(name)
        if claimer is not None:
            return Facts(
                name=name,
                listed=listed,
                has_entry=has_entry,
                owner="claim",
                job_id=claimer,
                phase=PoolPhase.CLAIMED,
                busy=not locked and self._held(state.job(claimer).lock()),
            )
        phase = state.pool_phase(name)
        if phase != PoolPhase.GONE:
            pool = state.load_pool(name)
            return Facts(
                name=name,
                listed=listed,
                has_entry=has_entry,
                owner="pool",
                phase=phase,
                busy=not locked and self._held(state.pool_lock(name)),
                taken_age=now - pool.created if pool and pool.created else None,
                host=pool.address.host if pool else "",
                pool_off=served.unserved(self.settings, state, now)
                if phase == PoolPhase.READY
                else served.unserved_stopped(self.settings, state, now)
                if phase == PoolPhase.STOPPED
                else "",
            )
        busy = False
        if not locked and named_job is not None:
            busy = self._held(state.job(named_job).lock())
        return Facts(
            name=name,
            listed=listed,
            has_entry=has_entry,
            owner="none",
            job_id=named_job,
            busy=busy,
            # An unreadable record younger than max_age may name it: no proof then.
            record_ok=not self._young_unreadable(records, now),
        )

    def _young_unreadable(self, records: dict[int, JobRecord | None], now: float) -> bool:
        for job_id, record in records.items():
            age = self.state.job(job_id).age(now) if record is None else None
            if age is not None and age <= self.settings.sweeper.max_age:
                return True
        return False

    def _failed(self, job_dir: JobDir, record: JobRecord) -> bool:
        """A stage failed and its cleanup will keep the machine for inspection."""
        keep = self.settings.debug.keep_failed_machines
        return keep and record.phase == JobPhase.READY and job_dir.failed_marker.exists()

    def _kept_until(self, job_dir: JobDir, record: JobRecord) -> float:
        if not self._failed(job_dir, record):
            return record.kept_until
        try:  # as its cleanup will keep it: from when the stage failed
            return job_dir.failed_marker.stat().st_mtime + self.settings.debug.keep_max_age
        except OSError:
            return record.kept_until

    def name_in_use(self, name: str) -> bool:
        """Whether a record here names ``name``, or a job of that name has its dir."""
        state = self.state
        job = job_of(self.settings, name)
        return bool(
            state.jobs_using(name)
            or state.claimer(name) is not None
            or state.pool_phase(name) != PoolPhase.GONE
            or (job is not None and state.job(job).exists())
        )

    def owner_locks(self, name: str) -> list[Lock]:
        """The locks that guard every record that names ``name`` now, or might next."""
        state = self.state
        jobs = set(state.jobs_using(name))
        for job in (job_of(self.settings, name), state.claimer(name)):
            if job is not None:
                jobs.add(job)
        locks = [state.job(job).lock() for job in sorted(jobs)]
        if job_of(self.settings, name) is None:
            locks.append(state.pool_lock(name))
        return locks

    @contextlib.contextmanager
    def holding(self, name: str) -> Iterator[bool]:
        """Hold every owner lock of ``name`` and every stage lock of its jobs, at once or
        not at all (False: someone is working on it), until the removal is over: a stage
        that starts meanwhile waits for its stage lock, and finds the job gone."""
        held: list[Lock] = []
        stages: list[Lock] = []
        try:
            for lock in self.owner_locks(name):
                if not lock.try_acquire():
                    yield False
                    return
                held.append(lock)
            if [lock.path for lock in self.owner_locks(name)] != [lock.path for lock in held]:
                yield False  # a new owner appeared while we took the locks
                return
            for lock in self.stage_locks(held):
                ran = lock.path.exists()
                try:
                    if not lock.try_acquire():
                        yield False  # a stage runs
                        return
                except FileNotFoundError:
                    continue  # no job dir, no stage
                stages.append(lock)
                if not ran:  # made by us, not by a stage: its time is no stage's
                    os.utime(lock.path, (0, 0))
            yield True
        finally:
            for lock in stages:
                lock.release()
            for lock in held:  # the records gone, their lock files go too, under the lock
                lock.release(remove=leftovers.unused_lock(self, lock.path))

    def stage_locks(self, owner_locks: list[Lock]) -> list[Lock]:
        """The stage locks (exclusive) of the jobs whose locks these are."""
        locks = []
        for lock in owner_locks:
            job = lock.path.name.removeprefix("job-").removesuffix(".lock")
            if lock.path.name.startswith("job-") and job.isdigit():
                locks.append(Lock(self.state.job(int(job)).stage_lock_path, make_dir=False))
        return locks

    def _held(self, lock: Lock) -> bool:
        """Whether someone holds ``lock`` right now (a look, not a claim); a lock file
        removed meanwhile is not made again."""
        return served.held(Lock(lock.path, create=False))

    def _stage_running(self, job_dir: JobDir) -> bool:
        # Exclusive: refused while a stage holds it shared.
        probe = Lock(job_dir.stage_lock_path, make_dir=False)
        if not job_dir.stage_lock_path.exists():
            return False
        try:
            if probe.try_acquire():
                probe.release()
                return False
        except FileNotFoundError:
            return False
        return True

    def _entry_age(self, name: str, now: float) -> float | None:
        try:
            return now - self.dm.entry_dir(name).stat().st_mtime
        except OSError:
            return None

    # --- acting

    def withdraw(self, facts: Facts) -> bool:
        """A ready or stopped pool machine is taken out of the pool before its removal;
        False if a job claimed it first (then it is that job's)."""
        if facts.owner != "pool" or facts.phase not in (PoolPhase.READY, PoolPhase.STOPPED):
            return True
        return self.state.withdraw(facts.name)

    def remove(self, facts: Facts, progress: Callable[[str], None]) -> bool:
        """Remove the machine and every record of it; False if it may be orphaned."""
        name, state = facts.name, self.state
        clean = True
        if facts.has_entry or self.dm.exists(name):
            # The removal's own log lines (machine_removed, ...) name the job too.
            with structlog.contextvars.bound_contextvars(job_id=facts.job_id, machine=name):
                clean = provision.destroy(
                    self.dm, name, self.settings, progress, quiet_if_missing=True
                )
        for job_id in state.jobs_using(name):
            job_dir = state.job(job_id)
            ssh.stop_master(job_dir)
            job_dir.remove()
        if facts.owner == "claim" and facts.job_id is not None:
            state.release_claims(facts.job_id)
        ssh.stop_master(state.pool_dir(name))
        state.forget_pool(name)
        return clean


def _youngest(*ages: float | None) -> float | None:
    known = [age for age in ages if age is not None]
    return min(known) if known else None


@dataclass
class Report:
    verdicts: list[Verdict] = field(default_factory=list)
    removed: int = 0
    orphaned: int = 0
    unknown_answers: list[str] = field(default_factory=list)
    tombstones: int = 0
    tombstone_errors: int = 0
    unreadable: int = 0  # job records that could not be read, reclaimed by age

    @property
    def configuration_problem(self) -> str:
        """Many answers from GitLab that prove nothing: a token or URL that cannot see
        the jobs, not that many jobs are gone."""
        refused = any("refused the token" in answer for answer in self.unknown_answers)
        if not refused and len(self.unknown_answers) < UNKNOWN_ALARM:
            return ""
        sample = "; ".join(sorted(set(self.unknown_answers))[:3])
        return (
            f"GitLab could not tell the state of {len(self.unknown_answers)} machines' jobs "
            f"({sample}); their machines are kept"
        )


def sweep(
    dm: DockerMachine,
    settings: Settings,
    job_status: JobStatus | None,
    dry_run: bool,
    progress: Callable[[str], None],
) -> Report:
    """Decide for every machine, remove the ones proven dead (unless dry_run), say why."""
    pass_ = Sweep(dm, settings, job_status)
    report = Report()
    only = pass_.state.lock("sweep")
    # A dry run removes nothing, so it takes no lock: it creates no state, not even locks/.
    if not dry_run:
        only.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not only.try_acquire():
            progress("another sweep is running on this state dir; nothing to do")
            return report
    try:
        for name in pass_.names():
            _sweep_one(pass_, name, dry_run, progress, report)
        leftovers.sweep_job_dirs(pass_, dry_run, progress, report)
        if not dry_run:
            leftovers.sweep_lock_files(pass_)
        if not dry_run:
            leftovers.retry_tombstones(pass_, progress, report)
        report.tombstones = len(pass_.state.tombstones())
    finally:
        only.release()
    report.unknown_answers = pass_.questions.unknown()
    doing = "to remove" if dry_run else "removed"
    progress(
        f"{len(report.verdicts)} machine(s) owned, {report.removed} {doing}"
        + (
            f", {report.orphaned} may be orphaned in the cloud (see warnings)"
            if report.orphaned
            else ""
        )
        + (
            f", {report.tombstones} tombstone(s) of force-removed machines"
            if report.tombstones
            else ""
        )
        + (
            f", {report.unreadable} unreadable job record(s) over max_age"
            if report.unreadable
            else ""
        )
        + (
            f" ({report.tombstone_errors} could not be retried, see above)"
            if report.tombstone_errors
            else ""
        )
    )
    return report


def _sweep_one(
    pass_: Sweep, name: str, dry_run: bool, progress: Callable[[str], None], report: Report
) -> None:
    try:
        verdict = decide(pass_.facts(name), pass_.settings)
        if verdict.remove and not dry_run:
            with pass_.holding(name) as held:
                if not held:
                    verdict = Verdict(verdict.facts, False, "someone started working on it")
                else:
                    # Under the owners' locks: re-read everything, decide again, act.
                    verdict = decide(pass_.facts(name, locked=True), pass_.settings)
                    if verdict.remove and not pass_.withdraw(verdict.facts):
                        verdict = Verdict(verdict.facts, False, "a job claimed it just now")
                    if verdict.remove and not pass_.remove(verdict.facts, progress):
                        report.orphaned += 1
    except (DriverError, OSError) as e:
        # One broken machine or record never stops the sweep: report it, go on.
        verdict = Verdict(
            Facts(name=name, listed="", has_entry=True, owner="?"), False, f"error: {e}"
        )
    report.verdicts.append(verdict)
    report.removed += verdict.remove
    doing = "would remove" if dry_run else "removing"
    progress(f"{name}: {doing if verdict.remove else 'keeping'} ({verdict.reason})")
    log.get().info(
        "sweep_verdict",
        machine=name,
        job_id=verdict.facts.job_id,
        remove=verdict.remove,
        reason=verdict.reason,
    )


def now() -> float:
    return time.time()
