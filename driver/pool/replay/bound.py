"""The least any pool can cost when it cannot see some jobs coming.

The oracle (driver.pool.replay.compare) knows every arrival. No real pool
does: GitLab announces a pipeline's later stages, but the first stage of a
pipeline (and a job retried, or played by a person) reaches the runner
seconds after it exists, far less than a create. Those jobs are
*unannounced*, and a pool can only keep machines ready for them.

The bound: a fan-out of K unannounced jobs arriving while r machines are
ready finds min(K, r) of them. Arrivals the pool cannot foresee find the
pool as it is on average at that hour (Poisson arrivals see time averages),
so over an hour with c fan-outs a pool holding r ready machines on average
serves at most c * E[min(K, r)] of them (the function is concave: holding
r steadily serves more than any mix with that mean), and pays r * 3600
idle machine-seconds. The cheapest such r for each hour, reaching the jobs
from the pool that `target` needs once every announced job is served at the
floor (never idle, never missed), is the bound: what a pool that knew each
hour's rate and the fan-out sizes exactly, and met every announced job at
its arrival, would still pay. Machines made and never used cost it nothing:
it is below any real pool.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from driver.pool.replay.trace import TraceJob

HOUR = 3600.0


def announced_ahead(job: TraceJob) -> bool:
    """Whether the pool learns of `job` before it arrives (what GitLab tells)."""
    return (
        job.announced is not None
        and not math.isnan(job.announced)
        and (job.announced < job.arrival)
    )


@dataclass(frozen=True)
class Bound:
    jobs: int  # that arrive here
    announced: int  # of them, announced ahead
    hits: float  # the jobs from the pool the bound serves: at least target of all
    idle_seconds: float  # the least idle, for the unannounced jobs
    idle_hours: tuple[tuple[int, float], ...] = ()  # (hour of the trace, its idle seconds)

    @property
    def idle_per_job(self) -> float:
        return self.idle_seconds / max(1, self.jobs)


def fanouts(jobs: Sequence[TraceJob]) -> list[tuple[float, int]]:
    """The unannounced fan-outs arriving here: (first arrival, jobs), a pipeline's stage
    each (a job of no known pipeline is one of its own)."""
    groups: dict[tuple[int, int], list[float]] = {}
    alone: list[tuple[float, int]] = []
    for job in jobs:
        if not (job.runs and job.here) or announced_ahead(job):
            continue
        if job.pipeline < 0:
            alone.append((job.arrival, 1))
        else:
            groups.setdefault((job.pipeline, job.stage), []).append(job.arrival)
    return sorted([(min(a), len(a)) for a in groups.values()] + alone)


def least_idle(jobs: Sequence[TraceJob], target: float) -> Bound:
    """The bound for `jobs` (their announcements filled in: trace.announce_by_stage)."""
    here = [j for j in jobs if j.runs and j.here]
    announced = sum(1 for j in here if announced_ahead(j))
    groups = fanouts(jobs)
    needed = max(0.0, target * len(here) - announced)
    if not groups or needed <= 0:
        return Bound(len(here), announced, float(announced), 0.0)
    sizes = Counter(size for _, size in groups)
    total = len(groups)
    # above[r] = P(K > r); E[min(K, r)] = sum of above[0..r-1]
    above = [sum(c for k, c in sizes.items() if k > r) / total for r in range(max(sizes) + 1)]
    served = [0.0]
    for r in range(max(sizes)):
        served.append(served[-1] + above[r])
    per_hour = Counter(int(start // HOUR) for start, _ in groups)

    def plan(price: float) -> tuple[float, dict[int, float]]:
        """Hits, and idle seconds per hour, when each hour holds every machine worth
        `price`: the r-th serves that hour's c fan-outs P(K >= r) of a job each."""
        hits, idle = 0.0, {}
        for hour, c in per_hour.items():
            r = sum(1 for p in above if c * p > price)
            hits += c * served[r]
            idle[hour] = r * HOUR
        return hits, idle

    low, high = 0.0, float(max(per_hour.values()))  # price: hits per machine-hour held
    for _ in range(60):
        middle = (low + high) / 2
        if plan(middle)[0] >= needed:
            low = middle
        else:
            high = middle
    # Between the two plans around the price, a steady mix reaches `needed` exactly.
    (hits_a, idle_a), (hits_b, idle_b) = plan(low), plan(high)
    share = 0.0 if hits_a == hits_b else (needed - hits_b) / (hits_a - hits_b)
    share = max(0.0, min(1.0, share))
    hours = tuple(sorted((h, idle_b[h] + share * (idle_a[h] - idle_b[h])) for h in per_hour))
    idle = sum(seconds for _, seconds in hours)
    return Bound(len(here), announced, announced + needed, idle, hours)
