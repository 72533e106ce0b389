"""Soak: many whole CI jobs at once, with the sweeper on a timer, a warm pool, dying runners.

Every job gets its own VM, on one runner host.

    PATH=$PWD/testing/bin:$PATH .venv/bin/python -m bench.soak --jobs 48 --concurrency 16

One world (testing/world.py) is shared by every job, as one runner host shares
its docker-machine storage and the driver's state dir. A thread pool of
--concurrency JobRuns (the runner emulation, testing/runner) drives the real
driver through config/prepare/run/cleanup. Each job is one of five kinds,
mixed by --mix and shuffled with --seed:

  success      echoes, sleeps a random 0-2 s              must end success
  failed       exits a random code in 1..254 except 33/34 must end failed with that code
  cancelled    cancelled 1-3 s into build_script          must end cancelled
  lost_vm      its VM is killed (kill_vm) ~1 s after its  must end system_failure
               build_script printed a marker
  runner_dies  prepared by a separate runner process      its machine must be reclaimed
               (started orphaned with `setsid -f`, as a   by the sweeper
               service is), SIGKILLed once prepare is done

Meanwhile `gitlab-machine-driver sweep` runs every --sweep-every seconds, as an
admin's timer runs it, and `pool run` keeps --pool machines ready (0: no pool).
Every --faults-every seconds a fault reaching a reclaim path is injected (a cloud
`rm` that hangs then fails, a create that fails so the runner retries prepare at
once, a truncated record), and halfway the pool is switched off without a drain:
bench/soak_faults.py says which and how.
Each sweep's "<machine>: removing (<reason>)" lines are compared with when each
job was live (bench/soak_reclaim.py says how): "live jobs whose machine was
removed" counts the jobs hit by a removal while live, and the jobs that ended
in a system failure they were not planned to (a lost_vm job's is planned).

After the last job, once the timer's sweeps reclaimed every dead runner's
machine (or RECLAIM_WAIT passed), the timer stops, the pool service is stopped
(SIGTERM: it drains its idle machines), the dead runners' own temp dirs are removed (they
are the runners' business, not the driver's), one last sweep runs, and then
nothing may be left: machines, job state dirs, VM processes, namespaces,
driver processes (anything whose command line names this world, or `-m
driver` with this world in its environment), runner temp dirs, pool records,
tombstones. The exit status is 1 on any wrong result, leak, live job's
machine removed, or failed sweep.

What each driver executable costs (CPU, memory) is measured as bench/soak_measure.py
says, for the jobs of the soak's own runner; --no-measure skips it.
"""

from __future__ import annotations

import argparse
import random
import shutil
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

from bench.soak_faults import Faults
from bench.soak_leaks import Leaks, find_leaks
from bench.soak_measure import WRAPPER, measured_runner, read_usage, usage_table
from bench.soak_reclaim import (
    RUNNER_GONE,
    VERDICT,
    DeadRunner,
    Ownership,
    Removal,
    SweepTimer,
    WarmPool,
    harm,
    live_verdicts,
    ownerships,
    reclaimed,
    run_dead_runner,
)
from driver.errors import DriverError
from driver.state import StateDir
from testing import docker_machine as double
from testing.runner import CancelPlan, Job, JobResult, RunnerEmulator
from testing.world import BUILD_FAILURE, SYSTEM_FAILURE, Env, destroy_world, new_world

KINDS = ("success", "failed", "cancelled", "lost_vm", "runner_dies")
EXPECTED = {
    "success": "success",
    "failed": "failed",
    "cancelled": "cancelled",
    "lost_vm": "system_failure",
    "runner_dies": "reclaimed",
}
LOST = "lost the connection to machine"  # what a job whose machine went says
INTERNAL = "ERROR: internal error"  # the driver's own (the cloud's "An internal error" is not)
# A script's exit codes; the runner's own failure codes would be ambiguous.
FAIL_CODES = [c for c in range(1, 255) if c not in (BUILD_FAILURE, SYSTEM_FAILURE)]
# Printed by the lost_vm job's build_script; the log's echo of the command
# shows `$((6*7))`, so only the running script's output matches.
STARTED_MARK = "SOAK-BUILD-42"
DESCRIBE_CHARS = 1500
POOL_FILL_SECONDS = 240.0  # the pool's machines are ready before the first job
RECLAIM_WAIT = 90.0  # after the last job, for the timer to reclaim dead runners' machines


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
    dead: DeadRunner | None = None  # runner_dies: its runner process
    owned: list[Ownership] = field(default_factory=list)  # while it was live
    reclaim: Removal | None = None  # runner_dies: the sweep that removed its machine
    wrong: str | None = None

    @property
    def seconds(self) -> float:
        """The job's (a dead runner's: its prepare's)."""
        if self.dead is not None:
            return self.dead.seconds
        return self.result.seconds if self.result else 0.0

    @property
    def shown(self) -> str:
        """Its outcome as the table shows it."""
        if self.dead is not None:
            if not self.dead.ok:
                return "prepare failed"
            return "reclaimed" if self.reclaim else "not reclaimed"
        return self.result.outcome if self.result else "crash"


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
        elif kind == "lost_vm":
            script = ['echo "SOAK-BUILD-$((6*7))"', "sleep 60", "echo never"]
            plans.append(Plan(kind, Job(script=script, after_script=after, timeout=timeout)))
        else:  # runner_dies: only its id matters, its runner never runs a stage
            plans.append(Plan(kind, Job(timeout=timeout)))
    return plans


@dataclass
class Soak:
    """What every job of one soak shares."""

    world: Env
    runner: RunnerEmulator
    kill_delay: float

    @property
    def prefix(self) -> str:
        return str(self.world.settings["machine"]["name_prefix"])

    def machine_of(self, job_id: int) -> str:
        """The machine the job's record names (a pool machine it took), or its own."""
        try:
            return StateDir(self.world.state_dir).job(job_id).load().machine
        except DriverError:
            return f"{self.prefix}-{job_id}"


def run_plan(soak: Soak, plan: Plan) -> Outcome:
    outcome = Outcome(plan)
    try:
        if plan.kind == "runner_dies":
            outcome.dead = run_dead_runner(soak.world, plan.job.id)
            outcome.owned = outcome.dead.ownerships(soak.prefix)
            return outcome  # judged once the sweeps are done
        began = time.monotonic()  # the JobRun counts its records' times from here
        if plan.kind == "cancelled":
            assert plan.cancel_after is not None
            cancel = CancelPlan("build_script", after=plan.cancel_after)
            outcome.result = soak.runner.new_run(plan.job, cancel=cancel).run()
        elif plan.kind == "lost_vm":
            outcome.result, outcome.vm_killed = run_losing_vm(soak, plan)
        else:
            outcome.result = soak.runner.new_run(plan.job).run()
        records = []
        for r in outcome.result.records:
            records.append((r.kind, r.attempt, began + r.started, r.stdout))
            if r.kind == "prepare" and r.ended == "signalled" and not r.signals_sent:
                # Killed by a fault (bench/soak_faults.py): no stage of that attempt runs.
                records.append(("cleanup", r.attempt, began + r.started + r.seconds, ""))
        end = began + outcome.result.seconds
        outcome.owned = ownerships(soak.prefix, plan.job.id, plan.kind, records, end)
    except Exception:
        outcome.crash = traceback.format_exc()
    outcome.wrong = judge(outcome)
    return outcome


def run_losing_vm(soak: Soak, plan: Plan) -> tuple[JobResult, bool]:
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
                time.sleep(soak.kill_delay)
                if not finished.is_set():
                    machine = soak.machine_of(plan.job.id)  # a pool machine, or its own
                    double.kill_vm(str(soak.world.storage), machine)
                    killed.set()
                return

    thread = threading.Thread(target=killer, name=f"kill-{plan.job.id}", daemon=True)
    thread.start()
    try:
        result = soak.runner.new_run(plan.job, on_log=on_log).run()
    finally:
        finished.set()
        thread.join()
    return result, killed.is_set()


def judge(outcome: Outcome) -> str | None:
    """Why the job's end differs from what its kind demands; None if it does not."""
    plan, result = outcome.plan, outcome.result
    if outcome.dead is not None:
        if not outcome.dead.ok:
            return f"its dead runner's prepare failed: {outcome.dead.failure}"
        if outcome.reclaim is None:
            return "its machine was not reclaimed after its runner died"
        return None
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


# -------------------------------------------------------------------- notes


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
            INTERNAL in r.job_log + r.runner_log for r in results
        ),
        "lost_vm jobs not saying 'lost the connection'": sum(LOST not in r.job_log for r in lost),
    }


# -------------------------------------------------------------------- leaks


def remove_dead_runners_temp_dirs(outcomes: list[Outcome]) -> None:
    """A dead runner's temp dirs are its own business (a restarted runner's), not the
    driver's; only the soak's own runner's count as leaks."""
    for o in outcomes:
        if o.dead is not None and o.dead.temp_dir:
            shutil.rmtree(o.dead.temp_dir, ignore_errors=True)


# ---------------------------------------------------------- reclaiming harm


def live_jobs_hit(
    outcomes: list[Outcome], removed: list[Removal], uncertain: list[str], start: float
) -> dict[int, list[str]]:
    """Jobs whose machine (or state) a sweep removed while they were live, and jobs that
    ended in a system failure they were not planned to: job id -> what happened.
    Removals that may have come just after a job's life are added to `uncertain`.
    Times are shown in seconds since `start`."""
    hit: dict[int, list[str]] = {}
    owned = [o for outcome in outcomes for o in outcome.owned]
    for removal, owner, certain in harm(removed, owned):
        what = (
            f"{owner.kind} job {owner.job_id}, prepare attempt {owner.attempt}: {removal.what} "
            f"{'removed' if removal.rm else 'forgotten (no rm)'} by a {removal.by} sweep "
            f"({removal.reason}) within {removal.start - start:.2f}..{removal.end - start:.2f} "
            f"s; the job was live {owner.start - start:.2f}..{owner.end - start:.2f} s"
        )
        if certain:
            hit.setdefault(owner.job_id, []).append(what)
        else:
            uncertain.append(what)
    for o in outcomes:
        result = o.result
        if result is None:
            continue
        planned = o.plan.kind == "lost_vm" and o.vm_killed
        job = f"{o.plan.kind} job {o.plan.job.id}"
        if result.outcome == "system_failure" and not planned:
            hit.setdefault(o.plan.job.id, []).append(
                f"{job} ended in a system failure: {result.failure_message}"
            )
        elif o.plan.kind != "lost_vm" and LOST in result.job_log:
            hit.setdefault(o.plan.job.id, []).append(f"{job}'s log says '{LOST}'")
    return hit


def wait_for_reclaims(soak: Soak, timer: SweepTimer, outcomes: list[Outcome]) -> None:
    """Give the timer's sweeps the time to reclaim the last dead runners' machines."""
    dead = [o.dead for o in outcomes if o.dead is not None and o.dead.ok]
    deadline = time.monotonic() + RECLAIM_WAIT
    while time.monotonic() < deadline:
        removed = timer.removals()
        if all(reclaimed(d, soak.prefix, removed) for d in dead):
            return
        time.sleep(0.5)


# --------------------------------------------------------------------- main


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run_all(
    plans: list[Plan],
    concurrency: int,
    job: Callable[[Plan], Outcome],
    on_done: Callable[[int], None] = lambda done: None,
) -> list[Outcome]:
    outcomes = []
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="job") as pool:
        futures = [pool.submit(job, plan) for plan in plans]
        for done, future in enumerate(as_completed(futures), 1):
            outcomes.append(future.result())
            on_done(done)
            if done % max(1, len(plans) // 8) == 0 or done == len(plans):
                print(f"  ... {done}/{len(plans)} jobs done", file=sys.stderr, flush=True)
    return outcomes


@dataclass
class Reclaiming:
    """What the sweeper and the pool did during the soak."""

    timer: SweepTimer
    pool: WarmPool | None
    pool_filled: bool = False
    pool_stopped: bool = True
    removed: list[Removal] = field(default_factory=list)
    hit: dict[int, list[str]] = field(default_factory=dict)
    uncertain: list[str] = field(default_factory=list)  # see live_jobs_hit

    @property
    def failed_sweeps(self) -> int:
        return len(self.timer.failed())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    default_mix = "success=40,failed=20,cancelled=20,lost_vm=20,runner_dies=10"
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=parse_mix(default_mix),
        help=f"weights of the job kinds (default: {default_mix})",
    )
    parser.add_argument("--kill-delay", type=float, default=1.0, help="lost_vm: seconds into it")
    parser.add_argument("--job-timeout", type=float, default=600, help="each job's own timeout")
    parser.add_argument(
        "--sweep-every", type=float, default=2.0, help="seconds between sweeps' starts"
    )
    parser.add_argument(
        "--faults-every",
        type=float,
        default=10.0,
        help="seconds between two injected faults (bench/soak_faults.py; 0: none, and the "
        "pool is not switched off)",
    )
    parser.add_argument("--pool", type=int, default=4, help="idle machines kept (0: no pool)")
    parser.add_argument(
        "--sweeper-max-age",
        type=float,
        help="[sweeper] max_age: a few seconds make the sweeper remove live jobs' machines "
        "(age is proof by design), to see the figure count them",
    )
    parser.add_argument(
        "--sweep-log",
        type=Path,
        help="write every sweep's output here, each line with its second of the soak, and "
        "every job's live windows",
    )
    parser.add_argument("--no-measure", action="store_true", help="no rusage wrapper")
    args = parser.parse_args()
    if args.concurrency < 1 or args.jobs < 1:
        parser.error("--jobs and --concurrency must be at least 1")
    if args.sweep_every <= 0 or args.pool < 0:
        parser.error("--sweep-every must be more than 0 and --pool at least 0")

    rng = random.Random(args.seed)
    plans = make_plans(args.jobs, args.mix, rng, args.job_timeout)
    sweeper = {} if args.sweeper_max_age is None else {"max_age": args.sweeper_max_age}
    world = new_world(run={"kill_grace": 2}, ssh={"keepalive_interval": 2}, sweeper=sweeper)
    reclaiming = Reclaiming(SweepTimer(world, args.sweep_every), None)
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
            preparation_retry_delay=0.0,  # a failed prepare is retried at once
        )
        soak = Soak(world, runner, args.kill_delay)
        print(
            f"soak: {args.jobs} jobs, concurrency {args.concurrency}, seed {args.seed}, "
            f"sweep every {args.sweep_every:g} s, pool {args.pool}, world {world.base}",
            file=sys.stderr,
            flush=True,
        )
        if args.pool:
            reclaiming.pool = WarmPool(world, args.pool)
            reclaiming.pool.start()
            reclaiming.pool_filled = reclaiming.pool.wait_ready(POOL_FILL_SECONDS)
        faults = Faults(world, reclaiming.pool, args.faults_every, args.seed)
        reclaiming.timer.start()
        start = time.monotonic()
        if args.faults_every > 0:
            faults.start()

        def halfway(done: int) -> None:  # the admin switches the pool off
            if args.faults_every > 0 and done >= len(plans) // 2:
                faults.switch_pool_off_soon()

        outcomes = run_all(plans, args.concurrency, lambda plan: run_plan(soak, plan), halfway)
        wall = time.monotonic() - start
        if args.faults_every > 0:
            faults.stop()
        wait_for_reclaims(soak, reclaiming.timer, outcomes)
        reclaiming.timer.stop()
        if reclaiming.pool is not None:
            stopped = reclaiming.pool.stop()
            reclaiming.pool_stopped = stopped or faults.pool_switched_off
        remove_dead_runners_temp_dirs(outcomes)
        reclaiming.timer.sweep("final")
        leaks = find_leaks(world)
        fault_lines, slots = faults.report(), faults.slots() + faults.truncated_left()

        reclaiming.removed = reclaiming.timer.removals()
        if reclaiming.pool is not None:
            reclaiming.removed += reclaiming.pool.removals()
        for o in outcomes:
            if o.dead is not None:
                o.reclaim = reclaimed(o.dead, soak.prefix, reclaiming.removed)
                o.wrong = judge(o)
        reclaiming.hit = live_jobs_hit(outcomes, reclaiming.removed, reclaiming.uncertain, start)
        if args.sweep_log:
            write_sweep_log(args.sweep_log, start, outcomes, reclaiming)
        usage = read_usage(usage_file)
        report(args, outcomes, leaks, usage, wall, reclaiming)
        print()
        print("\n".join(fault_lines))
        wrong = [o for o in outcomes if o.wrong]
        bad = wrong or leaks.total or reclaiming.hit or reclaiming.failed_sweeps or slots
        return 1 if bad else 0
    finally:
        reclaiming.timer.stop()
        if reclaiming.pool is not None:
            reclaiming.pool.stop()
        destroy_world(world)


def report(
    args: argparse.Namespace,
    outcomes: list[Outcome],
    leaks: Leaks,
    usage: list[dict[str, Any]],
    wall: float,
    reclaiming: Reclaiming,
) -> None:
    jobs = len(outcomes)
    print(f"jobs run: {jobs} (concurrency {args.concurrency}, seed {args.seed})")
    print()
    print(f"{'kind':<11} {'jobs':>5} {'job s med':>9}  {'expected':<18} {'actual outcomes'}")
    for kind in KINDS:
        mine = [o for o in outcomes if o.plan.kind == kind]
        if not mine:
            continue
        actual = Counter(o.shown for o in mine)
        shown = ", ".join(f"{name} {n}" for name, n in sorted(actual.items()))
        median = statistics.median([o.seconds for o in mine])
        expected = f"{EXPECTED[kind]} {len(mine)}"
        print(f"{kind:<11} {len(mine):>5} {median:>9.1f}  {expected:<18} {shown}")
    print("(runner_dies: job s = its prepare; its runner is killed after it)")

    report_reclaiming(outcomes, reclaiming)

    wrong = [o for o in outcomes if o.wrong]
    print()
    print(f"wrong results: {len(wrong)}")
    print(f"live jobs whose machine was removed: {len(reclaiming.hit)}")
    for _, what in sorted(reclaiming.hit.items()):
        for line in what:
            print(f"    {line}")
    if reclaiming.uncertain:
        print(
            f"  removals of records only, between two verdicts of which the first came "
            f"before the job's cleanup started (not counted): {len(reclaiming.uncertain)}"
        )
        for line in reclaiming.uncertain:
            print(f"    {line}")
    for o in wrong:
        print(f"--- job {o.plan.job.id} ({o.plan.kind}): {o.wrong}")
        if o.dead is not None:
            text = o.dead.job_log
        else:
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
        if INTERNAL in text:
            at = text.index(INTERNAL)
            print(f"    job {result.job.id}: ...{text[max(0, at - 300) : at + 1200]}")

    seconds = [r.seconds for r in results]
    prepares = [e.seconds for r in results for e in r.execs("prepare") if e.ended == "exited"]
    print()
    print(f"wall time: {wall:.1f} s, {60 * jobs / wall:.1f} jobs/min")
    if seconds:
        print(
            f"job seconds: median {statistics.median(seconds):.1f}, "
            f"p90 {percentile(seconds, 0.9):.1f}, max {max(seconds):.1f}"
        )
    if prepares:
        print(
            f"prepare seconds: median {statistics.median(prepares):.1f}, "
            f"p90 {percentile(prepares, 0.9):.1f}, max {max(prepares):.1f}"
        )

    if args.no_measure or not results:
        return
    calls: Counter[str] = Counter(
        r.kind for result in results for r in result.records if r.pid is not None
    )
    print()
    print(f"driver cost per job of the soak's own runner ({len(results)} jobs; own = the")
    print("driver's Python process alone; +children adds the docker-machine double and ssh")
    print("clients it waited for; RSS = own VmHWM; tree = ru_maxrss)")
    for line in usage_table(usage, len(results), calls):
        print(line)
    stages = Counter(u["stage"] for u in usage if u["kind"] == "run")
    print(f"run calls by stage: {', '.join(f'{s} {n}' for s, n in sorted(stages.items()))}")


def write_sweep_log(
    path: Path, start: float, outcomes: list[Outcome], reclaiming: Reclaiming
) -> None:
    """For reading an interleaving afterwards: times are seconds since the first job."""
    lines = []
    for run in reclaiming.timer.runs:
        lines.append(f"{run.started - start:9.2f} --- {run.by} sweep (exit {run.exit_code})")
        lines += [f"{at - start:9.2f} {line}" for at, line in run.lines]
    if reclaiming.pool is not None:
        lines.append("--- the pool service")
        lines += [f"{at - start:9.2f} {line}" for at, line in reclaiming.pool.lines]
    lines.append("--- live windows: job kind attempt machines")
    owned = sorted((o for outcome in outcomes for o in outcome.owned), key=lambda o: o.start)
    for o in owned:
        lines.append(
            f"{o.start - start:9.2f} {o.end - start:9.2f} {o.job_id} {o.kind} {o.attempt} "
            + " ".join(sorted(o.machines))
        )
    path.write_text("\n".join(lines) + "\n")


def report_reclaiming(outcomes: list[Outcome], reclaiming: Reclaiming) -> None:
    timer, pool = reclaiming.timer, reclaiming.pool
    runs = [run for run in timer.runs if run.by == "timer"]
    durations = [run.seconds for run in runs] or [0.0]
    print()
    print(
        f"sweeps: {len(runs)} on the timer (every {timer.every:g} s; each took median "
        f"{statistics.median(durations):.1f} s, max {max(durations):.1f} s) and a final one; "
        f"failed: {reclaiming.failed_sweeps}"
    )
    for run in timer.failed():
        print(f"    {run.by} sweep exited {run.exit_code}: ...{run.text[-800:]}")
    for run in timer.runs:
        if INTERNAL in run.text:
            at = run.text.index(INTERNAL)
            print(f"    {run.by} sweep: ...{run.text[max(0, at - 300) : at + 1200]}")
    owned = [o for outcome in outcomes for o in outcome.owned]
    verdicts = sum(bool(VERDICT.search(line)) for run in timer.runs for _, line in run.lines)
    live = live_verdicts(timer.runs, owned)
    print(
        f"sweep verdicts: {verdicts}, of which {sum(live.values())} on a live job's machine "
        f"(at the verdict line): " + ", ".join(f"{verb} {n}" for verb, n in sorted(live.items()))
    )
    reasons = Counter(f"{r.reason} ({r.by})" for r in reclaiming.removed)
    print(f"sweep removals: {len(reclaiming.removed)}")
    for reason, n in sorted(reasons.items(), key=lambda item: -item[1]):
        print(f"    {n:>3} {reason}")
    others = [r for r in reclaiming.removed if RUNNER_GONE not in r.reason]
    for r in others[:20]:
        done = "removed" if r.rm else "already gone: records only"
        print(f"      {r.what} ({r.by}, {done}): {r.reason}")
    if pool is not None:
        took = sum(bool(o.result and "from the warm pool" in o.result.job_log) for o in outcomes)
        took += sum(bool(o.dead and "from the warm pool" in o.dead.job_log) for o in outcomes)
        print(
            f"warm pool: {pool.idle} idle wanted, "
            f"{'filled' if reclaiming.pool_filled else 'NOT filled'} before the first job; "
            f"{took} of {len(outcomes)} jobs took a ready machine; "
            f"{'stopped and drained' if reclaiming.pool_stopped else 'DID NOT STOP'}"
        )
        for _, line in pool.lines:
            if "WARNING: pool" in line or INTERNAL in line or "error:" in line.lower():
                print(f"    pool: {line[-300:]}")
    dead = [o for o in outcomes if o.dead is not None and o.dead.ok]
    back = [o for o in dead if o.reclaim is not None]
    late = sum(o.reclaim is not None and o.reclaim.by == "final" for o in dead)
    odd = [o for o in back if o.reclaim is not None and RUNNER_GONE not in o.reclaim.reason]
    print(
        f"machines of dead runners reclaimed {len(back)} of {len(dead)}"
        + (f" ({late} only by the final sweep)" if late else "")
    )
    for o in odd:
        assert o.reclaim is not None
        print(f"    job {o.plan.job.id}: reclaimed as '{o.reclaim.reason}'")


if __name__ == "__main__":
    sys.exit(main())
