"""The state dir: the one owner of everything the driver keeps on the runner host.

Prepare, run, cleanup, the pool service, the sweeper, `ls`, the limits and
the metrics talk to each other only through this module::

    <state_dir>/                              0700
      jobs/<job id>/                          one job on this host
        state.json                            its JobRecord (machine, address, phase, owner)
        ssh_config, known_hosts, cm           SSH to its machine: config, pinned key, master
        stage.lock                            held (shared) by a running `run`; mtime: last stage
        failed, lost                          markers written by `run`
        image.json                            image mode: its containers and keepers' PIDs
      pool/machines/<name>/                   a warm-pool machine: info.json (PoolRecord), SSH
      pool/ready/<name>                       idle and claimable
      pool/stopped/<name>                     made ready, then stopped: claimable, to start
      pool/claimed/<name>@<job id>            taken by that job's prepare, being handed over
      pool/withdrawn/<name>                   taken out of the ready set, being removed
      pool/status.json                        the pool service's last status
      pool/policy-memory.json                 what the demand policy learned
      pool/image-usage.jsonl                  the images recent jobs ran (image mode)
      pool/claim.sock                         the pool service's claim socket (driver.pool.claims)
      tombstones/<name>@<id>/                 a force-removed VM's docker-machine entry (one per VM)
      locks/                                  flock files: job-<id>, pool-<name>, capacity,
                                              metrics, sweep, pool-service
      metrics.json, create-rate.json          Prometheus figures; the create rate's tokens
      owner.json                              which config's [machine] settings use it
      driver.log                              the admin's JSON log (unless log_file names another)

Every write is atomic (write, then rename) and private (0600). Locks are
``flock``s: they die with their holder, so a killed stage never leaves one
held. A lock file is removed only by its holder, and whoever acquires one
checks that it still has the file the path names, so removing a lock never
lets two processes hold it at once.

The records themselves (JobRecord, PoolRecord, their phases) are in
driver.records, re-exported here; the tombstones in driver.tombstones.

Imported by the per-stage `run`: standard library only, nothing slow.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from driver.errors import DriverError, JobError
from driver.files import rmtree as _rmtree
from driver.files import write_private as write_private
from driver.procs import ancestors as ancestors
from driver.procs import boot_clock as boot_clock
from driver.procs import boot_id as boot_id
from driver.procs import pid_alive as pid_alive
from driver.procs import pid_namespace as pid_namespace
from driver.procs import process_start_time as process_start_time
from driver.records import JOB_TRANSITIONS as JOB_TRANSITIONS
from driver.records import Address as Address
from driver.records import JobPhase as JobPhase
from driver.records import JobRecord as JobRecord
from driver.records import MachineRecord as MachineRecord
from driver.records import PoolPhase as PoolPhase
from driver.records import PoolRecord as PoolRecord
from driver.tombstones import Tombstone, Tombstones

RECORD_FILE = "state.json"
POOL_RECORD_FILE = "info.json"
HOST_ALIAS = "machine"  # the Host in every machine's ssh_config


class LockTimeout(DriverError):
    """A lock was not acquired in time: another process holds it."""


# --- locks ------------------------------------------------------------------------------------


class Lock:
    """An ``flock`` on a file; exclusive, or shared with ``shared=True``."""

    def __init__(
        self, path: Path, *, shared: bool = False, make_dir: bool = True, create: bool = True
    ) -> None:
        self.path = path
        self.shared = shared
        self.make_dir = make_dir  # create the folder it lives in (not a job's: it may be gone)
        self.create = create  # create the file (False: FileNotFoundError if it is missing)
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        """Take it if free, at once."""
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        while True:
            try:
                flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if self.create else 0)
                fd = os.open(self.path, flags, 0o600)
            except FileNotFoundError:
                if not self.make_dir or not self.create:
                    raise
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                continue
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            # The holder before us may have removed the file: then ours is a lock nobody
            # else can see, and we must take the one the path names now.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)

    def acquire(self, timeout: float, what: str = "") -> None:
        """Wait up to ``timeout`` seconds; raise LockTimeout (with a hint) after that."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{what or 'the lock'} ({self.path}) is held by another process "
                    f"for over {timeout:g}s",
                    hint="another stage, the sweeper or the pool service is using it; if this "
                    f"persists, `fuser -v {self.path}` shows who holds it",
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def release(self, *, remove: bool = False) -> None:
        """Let it go; ``remove`` deletes the file first (only the holder may)."""
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None

    @contextlib.contextmanager
    def held(self, timeout: float, what: str = "") -> Iterator[Lock]:
        self.acquire(timeout, what)
        try:
            yield self
        finally:
            self.release()


# --- one machine's files ------------------------------------------------------------------------


class MachineDir:
    """A machine's SSH files: its ssh_config, pinned host key and master socket."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def ssh_config(self) -> Path:
        return self.path / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.path / "known_hosts"

    @property
    def control_path(self) -> Path:
        return self.path / "cm"

    def ssh_argv(self, *options: str) -> list[str]:
        """`ssh` to this machine, with its pinned key and master connection."""
        return ["ssh", "-F", str(self.ssh_config), *options, HOST_ALIAS]

    def create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.mkdir(exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)

    def exists(self) -> bool:
        return self.path.is_dir()


class JobDir(MachineDir):
    """One job's dir; its lock is held by prepare and cleanup, and by a sweeper removing it."""

    def __init__(self, state_dir: Path, job_id: int) -> None:
        super().__init__(state_dir / "jobs" / str(job_id))
        self.job_id = job_id
        self.lock_path = state_dir / "locks" / f"job-{job_id}.lock"

    @classmethod
    def at(cls, path: str) -> JobDir:
        """The job dir the config stage named (``<state_dir>/jobs/<id>``)."""
        where = Path(path)
        if not where.name.isdigit():
            raise JobError(f"{path} is not a job's state dir (<state_dir>/jobs/<job id>)")
        return cls(where.parent.parent, int(where.name))

    @property
    def state_file(self) -> Path:
        return self.path / RECORD_FILE

    @property
    def stage_lock_path(self) -> Path:
        return self.path / "stage.lock"

    @property
    def failed_marker(self) -> Path:
        """Written by `run` when a user stage's script fails: cleanup may keep the machine."""
        return self.path / "failed"

    @property
    def lost_marker(self) -> Path:
        """Written by `run` when the machine stopped answering: later stages fail at once."""
        return self.path / "lost"

    def lock(self) -> Lock:
        return Lock(self.lock_path)

    @contextlib.contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        """Exclusive use of this job's state (prepare and cleanup may overlap on cancel)."""
        lock = self.lock()
        lock.acquire(timeout, f"the lock of job {self.job_id}")
        try:
            yield
        finally:
            # Once the job's state is gone, so is its lock file (removed while held).
            lock.release(remove=not self.path.exists())

    def stage_lock(self) -> Lock:
        """Held shared by each running stage: the sweeper never removes a machine under one."""
        return Lock(self.stage_lock_path, shared=True, make_dir=False)

    def last_stage_age(self, now: float) -> float | None:
        try:
            return now - self.stage_lock_path.stat().st_mtime
        except OSError:
            return None

    def age(self, now: float) -> float | None:
        """Seconds since anything here last changed (the dir, its record, a stage), or
        None if it is gone: how long an unreadable record has lain untouched."""
        times = []
        for path in (self.path, self.state_file, self.stage_lock_path):
            with contextlib.suppress(OSError):
                times.append(path.stat().st_mtime)
        return now - max(times) if times else None

    def save(self, record: JobRecord) -> None:
        write_private(self.state_file, record.to_json())

    def load(self) -> JobRecord:
        try:
            return JobRecord.from_json(self.state_file.read_text())
        except FileNotFoundError:
            raise JobError(
                f"no state for this job in {self.path}: prepare did not run or did not finish",
                hint="the runner runs prepare before any stage; a cleanup has perhaps "
                "already removed the job's machine",
            ) from None
        except (ValueError, TypeError) as e:
            raise JobError(f"the job's state file {self.state_file} is corrupt: {e}") from None

    def remove(self) -> None:
        _rmtree(self.path, ignore_errors=True)


# --- the whole dir ----------------------------------------------------------------------------


IMAGE_USAGE_BYTES = 256 * 1024  # a few thousand jobs' image names


class StateDir:
    """The layout of the state dir, and every read and write of its records."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pool_root = root / "pool"
        self.locks = root / "locks"

    # files of other owners, kept here so the layout is in one place
    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.json"

    @property
    def create_rate_file(self) -> Path:
        return self.root / "create-rate.json"

    @property
    def pool_status_file(self) -> Path:
        return self.pool_root / "status.json"

    @property
    def pool_memory_file(self) -> Path:
        """What the pool's policy learned (driver.pool.control), kept across restarts."""
        return self.pool_root / "policy-memory.json"

    @property
    def owner_file(self) -> Path:
        """driver.state_owner: one config's [machine] settings per state dir."""
        return self.root / "owner.json"

    def lock(self, name: str) -> Lock:
        """A host-wide lock: "capacity", "metrics", "sweep", "pool-service"."""
        return Lock(self.locks / f"{name}.lock")

    # --- jobs

    def job(self, job_id: int) -> JobDir:
        return JobDir(self.root, job_id)

    def job_ids(self) -> list[int]:
        jobs = self.root / "jobs"
        if not jobs.is_dir():
            return []
        return sorted(int(p.name) for p in jobs.iterdir() if p.name.isdigit())

    def job_records(self) -> dict[int, JobRecord | None]:
        """Every job on this host with a record, and that record (None if unreadable).

        A job dir without a record is a prepare that has not claimed a machine yet.
        """
        records: dict[int, JobRecord | None] = {}
        for job_id in self.job_ids():
            job = self.job(job_id)
            try:
                records[job_id] = job.load()
            except JobError:
                if job.state_file.exists():
                    records[job_id] = None
        return records

    def jobs_using(self, machine: str) -> list[int]:
        return [i for i, r in self.job_records().items() if r is not None and r.machine == machine]

    # --- the warm pool

    def pool_dir(self, name: str) -> MachineDir:
        return MachineDir(self.pool_root / "machines" / name)

    def pool_lock(self, name: str) -> Lock:
        """Held by the pool service while it creates the machine, and by whoever removes it."""
        return Lock(self.locks / f"pool-{name}.lock")

    # --- images recent jobs used (image mode): the pool pre-pulls the most used

    @property
    def image_usage_file(self) -> Path:
        return self.pool_root / "image-usage.jsonl"

    def note_images(self, images: list[str], at: float | None = None) -> None:
        """One line per job: when, and the images it ran. Appended by each prepare (one
        O_APPEND write: lines never interleave); past IMAGE_USAGE_BYTES the older half
        goes. A hint for the pool, never a reason to fail a job."""
        line = json.dumps({"at": time.time() if at is None else at, "images": images}) + "\n"
        with contextlib.suppress(OSError, DriverError):
            self.pool_root.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.image_usage_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > IMAGE_USAGE_BYTES:
                lines = self.image_usage_file.read_text().splitlines(keepends=True)
                write_private(self.image_usage_file, "".join(lines[len(lines) // 2 :]))

    def image_usage(self) -> list[tuple[float, list[str]]]:
        """(when, images) of each noted job, oldest first; damaged lines are skipped."""
        try:
            text = self.image_usage_file.read_text()
        except OSError:
            return []
        usage = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                entry = json.loads(line)
                usage.append((float(entry["at"]), [str(i) for i in entry["images"]]))
        return usage

    def _marker(self, kind: str, name: str) -> Path:
        return self.pool_root / kind / name

    def pool_names(self) -> list[str]:
        names: set[str] = set()
        for kind in ("machines", "ready", "stopped", "withdrawn"):
            folder = self.pool_root / kind
            if folder.is_dir():
                names.update(p.name for p in folder.iterdir())
        names.update(name for name, _ in self.claims())
        return sorted(names)

    def save_pool(self, record: PoolRecord) -> None:
        self.pool_dir(record.name).create()
        write_private(self.pool_dir(record.name).path / POOL_RECORD_FILE, record.to_json())

    def load_pool(self, name: str) -> PoolRecord | None:
        try:
            text = (self.pool_dir(name).path / POOL_RECORD_FILE).read_text()
            return PoolRecord.from_json(text)
        except (OSError, ValueError, TypeError):
            return None

    def claims(self) -> list[tuple[str, int]]:
        """(machine, job id) of every claim marker."""
        folder = self.pool_root / "claimed"
        found = []
        if folder.is_dir():
            for path in folder.iterdir():
                name, _, job = path.name.rpartition("@")
                if name and job.isdigit():
                    found.append((name, int(job)))
        return found

    def claimer(self, name: str) -> int | None:
        return next((job for machine, job in self.claims() if machine == name), None)

    def pool_phase(self, name: str) -> PoolPhase:
        if self._marker("ready", name).exists():
            return PoolPhase.READY
        if self._marker("stopped", name).exists():
            return PoolPhase.STOPPED
        if self.claimer(name) is not None:
            return PoolPhase.CLAIMED
        if self._marker("withdrawn", name).exists():
            return PoolPhase.WITHDRAWN
        return PoolPhase.CREATING if self.pool_dir(name).exists() else PoolPhase.GONE

    def ready(self, kind: str = "ready") -> list[str]:
        """Ready (or, kind "stopped", stopped) machines, the longest idle first."""
        folder = self.pool_root / kind
        if not folder.is_dir():
            return []
        markers = []
        for path in folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                markers.append((path.stat().st_mtime, path.name))
        return [name for _, name in sorted(markers)]

    def mark_ready(self, name: str, kind: str = "ready") -> None:
        (self.pool_root / kind).mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self._marker(kind, name), "")

    def claim(self, job_id: int, kind: str = "ready") -> PoolRecord | None:
        """Take a ready (or, kind "stopped", a stopped) machine for ``job_id``, or None.

        The rename from ready/NAME to claimed/NAME@JOB succeeds for one caller only,
        and never after a withdrawal: no machine is both handed out and removed.
        """
        (self.pool_root / "claimed").mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in self.ready(kind):
            claimed = self._marker("claimed", f"{name}@{job_id}")
            try:
                os.rename(self._marker(kind, name), claimed)
            except FileNotFoundError:
                continue  # another job, or a withdrawal, was faster
            record = self.load_pool(name)
            if record is not None:
                return record
            claimed.unlink(missing_ok=True)  # unusable: leave it to the sweeper as unowned
        return None

    def release_claims(self, job_id: int) -> list[str]:
        """Drop this job's claim markers; the machines' names (the job owns them now)."""
        names = []
        for name, job in self.claims():
            if job == job_id:
                self._marker("claimed", f"{name}@{job}").unlink(missing_ok=True)
                names.append(name)
        return names

    def reject_claim(self, name: str, job_id: int) -> None:
        """A claimed machine its job will not take (it did not answer): withdrawn, never
        ready again; the pool service removes it at its next check (or the sweeper, with
        no service), as it removes what it withdrew itself."""
        (self.pool_root / "withdrawn").mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):  # a sweep took it meanwhile
            os.rename(self._marker("claimed", f"{name}@{job_id}"), self._marker("withdrawn", name))

    def withdraw(self, name: str) -> bool:
        """Take a ready or stopped machine out of the pool for good; False if it was just
        claimed (a machine has one marker: one rename wins)."""
        (self.pool_root / "withdrawn").mkdir(parents=True, exist_ok=True, mode=0o700)
        for kind in ("ready", "stopped"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(self._marker(kind, name), self._marker("withdrawn", name))
                return True
        return False

    def withdrawn(self) -> list[str]:
        folder = self.pool_root / "withdrawn"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def mark_withdrawn(self, name: str) -> None:
        """For a machine that was never ready (a failed or abandoned create)."""
        (self.pool_root / "withdrawn").mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self._marker("withdrawn", name), "")

    def forget_pool(self, name: str) -> None:
        """Drop the pool's records of ``name`` (its machine is gone, or a job owns it now)."""
        for kind in ("ready", "stopped", "withdrawn"):
            self._marker(kind, name).unlink(missing_ok=True)
        _rmtree(self.pool_dir(name).path, ignore_errors=True)

    # --- tombstones (driver.tombstones): force-removed machines whose VM may still run

    @property
    def graves(self) -> Tombstones:
        return Tombstones(self.root)

    def tombstones(self) -> list[Tombstone]:
        return self.graves.all()

    # --- what the limits count

    def machines_owned(self, exclude_job: int | None = None) -> tuple[int, int]:
        """(machines this driver owns on the host, creates in flight), for the limits.

        Every job record, every pool machine, and every tombstone (a VM that may
        still run) counts; a create is in flight while its creator lives.
        """
        machines = creating = 0
        for job_id, record in self.job_records().items():
            if job_id == exclude_job:
                continue
            machines += 1
            if record and record.phase == JobPhase.CREATING and pid_alive(record.prepare_pid):
                creating += 1
        for name in self.pool_names():
            phase = self.pool_phase(name)
            if phase == PoolPhase.CLAIMED:
                continue  # being handed over: its job counts it
            machines += 1
            pool = self.load_pool(name)
            if phase == PoolPhase.CREATING and pool and pid_alive(pool.creator_pid):
                creating += 1
        return machines + len(self.tombstones()), creating


def machine_counts(state: StateDir) -> dict[str, int]:
    """Machines by state, for `pool status` and the machines gauge: one vocabulary."""
    counts = {"creating": 0, "idle": 0, "stopped": 0, "claimed": 0, "in_use": 0, "kept": 0}
    counts["removing"] = 0
    for record in state.job_records().values():
        if record is None or record.phase in (JobPhase.CREATING, JobPhase.CREATED):
            counts["creating"] += 1
        elif record.phase == JobPhase.READY:
            counts["in_use"] += 1
        else:
            counts["kept"] += 1
    by_pool_phase = {
        PoolPhase.CREATING: "creating",
        PoolPhase.READY: "idle",
        PoolPhase.STOPPED: "stopped",
        PoolPhase.CLAIMED: "claimed",
        PoolPhase.WITHDRAWN: "removing",
    }
    for name in state.pool_names():
        phase = state.pool_phase(name)
        if phase in by_pool_phase:
            counts[by_pool_phase[phase]] += 1
    counts["orphaned"] = len(state.tombstones())
    return counts
