"""Soak: many whole CI jobs at once, each in its own VM, on one runner host.

    PATH=$PWD/tests/doubles/bin:$PATH .venv/bin/python bench/soak.py --jobs 96 --concurrency 32

One world (tests/world.py) is shared by every job, as one runner host shares
its docker-machine storage and the driver's state dir. A thread pool of
--concurrency JobRuns (the runner emulation, tests/runner) drives the real
driver through config/prepare/run/cleanup. Each job is one of four kinds,
mixed by --mix and shuffled with --seed:

  success    echoes, sleeps a random 0-2 s                 must end success
  failed     exits a random code in 1..254 except 33/34    must end failed with that code
  cancelled  cancelled 1-3 s into build_script             must end cancelled
  lost_vm    its VM is killed (kill_vm) ~1 s after its     must end system_failure
             build_script printed a marker

After the last job (and a short settle) nothing may be left: machines,
job state dirs, VM processes, namespaces, driver processes (anything whose
command line names this world, or `-m driver` with this world in its
environment), runner temp dirs. The exit status is 1 on any wrong result or
leak.

Driver cost per executable kind (config/prepare/run/cleanup). Each
executable runs under a tiny wrapper (written into the world's temp dir and
put in front of the driver command through the runner's *_exec/*_args). The
wrapper ignores SIGTERM/SIGINT itself (the driver, in the same process group,
gets them from the runner as usual), posix_spawns `python -m driver ...` with
default signal dispositions, and then:

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
the wrapper too; such calls are counted as unmeasured. prepare records its
parent's pid for the sweeper, which is the wrapper's here: the soak never
runs the sweeper. --no-measure runs the driver without the wrapper.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.doubles import docker_machine as double  # noqa: E402
from tests.runner import CancelPlan, Job, JobResult, RunnerEmulator  # noqa: E402
from tests.world import BUILD_FAILURE, SYSTEM_FAILURE, Env, destroy_world, new_world  # noqa: E402

KINDS = ("success", "failed", "cancelled", "lost_vm")
EXPECTED = {
    "success": "success",
    "failed": "failed",
    "cancelled": "cancelled",
    "lost_vm": "system_failure",
}
EXECUTABLES = ("config", "prepare", "run", "cleanup")
# A script's exit codes; the runner's own failure codes would be ambiguous.
FAIL_CODES = [c for c in range(1, 255) if c not in (BUILD_FAILURE, SYSTEM_FAILURE)]
# Printed by the lost_vm job's build_script; the log's echo of the command
# shows `$((6*7))`, so only the running script's output matches.
STARTED_MARK = "SOAK-BUILD-42"
DESCRIBE_CHARS = 1500
SETTLE_SECONDS = 15.0

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


@dataclass
class Plan:
    """One job and what its kind demands."""

    kind: str
    job: Job
    exit_code: int | None = None  # failed: the script's code
    cancel_after: float | None = None  # cancelled: seconds into build_script


@dataclass
class Outcome:
    plan: Plan
    result: JobResult | None = None
    crash: str | None = None  # the emulator itself raised
    vm_killed: bool = False  # lost_vm: kill_vm was called
    wrong: str | None = None


@dataclass
class Leaks:
    machines: list[str] = field(default_factory=list)
    job_dirs: list[str] = field(default_factory=list)
    vm_pids: list[int] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    driver_processes: list[str] = field(default_factory=list)
    runner_temp: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, list[Any]]]:
        return [
            ("machines leaked", self.machines),
            ("job state dirs left", self.job_dirs),
            ("VM processes leaked", self.vm_pids),
            ("namespaces leaked", self.namespaces),
            ("driver processes leaked", self.driver_processes),
            ("runner temp dirs left", self.runner_temp),
        ]

    @property
    def total(self) -> int:
        return sum(len(items) for _, items in self.rows())


# ------------------------------------------------------------------ the jobs


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind.strip() not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
        mix[kind.strip()] = float(weight)
    if sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError("the mix's weights must add up to more than 0")
    return mix


def kind_counts(jobs: int, mix: dict[str, float]) -> dict[str, int]:
    """Exact shares of `jobs` by weight (largest remainder), so a small run has each kind."""
    total = sum(mix.values())
    exact = {k: jobs * w / total for k, w in mix.items()}
    counts = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)
    for kind in by_remainder[: jobs - sum(counts.values())]:
        counts[kind] += 1
    return counts


def make_plans(jobs: int, mix: dict[str, float], rng: random.Random, timeout: float) -> list[Plan]:
    kinds = [k for k, n in kind_counts(jobs, mix).items() for _ in range(n)]
    rng.shuffle(kinds)
    after = ["echo after_script ran"]
    plans = []
    for kind in kinds:
        if kind == "success":
            pause = rng.uniform(0, 2)
            script = ['echo "soak job on $(hostname)"', f"sleep {pause:.2f}", "echo done"]
            plans.append(Plan(kind, Job(script=script, after_script=after, timeout=timeout)))
        elif kind == "failed":
            code = rng.choice(FAIL_CODES)
            script = ['echo "soak job on $(hostname)"', f"exit {code}"]
            job = Job(script=script, after_script=after, timeout=timeout)
            plans.append(Plan(kind, job, exit_code=code))
        elif kind == "cancelled":
            script = ["echo cancel me", "sleep 60", "echo never"]
            job = Job(script=script, after_script=after, timeout=timeout)
            plans.append(Plan(kind, job, cancel_after=rng.uniform(1, 3)))
        else:
            script = ['echo "SOAK-BUILD-$((6*7))"', "sleep 60", "echo never"]
            plans.append(Plan(kind, Job(script=script, after_script=after, timeout=timeout)))
    return plans


def run_plan(runner: RunnerEmulator, storage: str, plan: Plan, kill_delay: float) -> Outcome:
    outcome = Outcome(plan)
    try:
        if plan.kind == "cancelled":
            assert plan.cancel_after is not None
            cancel = CancelPlan("build_script", after=plan.cancel_after)
            outcome.result = runner.run_job(plan.job, cancel=cancel)
        elif plan.kind == "lost_vm":
            outcome.result, outcome.vm_killed = run_losing_vm(runner, storage, plan, kill_delay)
        else:
            outcome.result = runner.run_job(plan.job)
    except Exception:
        outcome.crash = traceback.format_exc()
    outcome.wrong = judge(outcome)
    return outcome


def run_losing_vm(
    runner: RunnerEmulator, storage: str, plan: Plan, kill_delay: float
) -> tuple[JobResult, bool]:
    """The job's VM dies `kill_delay` s after its build_script printed STARTED_MARK."""
    started, finished, killed = threading.Event(), threading.Event(), threading.Event()
    tail = [""]

    def on_log(text: str) -> None:
        tail[0] = (tail[0] + text)[-(len(STARTED_MARK) + 4096) :]
        if STARTED_MARK in tail[0]:
            started.set()

    def killer() -> None:
        while not finished.is_set():
            if started.wait(0.2):
                time.sleep(kill_delay)
                if not finished.is_set():
                    double.kill_vm(storage, f"gmdt-{plan.job.id}")
                    killed.set()
                return

    thread = threading.Thread(target=killer, name=f"kill-{plan.job.id}", daemon=True)
    thread.start()
    try:
        result = runner.new_run(plan.job, on_log=on_log).run()
    finally:
        finished.set()
        thread.join()
    return result, killed.is_set()


def judge(outcome: Outcome) -> str | None:
    """Why the job's end differs from what its kind demands; None if it does not."""
    plan, result = outcome.plan, outcome.result
    if result is None:
        return "the runner emulation crashed"
    want = EXPECTED[plan.kind]
    if result.outcome != want:
        return f"outcome {result.outcome}, want {want}"
    if result.exit_code != plan.exit_code:
        return f"exit code {result.exit_code}, want {plan.exit_code}"
    if plan.kind == "cancelled" and result.cancel_reason != "cancel":
        return f"cancelled for {result.cancel_reason}, want cancel"
    if plan.kind == "lost_vm" and not outcome.vm_killed:
        return "its VM was never killed (build_script's marker not seen)"
    return None


# ------------------------------------------------------------- measurements


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


def notes(outcomes: list[Outcome]) -> dict[str, int]:
    """Things worth a look even when every outcome is right."""
    results = [o.result for o in outcomes if o.result]
    records = [r for result in results for r in result.records]
    lost = [o.result for o in outcomes if o.result and o.plan.kind == "lost_vm"]
    return {
        "jobs that needed more than one prepare": sum(r.prepare_attempts > 1 for r in results),
        "executables the runner had to SIGKILL": sum("SIGKILL" in r.signals_sent for r in records),
        "cleanup calls that failed": sum(
            r.kind == "cleanup" and r.returncode != 0 for r in records
        ),
        "jobs whose log shows a driver internal error": sum(
            "internal error" in r.job_log + r.runner_log for r in results
        ),
        "lost_vm jobs not saying 'lost the connection'": sum(
            "lost the connection to machine" not in r.job_log for r in lost
        ),
    }


# -------------------------------------------------------------------- leaks


def world_processes(world: Env, exclude: set[int]) -> list[str]:
    """Processes naming this world on their command line, or `-m driver` ones with it in
    their environment (the VM processes of `exclude` and this process aside)."""
    mark = str(world.base)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        text = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
        ours = mark in text
        if not ours and "-m driver" in text:
            try:
                ours = mark.encode() in Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                ours = False
        if ours:
            found.append(f"{entry} {text[:160]}")
    return found


def find_leaks(world: Env) -> Leaks:
    storage = str(world.storage)
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        vm_pids = double.storage_pids(storage)
        if not vm_pids and not world_processes(world, set()):
            break
        time.sleep(0.5)
    vm_pids = double.storage_pids(storage)
    temp = sorted(p.name for p in world.runner_temp.iterdir()) if world.runner_temp.exists() else []
    return Leaks(
        machines=world.machines(),
        job_dirs=world.job_dirs(),
        vm_pids=vm_pids,
        namespaces=double.leftover_namespaces(storage),
        driver_processes=world_processes(world, set(vm_pids)),
        runner_temp=temp,
    )


# --------------------------------------------------------------------- main


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run_all(
    plans: list[Plan],
    concurrency: int,
    job: Callable[[Plan], Outcome],
) -> list[Outcome]:
    outcomes = []
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="job") as pool:
        futures = [pool.submit(job, plan) for plan in plans]
        for done, future in enumerate(as_completed(futures), 1):
            outcomes.append(future.result())
            if done % max(1, len(plans) // 8) == 0 or done == len(plans):
                print(f"  ... {done}/{len(plans)} jobs done", file=sys.stderr, flush=True)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=parse_mix("success=40,failed=20,cancelled=20,lost_vm=20"),
        help="weights of the job kinds (default: success=40,failed=20,cancelled=20,lost_vm=20)",
    )
    parser.add_argument("--kill-delay", type=float, default=1.0, help="lost_vm: seconds into it")
    parser.add_argument("--job-timeout", type=float, default=600, help="each job's own timeout")
    parser.add_argument("--no-measure", action="store_true", help="no rusage wrapper")
    args = parser.parse_args()
    if args.concurrency < 1 or args.jobs < 1:
        parser.error("--jobs and --concurrency must be at least 1")

    rng = random.Random(args.seed)
    plans = make_plans(args.jobs, args.mix, rng, args.job_timeout)
    world = new_world(run={"kill_grace": 2}, ssh={"keepalive_interval": 2})
    try:
        usage_file = world.base / "usage.jsonl"
        wrapper = None
        if not args.no_measure:
            wrapper = world.base / "usage_wrap.py"
            wrapper.write_text(WRAPPER)
        runner = measured_runner(
            world,
            wrapper,
            usage_file,
            graceful_kill_timeout=5.0,
            force_kill_timeout=5.0,
            cancel_wait=30.0,
        )
        storage = str(world.storage)
        print(
            f"soak: {args.jobs} jobs, concurrency {args.concurrency}, seed {args.seed}, "
            f"world {world.base}",
            file=sys.stderr,
            flush=True,
        )
        start = time.monotonic()
        outcomes = run_all(
            plans, args.concurrency, lambda plan: run_plan(runner, storage, plan, args.kill_delay)
        )
        wall = time.monotonic() - start
        leaks = find_leaks(world)
        usage = read_usage(usage_file)
        report(args, outcomes, leaks, usage, wall)
        wrong = [o for o in outcomes if o.wrong]
        return 1 if wrong or leaks.total else 0
    finally:
        destroy_world(world)


def report(
    args: argparse.Namespace,
    outcomes: list[Outcome],
    leaks: Leaks,
    usage: list[dict[str, Any]],
    wall: float,
) -> None:
    jobs = len(outcomes)
    print(f"jobs run: {jobs} (concurrency {args.concurrency}, seed {args.seed})")
    print()
    print(f"{'kind':<10} {'jobs':>5} {'job s med':>9}  {'expected':<18} {'actual outcomes'}")
    for kind in KINDS:
        mine = [o for o in outcomes if o.plan.kind == kind]
        if not mine:
            continue
        actual = Counter(o.result.outcome if o.result else "crash" for o in mine)
        shown = ", ".join(f"{name} {n}" for name, n in sorted(actual.items()))
        median = statistics.median([o.result.seconds if o.result else 0.0 for o in mine])
        expected = f"{EXPECTED[kind]} {len(mine)}"
        print(f"{kind:<10} {len(mine):>5} {median:>9.1f}  {expected:<18} {shown}")

    wrong = [o for o in outcomes if o.wrong]
    print()
    print(f"wrong results: {len(wrong)}")
    for o in wrong:
        print(f"--- job {o.plan.job.id} ({o.plan.kind}): {o.wrong}")
        text = o.result.describe() if o.result else (o.crash or "")
        print(text if len(text) <= DESCRIBE_CHARS else text[:DESCRIBE_CHARS] + "\n[...]")

    print()
    for name, items in leaks.rows():
        print(f"{name + ':':<26} {len(items)}")
        for item in items[:10]:
            print(f"    {item}")

    results = [o.result for o in outcomes if o.result]
    print()
    print("notes (not counted as failures):")
    for name, count in notes(outcomes).items():
        print(f"  {name + ':':<46} {count}")
    for result in results:  # an internal error is a bug: show where it happened
        text = result.job_log + result.runner_log
        if "internal error" in text:
            at = text.index("internal error")
            print(f"    job {result.job.id}: ...{text[max(0, at - 300) : at + 1200]}")

    seconds = [r.seconds for r in results]
    prepares = [e.seconds for r in results for e in r.execs("prepare") if e.ended == "exited"]
    print()
    print(f"wall time: {wall:.1f} s, {60 * jobs / wall:.1f} jobs/min")
    print(
        f"job seconds: median {statistics.median(seconds):.1f}, p90 {percentile(seconds, 0.9):.1f},"
        f" max {max(seconds):.1f}"
    )
    if prepares:
        print(
            f"prepare seconds: median {statistics.median(prepares):.1f}, "
            f"p90 {percentile(prepares, 0.9):.1f}, max {max(prepares):.1f}"
        )

    if args.no_measure:
        return
    calls: Counter[str] = Counter(
        r.kind for result in results for r in result.records if r.pid is not None
    )
    print()
    print("driver cost per job (own = the driver's Python process alone; +children adds the")
    print("docker-machine double and ssh clients it waited for; RSS = own VmHWM; tree = ru_maxrss)")
    for line in usage_table(usage, jobs, calls):
        print(line)
    stages = Counter(u["stage"] for u in usage if u["kind"] == "run")
    print(f"run calls by stage: {', '.join(f'{s} {n}' for s, n in sorted(stages.items()))}")


if __name__ == "__main__":
    sys.exit(main())
