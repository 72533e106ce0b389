"""Whether a warm pool is served: whose ready machines a job may still claim, and
the removal of ready machines nobody will hand out (`pool drain`, the sweeper).

Ready machines (and stopped ones, `[pool] stopped_count`) are kept for the jobs that
claim them, and refreshed by the pool service. With the pool turned off
(`idle_count = 0`, no demand policy), or no service for longer than `[pool]
idle_time` (stopped without a drain, or dead), they only hold slots: the sweeper
removes them, each withdrawn first (a claim and a withdrawal are renames of one
marker: one wins, never both).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from driver.settings import Settings
from driver.state import Lock, StateDir

SERVICE_LOCK = "pool-service"


def held(lock: Lock) -> bool:
    """Whether someone holds ``lock`` right now (a look, for an instant, not a claim)."""
    if not lock.path.exists():
        return False
    try:
        if lock.try_acquire():
            lock.release()
            return False
    except FileNotFoundError:
        return False
    return True


def service_running(state: StateDir) -> bool:
    return held(state.lock(SERVICE_LOCK))


def last_served(state: StateDir) -> float | None:
    """When a pool service was last seen: its status (written every check) or its lock
    (touched when it starts and when it stops)."""
    times = []
    for path in (state.locks / f"{SERVICE_LOCK}.lock", state.pool_status_file):
        with contextlib.suppress(OSError):
            times.append(Path(path).stat().st_mtime)
    return max(times) if times else None


def unserved(settings: Settings, state: StateDir, now: float) -> str:
    """Why no service will keep or hand out the pool's ready machines ("": one does)."""
    pool = settings.pool
    if not pool.enabled:
        return "the warm pool is off ([pool] idle_count = 0 and no demand policy)"
    if service_running(state):
        return ""
    seen = last_served(state)
    if seen is None or now - seen > pool.idle_time:
        return f"no pool service has run for over [pool] idle_time ({pool.idle_time:g}s)"
    return ""


def unserved_stopped(settings: Settings, state: StateDir, now: float) -> str:
    """As ``unserved``, for a machine of the stopped tier: kept only while one is wanted."""
    if settings.pool.stopped_count == 0:
        return "the stopped tier is off ([pool] stopped_count = 0)"
    return unserved(settings, state, now)


def touch(lock: Lock) -> None:
    """Mark when the service held its lock last (before it lets go)."""
    with contextlib.suppress(OSError):
        os.utime(lock.path)
