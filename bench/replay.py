"""Replay a week of CI jobs through the warm pool's real control code on a virtual clock.

    .venv/bin/python -m bench.replay --jobs 2                 # the standard week, seed 1
    .venv/bin/python -m bench.replay --jobs 2 --dag 1         # every staged pipeline a DAG
    .venv/bin/python -m bench.replay --jobs 2 --managers 2    # two runner managers
    .venv/bin/python -m bench.replay --jobs 2 --managers 2 --watch-all 1   # hearing all pipelines
    .venv/bin/python -m bench.replay --trace jobs.csv         # your own jobs
    .venv/bin/python -m bench.replay --write-trace week.csv   # the week as CSV

The model (driver.pool.replay; `gitlab-machine-driver pool replay` is the
same for admins): the week's shape and knobs are driver.pool.replay.week's
(every field of its Shape is a flag here), the simulation
driver.pool.replay.simulate, the search driver.pool.replay.compare. For each
of five policies (idle_count, periods, periods + lookahead, demand, demand +
lookahead) the cheapest setting reaching --target of jobs from the pool is
searched in hindsight on the very trace and printed (and the floor: perfect
foresight, a machine made one create before each job, never idle): hit rate, prepare
p50/p95/p99, idle machine-seconds per job (ready with no job, and the whole
life of machines removed unused) and total machine-seconds per job
(creating, idle and running jobs: what the cloud bills).

Then the issue's goals, each PASS or FAIL, measured on total machine-seconds:
demand + lookahead within 5% of periods + lookahead, and at least 40% below
periods without lookahead.

--tier N [N...]: also stopped tiers of N machines (made ahead, kept stopped:
a start of --tier-start-median s instead of a create, for the pool's creates
and jobs that miss), compared with none on cost per job at the prices
--running-per-hour and --stopped-per-hour, each at the lowest demand target
whose prepare p95 is at most --tier-p95 s.

--tier-starts jobs: only jobs that miss start a stopped machine, as the pool
service does today (the model's default also has the pool's creates start
them). --tier-only: that comparison alone.

--fanout: a fan-out of 20 jobs into a pool of 4 ready machines, 200 rounds,
with no [limits] and with max_creating just enough for the misses: their
prepare against their own create.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from pathlib import Path

from driver.pool.replay.compare import (
    Comparison,
    Summary,
    idle_pool,
    oracle,
    table,
    unforeseen,
    versus,
)
from driver.pool.replay.simulate import Replay, StoppedTier, Timing, percentile
from driver.pool.replay.trace import Trace, TraceJob, read_trace, write_trace
from driver.pool.replay.week import Shape, working_week
from driver.settings import LimitSettings


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The week's knobs: see driver/pool/replay/week.py.",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trace", type=Path, help="a CSV of jobs (see driver.pool.replay.trace)")
    parser.add_argument("--runner", type=int, help="with a GitLab export: this runner's id")
    parser.add_argument("--write-trace", type=Path, help="write the trace as CSV, and stop")
    parser.add_argument("--target", type=float, default=0.95, help="hit rate compared at")
    parser.add_argument("--jobs", type=int, default=1, help="replays run at once")
    parser.add_argument("--verbose", action="store_true", help="print each replay as it ends")
    for field in dataclasses.fields(Shape):
        default = getattr(Shape(), field.name)
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(default), default=default
        )
    for field in dataclasses.fields(Timing):
        default = getattr(Timing(), field.name)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=float, default=default)
    parser.add_argument(
        "--tier", type=int, nargs="*", default=[], help="stopped tier sizes to compare"
    )
    parser.add_argument("--tier-p95", type=float, default=45.0, help="prepare p95 compared at")
    parser.add_argument("--tier-start-median", type=float, default=20.0)
    parser.add_argument("--tier-start-p95", type=float, default=40.0)
    parser.add_argument("--running-per-hour", type=float, default=1.0)
    parser.add_argument("--stopped-per-hour", type=float, default=0.05)
    parser.add_argument(
        "--tier-starts",
        choices=["pool-and-jobs", "jobs"],
        default="pool-and-jobs",
        help="who starts stopped machines: the pool's creates and jobs that miss (the "
        "model), or only jobs that miss (the pool service as built)",
    )
    parser.add_argument(
        "--tier-only", action="store_true", help="only the stopped tier's comparison"
    )
    parser.add_argument("--fanout", action="store_true", help="also the fan-out check")
    parser.add_argument(
        "--learn",
        action="store_true",
        help="also demand with pipeline shapes learned from the jobs served (no [gitlab])",
    )
    return parser.parse_args()


def goal(ok: bool, text: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'} {text}")
    return ok


def goals(found: dict[str, Summary | None], target: float) -> bool:
    demand, periods = found["demand + lookahead"], found["periods"]
    ahead = found["periods + lookahead"]
    if demand is None or periods is None or ahead is None:
        print(f"FAIL not every policy reaches {100 * target:g}%")
        return False
    within = demand.total_seconds <= 1.05 * ahead.total_seconds
    below = 1 - demand.total_seconds / periods.total_seconds
    ok = goal(
        within,
        f"demand + lookahead within 5% of periods + lookahead: {versus(demand, ahead)} "
        f"({demand.total_per_job:.0f} vs {ahead.total_per_job:.0f} total machine-s per job)",
    )
    return (
        goal(
            below >= 0.40,
            f"demand + lookahead at least 40% below periods: {versus(demand, periods)} "
            f"({demand.total_per_job:.0f} vs {periods.total_per_job:.0f} total, "
            f"{demand.idle_per_job:.0f} vs {periods.idle_per_job:.0f} idle machine-s per job)",
        )
        and ok
    )


def stopped_tier(trace: Trace, timing: Timing, args: argparse.Namespace) -> None:
    """demand + lookahead with and without a stopped tier, on cost per job, each at its
    lowest target whose prepare p95 is within --tier-p95 seconds."""
    tier = StoppedTier(
        args.tier,
        args.tier_start_median,
        args.tier_start_p95,
        args.running_per_hour,
        args.stopped_per_hour,
        pool_starts=args.tier_starts == "pool-and-jobs",
    )
    print()
    print(
        f"Stopped tier (start median {tier.start_median:g} s, p95 {tier.start_p95:g} s; "
        f"per machine-hour running {tier.running_per_hour:g}, stopped "
        f"{tier.stopped_per_hour:g}; started by {args.tier_starts}), demand + lookahead at "
        f"prepare p95 <= {args.tier_p95:g} s:"
    )
    for size in sorted({0, *args.tier}):
        priced = dataclasses.replace(tier, size=size)
        comparison = Comparison(
            trace, timing, seed=args.seed, target=args.target, jobs=args.jobs, tier=priced
        )
        try:
            found = comparison.demand(True, lambda s: s.prepare[1] <= args.tier_p95)
        finally:
            comparison.close()
        if found is None:
            print(f"  {size} stopped: no target reaches it")
            continue
        p50, p95, p99 = found.prepare
        print(
            f"  {size} stopped: {found.label.split(': ')[-1]}, {100 * found.hit_rate:.1f}% from "
            f"the pool, prepare p50/p95/p99 {p50:.0f}/{p95:.0f}/{p99:.0f} s, "
            f"{found.total_per_job:.0f} running machine-s per job, cost per job "
            f"{found.cost_per_job:.4f}",
            flush=True,
        )


def fanout(timing: Timing, seed: int, max_creating: int) -> tuple[list[float], list[float]]:
    """20 jobs into 4 ready machines, 200 rounds: the misses' prepare and own create."""
    creates = timing.creates
    waits, own = [], []
    for round_ in range(200):
        rng = random.Random(seed * 100003 + round_)
        jobs = sorted(
            (TraceJob(60.0 + rng.uniform(0.0, 5.0), 300.0, creates.draw(rng)) for _ in range(20)),
            key=lambda j: j.arrival,
        )
        replay = Replay(
            Trace(jobs, 3600.0, "fan-out"),
            idle_pool(4, 4, timing),
            LimitSettings(max_creating=max_creating),
            seed=seed + round_,
            creates=creates,
            claim_seconds=timing.claim_seconds,
            tick=timing.tick,
            start_ready=4,
        )
        for r in replay.run("fan-out").runs:
            if not r.hit and r.prepared is not None:
                waits.append(r.prepared)
                own.append(r.job.create)
    return waits, own


def main() -> int:
    args = arguments()
    timing = Timing(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Timing)})
    shape = Shape(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Shape)})
    if args.trace:
        trace = read_trace(args.trace, timing.creates, args.seed, args.runner)
    else:
        trace = working_week(shape, args.seed, timing.creates, timing.claim_seconds)
    if args.write_trace:
        write_trace(trace.jobs, args.write_trace)
        print(f"wrote {len(trace.jobs)} jobs to {args.write_trace}")
        return 0
    print(f"trace: {trace.describe}", flush=True)
    if args.tier_only:
        stopped_tier(trace, timing, args)
        return 0

    def progress(s: Summary) -> None:
        if args.verbose:
            print(
                f"  {s.label:<44} hit {100 * s.hit_rate:5.1f}%  idle/job {s.idle_per_job:6.0f}s"
                f"  total/job {s.total_per_job:6.0f}s",
                flush=True,
            )

    comparison = Comparison(
        trace, timing, seed=args.seed, target=args.target, jobs=args.jobs, progress=progress
    )
    try:
        rows = comparison.all()
        if args.learn:
            rows.append(("demand + learned shapes", comparison.demand(False, learn=True)))
        rows.append(("oracle (the floor)", oracle(trace, timing)))
        rows.append(("bound (unannounced jobs unforeseen)", unforeseen(trace, timing, args.target)))
    finally:
        comparison.close()
    print()
    print("\n".join(table(rows, args.target)))
    print()
    ok = goals(dict(rows), args.target)
    learned, periods = dict(rows).get("demand + learned shapes"), dict(rows)["periods"]
    if learned is not None and periods is not None:
        ok &= goal(
            learned.total_seconds < periods.total_seconds,
            f"demand + learned shapes (no [gitlab]) below periods: {versus(learned, periods)}",
        )
    floor, best = dict(rows)["oracle (the floor)"], dict(rows)["periods"]
    if floor is not None and best is not None:
        print(
            f"The floor (perfect foresight: each machine made one create before its job, never "
            f"idle) is {floor.total_per_job:.0f} total machine-s per job, "
            f"{100 * (1 - floor.total_seconds / best.total_seconds):.0f}% below periods "
            f"({best.total_per_job:.0f}): 40% below periods is {0.6 * best.total_per_job:.0f}."
        )
    bound = dict(rows)["bound (unannounced jobs unforeseen)"]
    if bound is not None:  # always: a row
        unseen = bound.label.split(": ", 1)[-1]
        print(
            f"The bound (driver/pool/replay/bound.py): a pool that cannot see jobs coming "
            f"before GitLab announces them ({unseen}) pays at least "
            f"{bound.total_per_job:.0f} total machine-s per job at {100 * args.target:g}%, "
            f"even meeting every announced job at its arrival and replacing each ready "
            f"machine the instant it is taken."
        )
        if best is not None:
            room = 0.6 * best.total_seconds - bound.total_seconds
            print(
                f"40% below periods is {'within' if room >= 0 else 'BEYOND'} the reach of such a "
                f"pool: the bound is {abs(room) / max(1, bound.jobs):.0f} machine-s per job "
                f"{'below' if room >= 0 else 'above'} it."
            )
    if args.tier:
        stopped_tier(trace, timing, args)
    if args.fanout:
        for max_creating in (0, 16):
            waits, own = fanout(timing, args.seed, max_creating)
            limit = f"max_creating {max_creating}" if max_creating else "no [limits]"
            ok &= goal(
                percentile(waits, 95) <= percentile(own, 95) + 10,
                f"fan-out of 20 into a pool of 4 ({limit}, {len(waits)} misses): their prepare "
                f"p95 {percentile(waits, 95):.0f}s vs their own create p95 "
                f"{percentile(own, 95):.0f}s + 10 s",
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
