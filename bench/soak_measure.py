"""The soak's measurements: what each driver executable costs, in CPU and memory.

Driver cost per executable kind (config/prepare/run/cleanup), for the jobs of
the soak's own runner. Each executable runs under a tiny wrapper (written into
the world's temp dir and put in front of the driver command through the
runner's *_exec/*_args). The wrapper ignores SIGTERM/SIGINT itself (the
driver, in the same process group, gets them from the runner as usual),
posix_spawns `python -m driver ...` with default signal dispositions, and then:

  - own CPU: when the driver has exited, the wrapper waits with WNOWAIT so
    the driver is still a zombie, and reads /proc/PID/schedstat (nanoseconds
    on CPU of the main thread) and /proc/PID/stat utime+stime (all threads, in
    clock ticks); it takes the larger. Only the driver's Python process is
    counted, not docker-machine or ssh.
  - CPU with children: wait4()'s rusage: the driver plus every child it
    waited for (the docker-machine double, ssh clients; not the detached SSH
    master). The docker-machine here is a Python test double, so this column
    says more about the double than about the driver.
  - own peak RSS: VmHWM from /proc/PID/status, sampled every 20 ms while the
    driver runs (a high-water mark, so only growth in the last 20 ms before
    exit can be missed).
  - tree peak RSS: wait4()'s ru_maxrss, the largest of the driver and the
    children it waited for: an upper bound on the driver's own peak.

The wrapper then exits as the driver did (same code, or the same signal), so
the runner sees no difference. An executable SIGKILLed by the runner kills
the wrapper too; such calls are counted as unmeasured. The wrapper is one
more process above prepare; the sweeper counts the runner gone only when
every one of them is, so it changes nothing for it. --no-measure runs the
driver without the wrapper.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from testing.runner import RunnerEmulator
from testing.world import Env

EXECUTABLES = ("config", "prepare", "run", "cleanup")

WRAPPER = r'''"""Runs one driver executable and appends its resource use as a JSON line."""
import json, os, signal, sys, time

out, kind = sys.argv[1], sys.argv[2]
argv = sys.argv[4:]  # after "--"
TICK = os.sysconf("SC_CLK_TCK")
POLL = 0.02

def hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0

def own_cpu(pid):
    """Seconds on CPU of the (zombie) process itself, without its children."""
    sched = ticks = 0.0
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            sched = int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rfind(b")") + 2 :].split()
        ticks = (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, ValueError, IndexError):
        pass
    return max(sched, ticks)

for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, signal.SIG_IGN)  # the driver, in our process group, decides
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
start = time.monotonic()
pid = os.posix_spawn(
    argv[0], argv, os.environ,
    setsigdef=(signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD),
    setsigmask=(),
)
hwm = hwm_kb(pid)
while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
    signal.sigtimedwait({signal.SIGCHLD}, POLL)
    hwm = max(hwm, hwm_kb(pid))
own = own_cpu(pid)
_, status, ru = os.wait4(pid, 0)
record = {
    "kind": kind,
    "stage": argv[-1] if kind == "run" else None,
    "job": os.environ.get("CUSTOM_ENV_CI_JOB_ID"),
    "pid": os.getpid(),
    "wall": time.monotonic() - start,
    "own_cpu": own,
    "tree_cpu": ru.ru_utime + ru.ru_stime,
    "own_hwm_kb": hwm,
    "tree_maxrss_kb": ru.ru_maxrss,
    "status": os.waitstatus_to_exitcode(status),
}
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.write(fd, (json.dumps(record) + "\n").encode())
os.close(fd)
code = os.waitstatus_to_exitcode(status)
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {-code})
    os.kill(os.getpid(), -code)
sys.exit(code)
'''


def measured_runner(
    world: Env, wrapper: Path | None, out: Path, **overrides: Any
) -> RunnerEmulator:
    """The world's runner; with `wrapper`, every driver executable runs under it."""
    if wrapper is None:
        return world.runner(**overrides)
    plain = world.runner(**overrides).config
    for kind in EXECUTABLES:
        exe = getattr(plain, f"{kind}_exec")
        args = getattr(plain, f"{kind}_args")
        overrides[f"{kind}_exec"] = sys.executable
        overrides[f"{kind}_args"] = ["-I", "-S", str(wrapper), str(out), kind, "--", exe, *args]
    return world.runner(**overrides)


def read_usage(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def usage_table(usage: list[dict[str, Any]], jobs: int, calls: Counter[str]) -> list[str]:
    lines = [
        f"{'executable':<10} {'calls':>6} {'measured':>8} {'CPU s/job':>9} {'+children':>9} "
        f"{'RSS max MB':>10} {'RSS med MB':>10} {'tree max MB':>11}"
    ]
    totals = [0.0, 0.0]
    for kind in EXECUTABLES:
        rows = [u for u in usage if u["kind"] == kind]
        own = sum(u["own_cpu"] for u in rows)
        tree = sum(u["tree_cpu"] for u in rows)
        totals[0] += own
        totals[1] += tree
        hwm = [u["own_hwm_kb"] / 1024 for u in rows] or [0.0]
        tree_rss = max((u["tree_maxrss_kb"] / 1024 for u in rows), default=0.0)
        lines.append(
            f"{kind:<10} {calls[kind]:>6} {len(rows):>8} {own / jobs:>9.3f} {tree / jobs:>9.3f} "
            f"{max(hwm):>10.1f} {statistics.median(hwm):>10.1f} {tree_rss:>11.1f}"
        )
    lines.append(
        f"{'all':<10} {sum(calls.values()):>6} {len(usage):>8} "
        f"{totals[0] / jobs:>9.3f} {totals[1] / jobs:>9.3f}"
    )
    return lines
