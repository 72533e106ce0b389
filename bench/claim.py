"""Where the time of a pool-hit prepare goes, on the double.

    PATH=$PWD/testing/bin:$PATH .venv/bin/python -m bench.claim

One world (testing/world.py) with a warm pool of --idle machines; --jobs jobs
run one after the other, each taking a ready machine (the pool refills between
them). With the pool service running, prepare asks it over its claim socket
(driver.stages.prepare_fast) and the service takes the machine
(driver.pool.claims): the prepare process does only Python's start, a few
imports and the request. Each prepare runs under cProfile (`python -m cProfile
-o FILE -m driver ... prepare`); its profile is cut into the parts below, as
the median over the jobs, in milliseconds. Under the profiler everything runs
slower than without: the shares, not the sums, are the figure; bench/pool.py
gives the prepare time itself. "interpreter" is `python -c pass`, timed apart;
"imports" is the profile's whole time less driver.main's main(). The service's
share (not profiled: its own process) is read from the admin log: its answer
(`claim_answered`: the job's payload, owner checks, lock, claim) and, within
it, the claim itself (`claimed_from_pool`: rename, liveness check, writes).
"""

from __future__ import annotations

import argparse
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testing.runner import Job
from testing.world import Env, destroy_world, new_world, stop_pool, wait_for

ROOT = Path(__file__).resolve().parents[1]

# (part, file suffix, function name): the cumulative time of that function.
PARTS = [
    (
        "the fast path (config, request, answer, lines)",
        "driver/stages/prepare_fast.py",
        "claimed_by_pool",
    ),
    ("of which the service's answer (socket round trip)", "driver/stages/prepare_fast.py", "ask"),
    ("of which the state dir from the config (TOML)", "tomllib/_parser.py", "load"),
    ("of which the job log lines", "driver/stages/prepare_fast.py", "reply_says_claimed"),
    ("whole prepare (driver.main's main)", "driver/main.py", "main"),
]
# (part, admin log event): the service's seconds, by the event's "seconds".
SERVICE_PARTS = [
    ("in the service: its answer (payload, checks, lock, claim)", "claim_answered"),
    ("in the service: of which the claim (rename, check, writes)", "claimed_from_pool"),
]


def cumulative(stats: pstats.Stats, suffix: str, function: str) -> float:
    total = 0.0
    raw = stats.stats  # type: ignore[attr-defined]
    for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in raw.items():
        if name != function or not path.endswith(suffix):
            continue
        total += ct
    return total


def service_seconds(env: Env, job_id: int, event: str) -> list[float]:
    """The seconds of the service's ``event`` lines for the job (admin log)."""
    found = []
    for line in (env.state_dir / "driver.log").read_text().splitlines():
        entry = json.loads(line)
        mine = (entry.get("event"), entry.get("job_id"), entry.get("via"))
        if mine == (event, job_id, "pool_service"):
            found.append(float(entry["seconds"]))
    return found


def interpreter_seconds(runs: int, code: str = "pass") -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs, one after the other")
    parser.add_argument("--idle", type=int, default=2, help="[pool] idle_count")
    args = parser.parse_args()
    pool = {"idle_count": args.idle, "check_interval": 0.5, "health_interval": 30}
    env: Env = new_world(pool={**pool, "drain_on_stop": True})
    out = Path(tempfile.mkdtemp(prefix="claim-prof"))
    service = None
    parts: dict[str, list[float]] = {name: [] for name, _, _ in PARTS}
    before_main: list[float] = []
    service_parts: dict[str, list[float]] = {name: [] for name, _ in SERVICE_PARTS}
    try:
        if env.run_job(Job(script=["true"])).outcome != "success":  # docker-machine's certs
            raise RuntimeError("warm-up job failed")
        service = env.start_pool(quiet=True)
        for i in range(args.jobs):
            wait_for(lambda: int(env.pool_status()["counts"]["idle"]) >= args.idle, 300)
            profile = out / f"prepare-{i}.prof"
            argv = ["-m", "cProfile", "-o", str(profile), "-m", "driver"]
            argv += ["--config", str(env.config_path), "prepare"]
            result = env.runner(prepare_args=argv).run_job(Job(script=["true"]))
            if result.outcome != "success" or "from the warm pool" not in result.job_log:
                raise RuntimeError(f"job {i}: not a pool hit: {result.describe()}")
            for name, event in SERVICE_PARTS:
                service_parts[name] += service_seconds(env, result.job.id, event)
            stats = pstats.Stats(str(profile))
            total = stats.total_tt  # type: ignore[attr-defined]
            before_main.append(total - cumulative(stats, "driver/main.py", "main"))
            for name, suffix, function in PARTS:
                parts[name].append(cumulative(stats, suffix, function))
    finally:
        if service is not None:
            stop_pool(service)
        destroy_world(env)
    print(f"pool-hit prepare under cProfile, median of {args.jobs} jobs, ms")
    print(
        f"{'interpreter start (python -c pass, no profiler)':<60} "
        f"{1000 * interpreter_seconds(10):8.1f}"
    )
    imports = interpreter_seconds(10, "import driver.main, driver.stages.prepare_fast")
    print(
        f"{'... and imports of driver.main, the fast path (no profiler)':<60} {1000 * imports:8.1f}"
    )
    print(f"{'imports, before main() runs':<60} {1000 * statistics.median(before_main):8.1f}")
    for name, values in parts.items():
        print(f"{name:<60} {1000 * statistics.median(values):8.1f}")
    for name, values in service_parts.items():
        figure = f"{1000 * statistics.median(values):8.1f}" if values else "     n/a"
        print(f"{name:<60} {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
