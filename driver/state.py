"""Per-job state on the runner host: <state_dir>/jobs/<job id>/, mode 0700.

It holds what later stages need: the machine's name and address, the pinned
host key, the SSH config and the master connection's socket. Prepare writes
the machine's name here BEFORE creating it, so a prepare killed half-way
still leaves cleanup and the sweeper enough to remove the machine.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from driver.errors import JobError

STATE_FILE = "state.json"
FAILED_MARKER = "failed"  # written by run when a user stage's script fails


@dataclass
class MachineState:
    job_id: int
    project_id: int
    pipeline_id: int | None
    machine: str
    phase: str = "creating"  # creating -> created -> ready
    host: str = ""
    port: int = 22
    user: str = ""
    key_path: str = ""
    engine_url: str = ""
    kill_grace: float = 10.0
    log_path: str = ""  # the admin's log, for stages that do not read the config file
    pid: int = 0  # the prepare that is creating it; a dead one's create is no longer in flight
    # The runner process that owns the job: once it is gone, so is the job.
    runner_pid: int = 0
    runner_started: int = 0
    kept_until: float = 0.0  # phase "kept": a failed job's machine, kept for inspection
    timings: dict[str, float] = field(default_factory=dict)


class MachineDir:
    """Where a machine's SSH files live: its ssh_config, pinned key and master socket."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def ssh_config(self) -> Path:
        return self.path / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.path / "known_hosts"

    @property
    def control_path(self) -> Path:
        return self.path / "cm"


class JobDir(MachineDir):
    def __init__(self, state_dir: Path, job_id: int) -> None:
        super().__init__(state_dir / "jobs" / str(job_id))
        self.lock_path = state_dir / "locks" / f"job-{job_id}.lock"

    def create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.mkdir(exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)

    def exists(self) -> bool:
        return self.path.is_dir()

    @contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        """Exclusive use of this job's state (prepare and cleanup may overlap on cancel)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = FileLock(self.lock_path, mode=0o600)
        try:
            with lock.acquire(timeout=timeout):
                yield
        except Timeout:
            raise JobError(
                f"another stage of this job holds {self.lock_path} for over {timeout:g}s"
            ) from None
        finally:
            # The lock file is per job: remove it once the job's state is gone.
            if not self.path.exists():
                self.lock_path.unlink(missing_ok=True)

    def save(self, state: MachineState) -> None:
        write_private(self.state_file, json.dumps(asdict(state), indent=2) + "\n")

    def load(self) -> MachineState:
        try:
            data = json.loads(self.state_file.read_text())
            return MachineState(**data)
        except FileNotFoundError:
            raise JobError(
                f"no state for this job in {self.path}: prepare did not run or did not finish",
                hint="the runner runs prepare before any stage; a cleanup has perhaps "
                "already removed the job's machine",
            ) from None
        except (ValueError, TypeError) as e:
            raise JobError(f"the job's state file {self.state_file} is corrupt: {e}") from None

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def process_start_time(pid: int) -> int:
    """The kernel's start time of ``pid`` (0 if none): tells a live process from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return 0


def write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically: readers see the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
