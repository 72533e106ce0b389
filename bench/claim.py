"""Where the time of a pool-hit prepare goes, on the double.

    PATH=$PWD/testing/bin:$PATH .venv/bin/python -m bench.claim

One world (testing/world.py) with a warm pool of --idle machines; --jobs jobs
run one after the other, each taking a ready machine (the pool refills between
them). Each prepare runs under cProfile (`python -m cProfile -o FILE -m driver
... prepare`); the profile is cut into the parts below, as the median over the
jobs, in milliseconds. Under the profiler everything runs slower than without:
the shares, not the sums, are the figure; bench/pool.py gives the prepare time
itself. "interpreter" is `python -c pass`, timed apart; "imports" is the
profile's whole time less the stage's main(): importing driver.main and the
stage's modules (a module imported lazily inside main counts in its part).
"""

from __future__ import annotations

import argparse
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
    ("settings (TOML, validation)", "driver/settings.py", "load_settings"),
    ("the job's payload", "driver/contract.py", "read_job"),
    ("admin log set-up", "driver/log.py", "setup"),
    ("state dir owner checks", "driver/state_owner.py", "claim"),
    ("job lock", "driver/state.py", "acquire"),
    ("leftovers of an earlier attempt", "driver/stages/prepare.py", "_remove_machines"),
    ("claim (rename, pool record)", "driver/state.py", "claim"),
    ("job record writes", "driver/state.py", "save"),
    ("known_hosts, ssh_config", "driver/ssh.py", "write_config"),
    ("liveness check (ssh true)", "driver/ssh.py", "run"),
    ("metrics (counters, histogram)", "driver/metrics.py", "count"),
    ("metrics (prepare histogram)", "driver/metrics.py", "observe"),
    ("whole prepare", "driver/stages/prepare.py", "main"),
]


def cumulative(stats: pstats.Stats, suffix: str, function: str) -> float:
    total = 0.0
    raw = stats.stats  # type: ignore[attr-defined]
    for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in raw.items():
        if name != function or not path.endswith(suffix):
            continue
        total += ct
    return total


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
            stats = pstats.Stats(str(profile))
            total = stats.total_tt  # type: ignore[attr-defined]
            before_main.append(total - cumulative(stats, "driver/stages/prepare.py", "main"))
            for name, suffix, function in PARTS:
                parts[name].append(cumulative(stats, suffix, function))
    finally:
        if service is not None:
            stop_pool(service)
        destroy_world(env)
    print(f"pool-hit prepare under cProfile, median of {args.jobs} jobs, ms")
    print(
        f"{'interpreter start (python -c pass, no profiler)':<50} "
        f"{1000 * interpreter_seconds(10):8.1f}"
    )
    imports = interpreter_seconds(10, "import driver.main, driver.stages.prepare")
    print(f"{'... and imports of driver.main, the stage (no profiler)':<50} {1000 * imports:8.1f}")
    print(f"{'imports, before the stage runs':<50} {1000 * statistics.median(before_main):8.1f}")
    for name, values in parts.items():
        print(f"{name:<50} {1000 * statistics.median(values):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
