"""Host-wide limits on machines, like docker+machine's `limit` and MaxGrowthRate.

Every job record, warm-pool machine and tombstone is one machine the driver
owns (creating, idle, in use, being removed, or maybe still running in the
cloud), so counting them under one lock gives a cap every prepare and the
pool service respect. A token
bucket on creates smooths bursts that would hit the cloud's API rate limits
(as the runner's `scale_throttle` does).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from driver.errors import DriverError
from driver.settings import LimitSettings
from driver.state import StateDir, write_private


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
    state: StateDir,
    limits: LimitSettings,
    claim: Callable[[], None],
    progress: Callable[[str], None],
    *,
    exclude_job: int | None = None,
    wait: bool = True,
    instead: Callable[[], bool] | None = None,
) -> bool:
    """Wait until one more machine may be created, then `claim()` it under the capacity lock.

    With ``wait=False`` (the pool: jobs come first) give up at once; False then.
    While it waits, ``instead()`` (a job: take a pool machine that became ready) is
    tried before each pause, outside the lock; when it returns True, so is False here.

    Jobs and the warm pool go through here alike, so two creators can never
    both take the last slot; ``claim`` must write the record that makes the
    new machine count (the job's record, the pool's entry) before the lock goes.
    """
    bucket = TokenBucket(state.create_rate_file, limits.create_rate, limits.create_burst)
    deadline = time.monotonic() + limits.wait_timeout
    reported = ""
    while True:
        with state.lock("capacity").held(limits.wait_timeout, "the capacity lock"):
            machines, creating = state.machines_owned(exclude_job=exclude_job)
            reason = ""
            if limits.max_machines and machines >= limits.max_machines:
                reason = f"{machines} of {limits.max_machines} machines in use on this host"
            elif limits.max_creating and creating >= limits.max_creating:
                reason = f"{creating} of {limits.max_creating} creates already in flight"
            elif limits.create_rate and (due := bucket.take(time.time())) > 0:
                reason = f"create rate limit ({limits.create_rate:g}/min): next in {due:.0f}s"
            if not reason:
                claim()
                return True
        if not wait:
            return False
        if instead is not None and instead():
            return False
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


def free_slots(state: StateDir, limits: LimitSettings) -> int | None:
    """How many more machines the cap allows now (None: no cap); a hint, not a claim."""
    if not limits.max_machines:
        return None
    return max(0, limits.max_machines - state.machines_owned()[0])
