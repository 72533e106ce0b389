"""pool replay: the admin's own jobs (or the built-in week) through every pool policy.

Each policy is searched, in hindsight on the trace, for its cheapest setting
reaching --target of jobs from the pool (driver.pool.replay.compare), and the
comparison is printed as a Markdown table, with the demand policy on pipeline
shapes learned from the jobs served (the pool without [gitlab]) and the floor
no policy can beat (perfect foresight), and the bound for a pool that
cannot see coming the jobs GitLab does not announce. Nothing on this host is touched:
no config, no machines.
"""

from __future__ import annotations

import argparse
import sys

from driver.errors import ConfigError
from driver.pool.replay.compare import Comparison, Summary, oracle, table, unforeseen, versus
from driver.pool.replay.simulate import Timing
from driver.pool.replay.trace import TraceError, read_trace, write_trace
from driver.pool.replay.week import Shape, working_week


def main(args: argparse.Namespace) -> int:
    try:
        timing = Timing(
            create_median=args.create_median,
            create_p95=args.create_p95,
            idle_time=args.idle_time,
        )
        creates = timing.creates
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not 0.5 <= args.target < 1:
        raise ConfigError(f"--target {args.target:g}: a hit rate from 0.5 to 0.999")
    try:
        if args.trace is not None:
            trace = read_trace(args.trace, creates, args.seed, args.runner)
        else:
            trace = working_week(Shape(days=args.days), args.seed, creates, timing.claim_seconds)
    except (OSError, TraceError) as e:
        raise ConfigError(f"cannot read the trace: {e}") from None
    if args.write_trace is not None:
        write_trace(trace.jobs, args.write_trace)
        print(f"wrote {len(trace.jobs)} jobs to {args.write_trace}")
        return 0
    print(f"trace: {trace.describe}", flush=True)

    def progress(summary: Summary) -> None:
        print(
            f"  {summary.label}: {100 * summary.hit_rate:.1f}% from the pool, "
            f"{summary.total_per_job:.0f} machine-s per job",
            file=sys.stderr,
            flush=True,
        )

    comparison = Comparison(
        trace, timing, seed=args.seed, target=args.target, jobs=args.jobs, progress=progress
    )
    try:
        rows = comparison.all()
        # Without [gitlab]: the pool service learns pipeline shapes from the jobs it serves.
        rows.append(("demand + learned shapes", comparison.demand(False, learn=True)))
        rows.append(("oracle (the floor)", oracle(trace, timing)))
        rows.append(("bound (unannounced jobs unforeseen)", unforeseen(trace, timing, args.target)))
    finally:
        comparison.close()
    print()
    print(
        f"Each policy at its cheapest setting (searched on this very trace) reaching "
        f"{100 * args.target:g}% of jobs from the pool; machine-seconds: idle = ready "
        f"with no job, total = creating + idle + running jobs."
    )
    print()
    for line in table(rows, args.target):
        print(line)
    found = dict(rows)
    print()
    print(
        f"demand + lookahead against periods + lookahead: "
        f"{versus(found['demand + lookahead'], found['periods + lookahead'])}"
    )
    against = versus(found["demand + lookahead"], found["periods"])
    print(f"demand + lookahead against periods: {against}")
    learned = versus(found["demand + learned shapes"], found["periods"])
    print(f"demand + learned shapes (no [gitlab]) against periods: {learned}")
    print(
        "oracle: perfect foresight, each machine made one create before its job and never "
        "idle: no policy does better"
    )
    print(
        "bound: the least a pool pays that cannot see coming the jobs GitLab does not "
        "announce ahead (first stages, retries, jobs played by a person), even meeting every "
        "announced job at its arrival: no real pool does better"
    )
    return 0
