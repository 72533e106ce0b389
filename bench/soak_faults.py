"""Faults the soak injects while its jobs run, each reaching a reclaim path of issue 16.

  rm_hang     the cloud's `rm` hangs, then fails, for the next few removals (a
              cleanup's, a sweep's or the pool's): retries, `rm -f`, tombstones, and
              the sweeps' retries of those, which put the entry back and `rm` again
  create_fail a create fails and leaves its VM: the prepare's own retry removes it
  prepare_killed
              a prepare of the soak's runner is SIGKILLed (mid-create, mid-claim...);
              the runner cleans up and retries prepare at once (the soak's runner has
              no retry delay): the retry removes what is left over under its job lock
              and makes a machine of the same name, while the sweeps (every 2 s) look
              at the half-made record of a dead prepare
  truncated   a zero-length state.json in a job dir untouched for longer than
              max_age, as a power cut leaves it: the sweeps give its slot back
  pool_off    halfway through, the admin switches the pool off: its service is
              killed (no drain) and idle_count set to 0; the sweeps remove the ready
              machines nobody will hand out

The sweeper runs every 2 s meanwhile (bench/soak.py --sweep-every). After the run,
`slots()` is what the state dir still counts: 0 once the last sweep is done.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

from bench.soak_reclaim import WarmPool
from driver.state import StateDir
from testing import docker_machine as double
from testing.world import Env, merge, write_config

TRUNCATED_BASE = 990_000_000  # job ids no runner uses (testing.runner.job: 1e6..9.01e8)


class Faults:
    def __init__(self, world: Env, pool: WarmPool | None, every: float, seed: int) -> None:
        self.world = world
        self.pool = pool
        self.every = every
        self.rng = random.Random(seed)
        self.counts = {
            "rm_hang": 0,
            "create_fail": 0,
            "prepare_killed": 0,
            "truncated": 0,
            "pool_off": 0,
        }
        self.truncated: list[int] = []
        self.killed_jobs: set[int] = set()  # each job's prepare is killed once at most
        self.pool_switched_off = False
        self.pool_off_wanted = False
        self.pool_off_waited = 0.0
        self.ready_when_off = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="faults", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop injecting, and disarm what is still armed: the last sweeps must be able
        to remove everything."""
        self._stop.set()
        self._thread.join()
        double.set_faults(str(self.world.storage), {"rm_fail": None, "create_fail": None})

    def switch_pool_off_soon(self) -> None:
        """Halfway: switched off (by the faults' thread) once machines are ready, so the
        sweeps have ready machines of a pool nobody serves to remove."""
        self.pool_off_wanted = True

    def switch_pool_off(self) -> None:
        """What an admin does: idle_count 0 in the config, the service stopped hard."""
        if self.pool is None or self.pool_switched_off:
            return
        self.pool_switched_off = True
        self.ready_when_off = len(StateDir(self.world.state_dir).ready())
        self.counts["pool_off"] += 1
        settings = merge(self.world.settings, {"pool": {"idle_count": 0}})
        self.world.settings = settings
        fresh = self.world.config_path.with_suffix(".new")
        write_config(fresh, settings)
        os.replace(fresh, self.world.config_path)  # stages read it whole, old or new
        self.pool.kill()

    def _loop(self) -> None:
        kinds = ["rm_hang", "create_fail", "prepare_killed", "truncated"]
        while not self._stop.wait(self.every):
            if self.pool_off_wanted and not self.pool_switched_off:
                self.pool_off_waited += self.every
                if StateDir(self.world.state_dir).ready() or self.pool_off_waited > 120:
                    self.switch_pool_off()
            kind = self.rng.choice(kinds)
            self.counts[kind] += 1
            if kind == "rm_hang":
                hang: dict[str, object] = {"times": 3, "hang": self.rng.uniform(2, 6)}
                double.set_faults(str(self.world.storage), {"rm_fail": hang})
            elif kind == "prepare_killed":
                if not self.kill_a_prepare():
                    self.counts[kind] -= 1
            elif kind == "create_fail":
                # Fewer than a prepare's create attempts (3): its own retry gets past it.
                fault: dict[str, object] = {"times": 2, "leave": "vm"}
                double.set_faults(str(self.world.storage), {"create_fail": fault})
            else:
                self.truncate()

    def kill_a_prepare(self) -> bool:
        """SIGKILL one running prepare of the soak's own runner (not a dead runner's)."""
        config = str(self.world.config_path).encode()
        mine = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            wrapper = any(arg.endswith(b"usage_wrap.py") for arg in argv)  # the driver's, not it
            if (
                config in argv
                and b"prepare" in argv
                and not wrapper
                and _descends_from(int(proc.name))
            ):
                job = _job_of(int(proc.name))
                if job is not None and job not in self.killed_jobs:
                    mine.append((int(proc.name), job))
        for pid, job in self.rng.sample(mine, len(mine)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                self.killed_jobs.add(job)
                return True
        return False

    def truncate(self) -> None:
        job_id = TRUNCATED_BASE + len(self.truncated)
        job = StateDir(self.world.state_dir).job(job_id)
        job.create()
        job.state_file.write_text("")
        max_age = float(self.world.settings.get("sweeper", {}).get("max_age", 86400.0))
        then = time.time() - max_age - 60
        os.utime(job.state_file, (then, then))
        os.utime(job.path, (then, then))
        self.truncated.append(job_id)

    def truncated_left(self) -> int:
        state = StateDir(self.world.state_dir)
        return sum(state.job(job_id).exists() for job_id in self.truncated)

    def slots(self) -> int:
        """Machines the state dir counts against the limits (records, pool, tombstones)."""
        return StateDir(self.world.state_dir).machines_owned()[0]

    def report(self) -> list[str]:
        injected = ", ".join(f"{kind} {n}" for kind, n in self.counts.items())
        return [
            f"faults injected every {self.every:g} s: {injected} "
            f"({self.ready_when_off} machines ready when the pool was switched off)",
            f"truncated records left after the last sweep: {self.truncated_left()} "
            f"of {len(self.truncated)}",
            f"slots still counted after the last sweep: {self.slots()}",
        ]


def _job_of(pid: int) -> int | None:
    """The job id of the prepare ``pid`` (its JOB_RESPONSE_FILE)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for entry in environ:
            if entry.startswith(b"JOB_RESPONSE_FILE="):
                return int(json.loads(Path(entry.split(b"=", 1)[1].decode()).read_text())["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def _descends_from(pid: int, ancestor: int | None = None) -> bool:
    """Whether ``pid`` is a descendant of ``ancestor`` (this process)."""
    ancestor = os.getpid() if ancestor is None else ancestor
    for _ in range(8):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False
