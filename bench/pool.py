"""Warm pool: prepare time and cost with and without ready machines, on a slow cloud.

    PATH=$PWD/testing/bin:$PATH .venv/bin/python -m bench.pool

Every `docker-machine create` of the double sleeps --create-delay seconds
first (a slow cloud). Each scenario runs in its own world (testing/world.py),
one after the other, and jobs (a trivial script, each in its own thread
through the runner emulation) arrive on a schedule: job i starts at
i x interval. Each world first runs one job with no delay, so docker-machine's
certs exist as on a runner host that made machines before (--cold-storage
skips that: a first boot, where every create queues behind the first one).

  no pool          [pool] off: every prepare creates its machine. --jobs jobs,
                   arriving every --no-pool-interval seconds (default: the
                   shortest of --intervals; a job's own cost does not depend on it)
  pool empty       the pool service (idle_count = --idle) has just started and
                   nothing is ready: --empty-jobs jobs arrive at once and fall
                   back to creating their own machines
  warm pool /Ns    the service has --idle machines ready, then --jobs jobs arrive
                   every N seconds (once per --intervals value) while it refills

Per scenario: prepare seconds (the runner emulation's prepare records) median
and p95 (nearest rank), the share of jobs that took a ready machine (job log),
the driver's own claim time (its "Took machine ... (Ns)" line), the outcomes,
and the cost: the number of docker-machine machines (creating, idle or in use:
a cloud bills them all) sampled every 0.5 s from the first arrival until the
last job ended and, with a pool, until the pool is back at its target;
machine-seconds per job and the mean number alive, and the idle machines left
at the end. Pool services are stopped with SIGTERM (drain_on_stop,
so they remove their idle machines) and every world is destroyed, even on errors.

Targets: with a warm pool at the slowest interval, prepare < 1 s at the median
and < 2 s at the 95th percentile; the prepares that took a ready machine (in
every warm scenario), <= 0.25 s at the median and <= 0.5 s at the 95th
percentile. --scenarios runs some of them only (e.g. `--scenarios warm`). The
exit status is 1 if a target fails, a job did not succeed or a world was left
with machines.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from driver.pool.replay.simulate import percentile
from testing.runner import Job, JobResult
from testing.world import Env, destroy_world, driver_argv, new_world

HIT = "from the warm pool"
MISS = "No ready machine in the warm pool"
CLAIM = re.compile(r"from the warm pool \(ready \d+s ago, [^;]*; ([0-9.e+-]+)s\)")
SAMPLE_EVERY = 0.5


@dataclass
class Scenario:
    name: str
    jobs: int
    interval: float
    pool: bool  # the service runs
    warm: bool  # wait for idle_count ready machines before the first arrival


@dataclass
class Outcome:
    scenario: Scenario
    results: list[JobResult | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    prepare: list[float] = field(default_factory=list)
    hit_prepare: list[float] = field(default_factory=list)  # the jobs that took a ready one
    claim: list[float] = field(default_factory=list)  # the driver's own claim time (job log)
    hits: int = 0
    misses: int = 0
    machine_seconds: float = 0.0
    window: float = 0.0
    peak: int = 0
    idle_at_end: int = 0
    back_at_target: bool | None = None  # None: no pool
    left_after_stop: list[str] = field(default_factory=list)
    service_errors: list[str] = field(default_factory=list)
    service_stopped: bool | None = None

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(r.outcome if r else "crashed" for r in self.results)

    @property
    def all_succeeded(self) -> bool:
        return len(self.results) == self.scenario.jobs and all(
            r is not None and r.outcome == "success" for r in self.results
        )


class Sampler:
    """Counts the world's docker-machine machines every SAMPLE_EVERY seconds."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self.samples.append((time.monotonic(), len(self.env.machines())))
            if self.stop.wait(SAMPLE_EVERY):
                break

    def finish(self) -> tuple[float, float, int]:
        """Machine-seconds, window seconds, peak count."""
        self.stop.set()
        self.thread.join()
        self.samples.append((time.monotonic(), len(self.env.machines())))
        area = sum(
            n * (t1 - t0)
            for (t0, n), (t1, _) in zip(self.samples[:-1], self.samples[1:], strict=True)
        )
        window = self.samples[-1][0] - self.samples[0][0]
        return area, window, max(n for _, n in self.samples)


def start_service(env: Env) -> subprocess.Popen[bytes]:
    out = (env.base / "pool-service.log").open("wb")
    return subprocess.Popen(
        [*driver_argv(), "--config", str(env.config_path), "pool", "run"],
        env=env.process_env(),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def stop_service(env: Env, service: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM, wait for the drain; True if it said it stopped."""
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
    try:
        service.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        service.kill()
        service.wait()
        return False
    text = (env.base / "pool-service.log").read_text(errors="replace")
    return "pool: stopped" in text


def pool_status(env: Env) -> dict[str, Any]:
    out = env.driver("pool", "status", "--json")
    if out.returncode != 0:
        raise RuntimeError(f"pool status failed: {out.stderr.strip()}")
    return dict(json.loads(out.stdout))


def idle_count(env: Env) -> int:
    return int(pool_status(env)["counts"]["idle"])


def wait_idle(env: Env, wanted: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while idle_count(env) < wanted:
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
    return True


def run_jobs(env: Env, scenario: Scenario, outcome: Outcome) -> None:
    """Job i starts at i x interval, each in its own thread; returns when all ended."""
    outcome.results = [None] * scenario.jobs

    def one(i: int) -> None:
        try:
            outcome.results[i] = env.run_job(Job(script=['echo "job on $(hostname)"']))
        except Exception as e:  # reported as "crashed"
            outcome.errors.append(f"job {i}: {type(e).__name__}: {e}")

    threads = []
    start = time.monotonic()
    for i in range(scenario.jobs):
        time.sleep(max(0.0, start + i * scenario.interval - time.monotonic()))
        thread = threading.Thread(target=one, args=(i,), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()


def measure(scenario: Scenario, args: argparse.Namespace) -> Outcome:
    pool = {
        "idle_count": args.idle if scenario.pool else 0,
        "check_interval": 0.5,
        "health_interval": 30,
        "idle_time": 600,
        "drain_on_stop": True,
    }
    create_timeout = 2 * args.create_delay + 60
    env = new_world(pool=pool, create={"timeout": create_timeout})
    outcome = Outcome(scenario)
    service: subprocess.Popen[bytes] | None = None
    try:
        if not args.cold_storage:
            # A runner host that has made machines before: docker-machine's CA and
            # client certs exist, so creates do not queue behind the first one.
            warmup = env.run_job(Job(script=["true"]))
            if warmup.outcome != "success":
                raise RuntimeError(f"warm-up job: {warmup.describe()}")
        env.faults(create_delay=args.create_delay)
        if scenario.pool:
            service = start_service(env)
            if scenario.warm and not wait_idle(env, args.idle, 3 * args.create_delay + 120):
                raise RuntimeError(f"the pool never had {args.idle} ready machines")
        sampler = Sampler(env)
        sampler.start()
        try:
            run_jobs(env, scenario, outcome)
            if scenario.pool:
                outcome.back_at_target = wait_idle(env, args.idle, 3 * args.create_delay + 120)
        finally:
            area, window, peak = sampler.finish()
        outcome.machine_seconds, outcome.window, outcome.peak = area, window, peak
        if scenario.pool:
            status = pool_status(env)
            outcome.idle_at_end = int(status["counts"]["idle"])
            outcome.service_errors = list(status["service"].get("errors", []))
        else:
            outcome.idle_at_end = len(env.machines())
        for result in outcome.results:
            if result is None:
                continue
            seconds = sum(r.seconds for r in result.execs("prepare"))
            outcome.prepare.append(seconds)
            if HIT in result.job_log:
                outcome.hit_prepare.append(seconds)
            outcome.hits += HIT in result.job_log
            outcome.misses += MISS in result.job_log
            outcome.claim += [float(m) for m in CLAIM.findall(result.job_log)]
    finally:
        try:
            if service is not None:
                outcome.service_stopped = stop_service(env, service, create_timeout + 120)
            outcome.left_after_stop = env.machines()
        finally:
            if service is not None and service.poll() is None:
                service.kill()
            destroy_world(env)
    return outcome


def table(outcomes: list[Outcome]) -> None:
    def cell(o: Outcome, what: str) -> str:
        s = o.scenario
        if what == "jobs":
            return f"{s.jobs}" + (f" @{s.interval:g}s" if s.interval else " at once")
        if what in ("prepare median s", "prepare p95 s"):
            if not o.prepare:
                return "-"
            value = statistics.median(o.prepare) if "median" in what else percentile(o.prepare, 95)
            return f"{value:.2f}"
        if what in ("pool-hit prepare median s", "pool-hit prepare p95 s"):
            if not o.hit_prepare:
                return "-"
            hits = o.hit_prepare
            value = statistics.median(hits) if "median" in what else percentile(hits, 95)
            return f"{value:.3f}"
        if what == "driver claim median s":
            return f"{statistics.median(o.claim):.3f}" if o.claim else "-"
        if what == "prepare max s":
            return f"{max(o.prepare):.2f}" if o.prepare else "-"
        if what == "from the pool":
            if not s.pool:
                return "-"
            return f"{o.hits}/{len(o.prepare)} ({100 * o.hits / max(1, len(o.prepare)):.0f}%)"
        if what == "outcomes":
            return ",".join(f"{k} {v}" for k, v in sorted(o.outcomes.items()))
        if what == "machine-s per job":
            return f"{o.machine_seconds / s.jobs:.1f}"
        if what == "mean machines alive":
            return f"{o.machine_seconds / o.window:.2f}" if o.window else "-"
        if what == "peak machines":
            return str(o.peak)
        if what == "window s":
            return f"{o.window:.0f}"
        if what == "idle left at end":
            return str(o.idle_at_end)
        if what == "pool back at target":
            return "-" if o.back_at_target is None else ("yes" if o.back_at_target else "NO")
        if what == "machines after stop":
            return str(len(o.left_after_stop))
        raise KeyError(what)

    rows = [
        "jobs",
        "prepare median s",
        "prepare p95 s",
        "prepare max s",
        "from the pool",
        "pool-hit prepare median s",
        "pool-hit prepare p95 s",
        "driver claim median s",
        "outcomes",
        "machine-s per job",
        "mean machines alive",
        "peak machines",
        "window s",
        "idle left at end",
        "pool back at target",
        "machines after stop",
    ]
    cells = {name: [cell(o, name) for o in outcomes] for name in rows}
    widths = [
        max(len(o.scenario.name), *(len(cells[name][i]) for name in rows))
        for i, o in enumerate(outcomes)
    ]
    first = max(len(name) for name in rows)
    names = [o.scenario.name for o in outcomes]
    for label, values in [("", names), *((name, cells[name]) for name in rows)]:
        line = "  ".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True))
        print(f"{label:<{first}}  {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--create-delay", type=float, default=30.0, help="seconds per create")
    parser.add_argument("--jobs", type=int, default=10, help="jobs per scheduled scenario")
    parser.add_argument("--idle", type=int, default=4, help="[pool] idle_count")
    parser.add_argument(
        "--intervals", default="12,4", help="seconds between arrivals, comma-separated"
    )
    parser.add_argument("--no-pool-interval", type=float, default=None)
    parser.add_argument("--empty-jobs", type=int, default=3, help="jobs arriving at once")
    parser.add_argument(
        "--cold-storage",
        action="store_true",
        help="start each world with no docker-machine certs (a first boot): the first "
        "create then holds the driver's cert lock for its whole duration",
    )
    parser.add_argument(
        "--scenarios",
        default="no-pool,empty,warm",
        help="which to run, comma-separated: no-pool, empty, warm (default: all)",
    )
    args = parser.parse_args()
    chosen = {x.strip() for x in args.scenarios.split(",") if x.strip()}
    if not chosen or chosen - {"no-pool", "empty", "warm"}:
        parser.error("--scenarios takes no-pool, empty and warm")
    intervals = [float(x) for x in args.intervals.split(",") if x.strip()]
    if not intervals or args.idle < 1 or args.jobs < 1:
        parser.error("need at least one interval, --idle >= 1 and --jobs >= 1")
    no_pool_interval = (
        args.no_pool_interval if args.no_pool_interval is not None else min(intervals)
    )

    scenarios = [
        *(
            [Scenario("no pool", args.jobs, no_pool_interval, pool=False, warm=False)]
            if "no-pool" in chosen
            else []
        ),
        *(
            [Scenario("pool empty", args.empty_jobs, 0.0, pool=True, warm=False)]
            if "empty" in chosen
            else []
        ),
        *(
            Scenario(f"warm pool /{i:g}s", args.jobs, i, pool=True, warm=True)
            for i in (intervals if "warm" in chosen else [])
        ),
    ]
    print(
        f"create delay {args.create_delay:g}s, idle_count {args.idle}, "
        f"machines sampled every {SAMPLE_EVERY:g}s"
    )
    outcomes: list[Outcome] = []
    failed = False
    for scenario in scenarios:
        started = time.monotonic()
        try:
            outcomes.append(measure(scenario, args))
        except Exception as e:
            print(f"{scenario.name}: ERROR {type(e).__name__}: {e}", flush=True)
            failed = True
            continue
        print(f"  {scenario.name}: done in {time.monotonic() - started:.0f}s", flush=True)
    print()
    if outcomes:
        table(outcomes)
    print()

    for o in outcomes:
        for error in o.errors:
            print(f"{o.scenario.name}: {error}")
        for result in o.results:
            if result is not None and result.outcome != "success":
                print(f"{o.scenario.name}: job {result.job.id} {result.describe()}")
        for error in o.service_errors:
            print(f"{o.scenario.name}: pool service error: {error}")
        if o.service_stopped is False:
            print(f"{o.scenario.name}: the pool service did not stop cleanly on SIGTERM")
        if o.left_after_stop:
            print(f"{o.scenario.name}: machines left after the end: {o.left_after_stop}")
        failed |= not o.all_succeeded or bool(o.left_after_stop) or o.service_stopped is False

    slowest = max(intervals)
    warm = (
        None
        if "warm" not in chosen
        else next((o for o in outcomes if o.scenario.warm and o.scenario.interval == slowest), None)
    )
    if "warm" not in chosen:
        pass
    elif warm is None or not warm.prepare:
        print(f"FAIL warm pool /{slowest:g}s: no measurement")
        failed = True
    else:
        med, p95 = statistics.median(warm.prepare), percentile(warm.prepare, 95)
        for label, value, limit in (("median", med, 1.0), ("p95", p95, 2.0)):
            ok = value < limit
            failed |= not ok
            print(
                f"{'PASS' if ok else 'FAIL'} warm pool /{slowest:g}s: prepare {label} "
                f"{value:.3f}s (target < {limit:g}s)"
            )
    # A claim itself (issue 19): the prepares that took a ready machine, every interval.
    hits = [t for o in outcomes if o.scenario.warm for t in o.hit_prepare]
    if "warm" in chosen:
        if not hits:
            print("FAIL pool-hit prepare: no job took a ready machine")
            failed = True
        else:
            med, p95 = statistics.median(hits), percentile(hits, 95)
            for label, value, limit in (("median", med, 0.25), ("p95", p95, 0.5)):
                ok = value <= limit
                failed |= not ok
                print(
                    f"{'PASS' if ok else 'FAIL'} pool-hit prepare {label} {value:.3f}s over "
                    f"{len(hits)} hits (target <= {limit:g}s)"
                )
    all_ok = all(o.all_succeeded for o in outcomes) and len(outcomes) == len(scenarios)
    print(f"{'PASS' if all_ok else 'FAIL'} every job succeeded")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
