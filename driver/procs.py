"""Who owns a job: the runner process by its process chain, the boot, the PID namespace.

Imported by the per-stage `run` (through driver.state): standard library only.
"""

from __future__ import annotations

import os
import time


def process_start_time(pid: int) -> int:
    """The kernel's start time of ``pid``, 0 if it is gone: tells a live process from a
    reused pid. A zombie (exited, not yet reaped by its parent) is gone too."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return 0 if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return 0


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def boot_clock() -> float:
    """Seconds since boot, suspend included (CLOCK_BOOTTIME): it never jumps with the wall
    clock. Comparable only within one boot (see boot_id)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def pid_namespace() -> int:
    """The inode of our PID namespace (0 if unknown): PIDs of another namespace (a runner
    in a container, a sweeper on the host) name unrelated processes here."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def ancestors(pid: int | None = None) -> list[list[int]]:
    """[pid, start time] of every ancestor of ``pid`` (default: us), init excluded.

    The runner is one of them, wherever it is in the chain: a short-lived wrapper
    (`sudo`, `bash -c`, a script) may die while the runner lives on, so the job
    counts as gone only when every one of them is gone.
    """
    chain: list[list[int]] = []
    current = _parent_of(pid or os.getpid())
    while current > 1 and len(chain) < 64:
        chain.append([current, process_start_time(current)])
        current = _parent_of(current)
    return chain


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
