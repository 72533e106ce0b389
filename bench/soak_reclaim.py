"""The soak's reclaiming side (issue 8): a sweeper on a timer, a warm pool, runners
that die, and the figure "live jobs whose machine was removed".

The sweeper runs as an admin's timer runs it: `gitlab-machine-driver sweep`, its
own process, every --sweep-every seconds, never two at once (a timer does not
start a service that still runs). Every output line is stamped with the moment
it was read. A machine in a "<machine>: removing (<reason>)" line was removed
after the sweep's previous verdict line and before that line; when docker-machine
really removed it, destroy's "Removed machine <name> in Ns" line narrows the
moment of harm to those N seconds (and its records went right after).

A job is live from the start of a prepare attempt until that attempt's cleanup
starts; a dead runner's job until the runner was killed. What an attempt owns:
the job's own machine <prefix>-<job id>, and every pool machine its prepare
names ("Took machine X from the warm pool", "Pool machine X did not answer").
A removal whose moment meets a live attempt owning its machine is a live job's
machine removed: the worst thing the driver can do.

A dead runner: a separate runner process (the runner emulation's prepare_only,
as tests/integration/test_reclaim.py does) started with `setsid -f`, so that its
parent is init as a service's is; it prepares one job, reports, and is SIGKILLed.
Every process above its job's prepare is then gone, which is the sweeper's proof.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from testing.world import Env, driver_argv

REMOVING = re.compile(r"\] (?P<machine>\S+): removing \((?P<reason>.*)\)$")
# The sweeper also removes job state dirs whose machine is gone: a live job's would be harm.
JOB_DIR_REMOVING = re.compile(
    r"\] job state \S*/jobs/(?P<job>[0-9]+): removing \((?P<reason>.*)\)$"
)
VERDICT = re.compile(r"\] (?P<what>\S+|job state \S+): (?P<verb>removing|keeping|would remove) \(")
REMOVED = re.compile(r"Removed machine (?P<machine>\S+) in (?P<seconds>[0-9.]+)s")
# A removal of an existing machine that docker-machine refused (then forced).
RM_FAILED = re.compile(r"Removing (?P<machine>\S+) failed \(attempt|machine (?P<m>\S+) could not")
# What a prepare says about pool machines it took over (they are the job's from then on).
POOL_MACHINE = re.compile(
    r"Took machine (?P<a>\S+) from the warm pool|Pool machine (?P<b>\S+) did not answer"
)
RUNNER_GONE = "the runner process that owned its job is gone"
SWEEP_TIMEOUT = 180.0
RUNNER_REPORT_TIMEOUT = 300.0
# Timer.seconds is rounded to 0.01 s. A line is stamped when read, a moment after it was
# printed: that places a removal later than it was by that moment, never earlier.
SLACK = 0.02


# ------------------------------------------------------------------ ownership


@dataclass(frozen=True)
class Ownership:
    """One prepare attempt's hold on its machines, while its job was live."""

    job_id: int
    kind: str
    attempt: int
    machines: frozenset[str]
    start: float  # time.monotonic() when its prepare started
    end: float  # when its cleanup started (a dead runner's: when it was killed)


def machines_named(prefix: str, job_id: int, prepare_stdout: str) -> frozenset[str]:
    """The job's own machine and the pool machines its prepare took."""
    pooled = {m.group("a") or m.group("b") for m in POOL_MACHINE.finditer(prepare_stdout)}
    return frozenset({f"{prefix}-{job_id}", *pooled})


def ownerships(
    prefix: str,
    job_id: int,
    kind: str,
    records: Iterable[tuple[str, int, float, str]],
    last_end: float,
) -> list[Ownership]:
    """Per attempt, from (kind, attempt, started, stdout) of each executable call.

    `started` is on time.monotonic()'s clock; an attempt without a cleanup stays
    live until `last_end`.
    """
    prepares: dict[int, tuple[float, str]] = {}
    cleanups: dict[int, float] = {}
    for exe, attempt, started, stdout in records:
        if exe == "prepare":
            prepares[attempt] = (started, stdout)
        elif exe == "cleanup":
            cleanups.setdefault(attempt, started)
    return [
        Ownership(
            job_id=job_id,
            kind=kind,
            attempt=attempt,
            machines=machines_named(prefix, job_id, stdout),
            start=started,
            end=cleanups.get(attempt, last_end),
        )
        for attempt, (started, stdout) in sorted(prepares.items())
    ]


# --------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class Removal:
    machine: str  # "" for a job state dir
    reason: str
    start: float  # the earliest moment the machine or its records may have gone
    end: float  # when the sweep said "removing"
    by: str  # "timer", "final" or "pool start-up"
    job_dir: int | None = None  # the job whose state dir was removed
    rm: bool = False  # docker-machine removed a machine that existed (else: records only)

    @property
    def what(self) -> str:
        return self.machine or f"the state dir of job {self.job_dir}"


def removals(lines: list[tuple[float, str]], started: float, by: str) -> list[Removal]:
    """The removals one sweep printed, each with the moment it happened in."""
    found = []
    last_verdict = started
    removed: dict[str, float] = {}  # machine -> when its `rm` may have started
    for at, line in lines:
        rm = REMOVED.search(line)
        if rm:  # an earlier, failed attempt stays the earliest moment
            began = at - float(rm.group("seconds")) - SLACK
            removed[rm.group("machine")] = min(began, removed.get(rm.group("machine"), began))
        failed = RM_FAILED.search(line)
        if failed:  # attempts of unknown length: from the previous verdict on
            removed[failed.group("machine") or failed.group("m")] = 0.0
        verdict = REMOVING.search(line)
        if verdict:
            machine = verdict.group("machine")
            rm_start = removed.pop(machine, None)
            start = last_verdict if rm_start is None else max(last_verdict, rm_start)
            reason = verdict.group("reason")
            found.append(Removal(machine, reason, start, at, by, rm=rm_start is not None))
        job_dir = JOB_DIR_REMOVING.search(line)
        if job_dir:
            job_id = int(job_dir.group("job"))
            found.append(Removal("", job_dir.group("reason"), last_verdict, at, by, job_id))
        if VERDICT.search(line):
            last_verdict = at
    return found


def live_verdicts(runs: list[SweepRun], owned: list[Ownership]) -> Counter[str]:
    """How often a sweep judged a machine while a job owning it was live, by verdict:
    how much of the sweeper's work the soak put to the test."""
    by_machine: dict[str, list[Ownership]] = {}
    for o in owned:
        for machine in o.machines:
            by_machine.setdefault(machine, []).append(o)
    verbs: Counter[str] = Counter()
    for run in runs:
        for at, line in run.lines:
            verdict = VERDICT.search(line)
            if verdict and any(o.start < at < o.end for o in by_machine.get(verdict["what"], [])):
                verbs[verdict["verb"]] += 1
    return verbs


def harm(removed: list[Removal], owned: list[Ownership]) -> list[tuple[Removal, Ownership, bool]]:
    """Every removal that met a live attempt owning its machine, and whether that is
    certain. A machine's `rm` is timed to its N seconds: any overlap is certain. A
    removal of records only (the machine was gone already: a job that just cleaned
    up, say) is known to lie between two verdict lines, so it is certain only if the
    job was live all that time; else it is reported as uncertain, not counted."""
    by_machine: dict[str, list[Ownership]] = {}
    for o in owned:
        for machine in o.machines:
            by_machine.setdefault(machine, []).append(o)
    by_job: dict[int, list[Ownership]] = {}
    for o in owned:
        by_job.setdefault(o.job_id, []).append(o)
    return [
        (r, o, r.rm or (o.start <= r.start and r.end <= o.end))
        for r in removed
        for o in (by_machine.get(r.machine, []) if r.job_dir is None else by_job.get(r.job_dir, []))
        if r.start < o.end and o.start < r.end
    ]


def stamped_lines(stream: IO[str]) -> Iterator[tuple[float, str]]:
    for line in stream:
        yield time.monotonic(), line.rstrip("\n")


@dataclass
class SweepRun:
    by: str
    started: float
    seconds: float
    exit_code: int
    lines: list[tuple[float, str]]

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


class SweepTimer:
    """`gitlab-machine-driver sweep` every `every` seconds, as an admin's timer runs it."""

    def __init__(self, world: Env, every: float) -> None:
        self.world = world
        self.every = every
        self.runs: list[SweepRun] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweep-timer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.sweep("timer")
            self._stop.wait(max(0.0, began + self.every - time.monotonic()))

    def sweep(self, by: str) -> SweepRun:
        started = time.monotonic()
        proc = subprocess.Popen(
            [*driver_argv(), "--config", str(self.world.config_path), "sweep"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.world.process_env(),
            text=True,
        )
        watchdog = threading.Timer(SWEEP_TIMEOUT, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            lines = list(stamped_lines(proc.stdout))
            code = proc.wait()
        finally:
            watchdog.cancel()
        run = SweepRun(by, started, time.monotonic() - started, code, lines)
        self.runs.append(run)
        return run

    def removals(self) -> list[Removal]:
        return [r for run in self.runs for r in removals(run.lines, run.started, run.by)]

    def failed(self) -> list[SweepRun]:
        return [run for run in self.runs if run.exit_code != 0]


# --------------------------------------------------------------- the warm pool


POOL_SETTINGS: dict[str, Any] = {
    "check_interval": 0.5,
    "health_interval": 5,
    "idle_time": 600,
    "drain_on_stop": True,  # stopped before the leak check: it removes its idle machines
}


class WarmPool:
    """`gitlab-machine-driver pool run` for the soak's world (tests/integration/test_pool.py)."""

    def __init__(self, world: Env, idle: int) -> None:
        self.world = world
        self.idle = idle
        self.lines: list[tuple[float, str]] = []
        self.started = 0.0
        self.exit_code: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        world.configure(pool={"idle_count": idle, **POOL_SETTINGS})

    def start(self) -> None:
        self.started = time.monotonic()
        self._proc = subprocess.Popen(
            [*driver_argv(), "--config", str(self.world.config_path), "pool", "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.world.process_env(),
            text=True,
        )
        stdout = self._proc.stdout
        assert stdout is not None
        self._reader = threading.Thread(
            target=lambda: self.lines.extend(stamped_lines(stdout)), name="pool-out", daemon=True
        )
        self._reader.start()

    def ready(self) -> int:
        out = self.world.driver("pool", "status", "--json", timeout=60)
        if out.returncode != 0:
            return 0
        return int(json.loads(out.stdout)["counts"]["idle"])

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready() >= self.idle:
                return True
            time.sleep(1.0)
        return False

    def kill(self) -> None:
        """Stopped hard (an OOM kill, `systemctl kill`): no drain, creates cut short."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self.exit_code = self._proc.wait()

    def stop(self, timeout: float = 300.0) -> bool:
        """SIGTERM and wait for the drain; True if it said it stopped."""
        if self._proc is None:
            return True
        self._proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self.exit_code = self._proc.wait()
        if self._reader is not None:
            self._reader.join(10)
        return any("pool: stopped" in line for _, line in self.lines)

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def removals(self) -> list[Removal]:
        """Its start-up sweep's."""
        return removals(self.lines, self.started, "pool start-up")


# --------------------------------------------------------------- dead runners


RUNNER = r"""
import json, os, sys, time
base, job_id, report = sys.argv[1:4]  # testing: on PYTHONPATH (Env.process_env)
from pathlib import Path
from testing.runner import Job
from testing.world import Env

def save(path, data):
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)

save(report + ".pid", {"pid": os.getpid()})
began = time.monotonic()  # prepare_only counts its records' times from about now
held = Env(Path(base)).runner().prepare_only(Job(id=int(job_id)))
save(report, {
    "pid": os.getpid(),
    "ok": held.ok,
    "failure": held.failure,
    "temp_dir": held.temp_dir,
    "job_log": held.job_log,
    "records": [[r.kind, r.attempt, began + r.started, r.stdout] for r in held.records],
    "ended": time.monotonic(),
})
time.sleep(3600)  # the runner dies here: the soak SIGKILLs it
"""


@dataclass
class DeadRunner:
    """One job prepared by a runner process that was then killed."""

    job_id: int
    ok: bool = False
    failure: str = ""
    pid: int = 0
    temp_dir: str | None = None
    job_log: str = ""
    records: list[tuple[str, int, float, str]] = field(default_factory=list)
    began: float = 0.0
    prepared: float = 0.0  # when its prepare_only returned
    killed_at: float = math.inf  # when SIGKILL was sent: nothing proves it dead before

    @property
    def seconds(self) -> float:
        return self.prepared - self.began if self.prepared else 0.0

    def ownerships(self, prefix: str) -> list[Ownership]:
        return ownerships(prefix, self.job_id, "runner_dies", self.records, self.killed_at)


def _pid_is(pid: int, mark: str) -> bool:
    try:
        return mark.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kill(pid: int, mark: str) -> float:
    """SIGKILL the runner and wait until it is gone (init reaps it: it is orphaned);
    when the signal was sent."""
    sent = time.monotonic()
    if _pid_is(pid, mark):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _pid_is(pid, mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sent


def run_dead_runner(world: Env, job_id: int) -> DeadRunner:
    """Start a runner orphaned, let it prepare job `job_id`, then kill it."""
    dead = DeadRunner(job_id)
    report = world.base / f"dead-runner-{job_id}.json"
    pid_file = Path(f"{report}.pid")
    dead.began = time.monotonic()
    runner = [sys.executable, "-c", RUNNER, str(world.base), str(job_id), str(report)]
    # `setsid -f`: orphaned at once, its parent is init, as a service's is.
    subprocess.run(
        ["setsid", "-f", *runner],
        check=True,
        env=world.process_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + RUNNER_REPORT_TIMEOUT
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_file.exists():
        dead.pid = int(json.loads(pid_file.read_text())["pid"])
    if not report.exists():
        dead.failure = f"the runner process did not report in {RUNNER_REPORT_TIMEOUT:g}s"
    else:
        data = json.loads(report.read_text())
        dead.ok = bool(data["ok"])
        dead.failure = data["failure"] or ""
        dead.temp_dir = data["temp_dir"]
        dead.job_log = data["job_log"]
        dead.records = [(k, int(a), float(s), o) for k, a, s, o in data["records"]]
        dead.prepared = float(data["ended"])
    dead.killed_at = _kill(dead.pid, str(report)) if dead.pid else time.monotonic()
    return dead


def reclaimed(dead: DeadRunner, prefix: str, removed: list[Removal]) -> Removal | None:
    """The sweep removal, after its runner died, of the machine its prepare left."""
    owned = dead.ownerships(prefix)
    if not owned:
        return None
    last = owned[-1].machines
    return next((r for r in removed if r.machine in last and r.end > dead.killed_at), None)
