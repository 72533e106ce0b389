"""The stopped tier on the double: the prepare of a job that misses the ready pool and
starts a stopped machine, against one that misses and creates, side by side in one run.

    PATH=$PWD/testing/bin:$PATH .venv/bin/python -m bench.stopped

One world (testing/world.py), a pool service with [pool] idle_count = 0 and
stopped_count = 1. Each round: wait until the service has its stopped machine,
then job A (it starts that machine), then at once job B (the tier is empty until
the service has made another: B creates its own). Prepare seconds are the runner
emulation's prepare records; median of --rounds rounds each, and their ratio.

The double's times are not a cloud's: a create sleeps --create-delay seconds, a
start --start-delay seconds, and a VM boots in well under a second. What this
measures is the driver's own path around them (claim, start, address read
again, SSH with the pinned key, engine check). The cost model is the replay
(`gitlab-machine-driver pool replay --tier`, docs/pool.md), not this figure.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys

from bench.pool import pool_status, start_service, stop_service
from testing.runner import Job, JobResult
from testing.world import Env, destroy_world, new_world, wait_for

STARTED = re.compile(r"Started machine \S+ from the warm pool's stopped tier")


def stopped_count(env: Env) -> int:
    return int(pool_status(env)["counts"]["stopped"])


def prepare_seconds(result: JobResult) -> float:
    if result.outcome != "success":
        raise RuntimeError(f"a job failed: {result.describe()}")
    return sum(r.seconds for r in result.execs("prepare"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--create-delay", type=float, default=10.0, help="seconds per create")
    parser.add_argument("--start-delay", type=float, default=2.0, help="seconds per start")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine-check", action="store_true", help="[docker] check = true")
    args = parser.parse_args()
    pool = {"idle_count": 0, "stopped_count": 1, "check_interval": 0.5, "drain_on_stop": True}
    timeout = 2 * args.create_delay + 60
    env = new_world(pool=pool, create={"timeout": timeout}, docker={"check": args.engine_check})
    service: subprocess.Popen[bytes] | None = None
    starts: list[float] = []
    creates: list[float] = []
    try:
        warmup = env.run_job(Job(script=["true"]))  # docker-machine's certs exist
        prepare_seconds(warmup)
        env.faults(create_delay=args.create_delay, start_delay=args.start_delay)
        service = start_service(env)
        for _ in range(args.rounds):
            wait_for(lambda: stopped_count(env) >= 1, 3 * args.create_delay + 120)
            started = env.run_job(Job(script=['echo "job on $(hostname)"']))
            if not STARTED.search(started.job_log):
                raise RuntimeError("job A did not start the stopped machine")
            starts.append(prepare_seconds(started))
            created = env.run_job(Job(script=['echo "job on $(hostname)"']))
            if STARTED.search(created.job_log):
                raise RuntimeError("job B found a stopped machine: the service was too quick")
            creates.append(prepare_seconds(created))
    finally:
        try:
            if service is not None:
                stop_service(env, service, timeout + 120)
        finally:
            if service is not None and service.poll() is None:
                service.kill()
            destroy_world(env)
    start, create = statistics.median(starts), statistics.median(creates)
    print(
        f"double: create {args.create_delay:g}s, start {args.start_delay:g}s, "
        f"[docker] check {'on' if args.engine_check else 'off'}; {args.rounds} round(s)"
    )
    print(f"miss, starts a stopped machine: prepare {start:.2f}s (median)")
    print(f"miss, creates its own machine:  prepare {create:.2f}s (median)")
    print(f"ratio start/create: {start / create:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
