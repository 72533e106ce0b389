"""Host-wide limits on machines, like docker+machine's `limit` and MaxGrowthRate.

Each job's state dir, and each machine of the warm pool, is one machine the
driver owns (creating, idle, in use or being removed), so counting them under
one lock gives a cap every prepare and the pool service respect. A token
bucket on creates smooths bursts that would hit the cloud's API rate limits
(as the runner's `scale_throttle` does).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from driver.errors import DriverError
from driver.settings import LimitSettings
from driver.state import STATE_FILE, write_private


@dataclass(frozen=True)
class Usage:
    machines: int  # every machine the driver owns on this host
    creating: int  # creates in flight (their prepare still alive)


def usage(state_dir: Path, exclude: Path | None = None) -> Usage:
    machines = creating = 0
    for state_file in (state_dir / "jobs").glob(f"*/{STATE_FILE}"):
        if exclude is not None and state_file.parent == exclude:
            continue
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = {}
        machines += 1
        if state.get("phase") == "creating" and pid_alive(int(state.get("pid") or 0)):
            creating += 1
    # The warm pool's machines (idle or being made) count too.
    pool = state_dir / "pool" / "machines"
    machines += sum(1 for _ in pool.iterdir()) if pool.exists() else 0
    return Usage(machines, creating)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TokenBucket:
    """`rate` creates per minute on average, up to `burst` at once; state in a file."""

    def __init__(self, path: Path, rate: float, burst: int) -> None:
        self.path, self.rate, self.burst = path, rate, burst

    def take(self, now: float) -> float:
        """Take a token; 0 if taken, else the seconds until one is due. Call under a lock."""
        try:
            data = json.loads(self.path.read_text())
            tokens, at = float(data["tokens"]), float(data["at"])
        except (OSError, ValueError, KeyError, TypeError):
            tokens, at = float(self.burst), now
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate / 60)
        wait = 0.0 if tokens >= 1 else (1 - tokens) * 60 / self.rate
        if wait == 0.0:
            tokens -= 1
        write_private(self.path, json.dumps({"tokens": tokens, "at": now}))
        return wait


def claim_slot(
    state_dir: Path,
    job_dir: Path,
    limits: LimitSettings,
    claim: Callable[[], None],
    progress: Callable[[str], None],
) -> None:
    """Wait until this job may create a machine, then `claim()` it under the lock."""
    (state_dir / "locks").mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = FileLock(state_dir / "locks" / "capacity.lock", mode=0o600)
    bucket = TokenBucket(state_dir / "create-rate.json", limits.create_rate, limits.create_burst)
    deadline = time.monotonic() + limits.wait_timeout
    reported = ""
    while True:
        with lock.acquire(timeout=limits.wait_timeout):
            now = usage(state_dir, exclude=job_dir)
            reason = ""
            if limits.max_machines and now.machines >= limits.max_machines:
                reason = f"{now.machines} of {limits.max_machines} machines in use on this host"
            elif limits.max_creating and now.creating >= limits.max_creating:
                reason = f"{now.creating} of {limits.max_creating} creates already in flight"
            elif limits.create_rate and (wait := bucket.take(time.time())) > 0:
                reason = f"create rate limit ({limits.create_rate:g}/min): next in {wait:.0f}s"
            if not reason:
                claim()
                return
        if reason.split(":")[0] != reported:
            progress(f"Waiting for capacity: {reason}")
            reported = reason.split(":")[0]
        if time.monotonic() >= deadline:
            raise DriverError(
                f"no capacity to create a machine within {limits.wait_timeout:g}s: {reason}",
                hint="raise [limits] max_machines / max_creating / create_rate, or "
                "run `gitlab-machine-driver sweep` if machines were leaked",
            )
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())) or 0.1)
