"""Each policy at its cheapest setting reaching a hit rate, on one trace, side by side.

The policies compared (each with the setting, searched in hindsight on the
very trace, that reaches the hit rate at the least total machine-seconds):

  idle_count          docker+machine's IdleCount, one count all week
  periods             IdleCount N 8:00-18:00 on weekdays, M otherwise (as
                      `migrate` carries docker+machine's autoscaling periods)
  periods + lookahead the same, plus one machine per job announced ahead
  demand              this driver's policy = "demand", lowest hit_rate_target
                      reaching it, told nothing ahead
  demand + lookahead  the same, told of the jobs announced ahead

The hindsight search is what no admin can do; the demand policy's target is
the only knob it needs. Periods are searched as two halves: a run with one
count N for both shows the hits and costs of working hours and of the rest
at N, and the cheapest pair is taken from those, then checked by a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass

from driver.pool.replay.bound import least_idle
from driver.pool.replay.simulate import Replay, Result, StoppedTier, Timing
from driver.pool.replay.trace import Trace, announce_by_stage
from driver.pool.replay.week import WORKING_HOURS
from driver.settings import LimitSettings, PoolSettings, parse_settings

DAY = 86400.0
WORK_START, WORK_END = 8 * 3600.0, 18 * 3600.0  # WORKING_HOURS, in seconds of a day
# The idle counts a scan replays: every count up to 6, then wider steps.
COUNTS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 18, 22, 26, 30, 35, 40, 48, 56, 64, 80, 100, 128)
# The hit_rate_target values a search tries: steps of 0.005 where the policy lands
# near the usual targets (a step of 0.01 there moves its hit rate by about a point).
DEMAND_TARGETS = (
    0.5,
    0.6,
    0.7,
    0.75,
    0.8,
    *(round(0.81 + 0.01 * i, 2) for i in range(9)),
    *(round(0.9 + 0.005 * i, 3) for i in range(19)),
    0.995,
    0.999,
)


def working(t: float) -> bool:
    day, second = divmod(t, DAY)
    return day % 7 < 5 and WORK_START <= second < WORK_END


def working_seconds(a: float, b: float) -> float:
    """The seconds of [a, b) (seconds of the week) within working hours."""
    total, day = 0.0, math.floor(a / DAY)
    while day * DAY < b:
        if day % 7 < 5:
            total += max(0.0, min(b, day * DAY + WORK_END) - max(a, day * DAY + WORK_START))
        day += 1
    return total


@dataclass(frozen=True)
class Half:
    """Jobs, hits and running machine-seconds of working hours or of the rest."""

    jobs: int
    hits: int
    seconds: float


@dataclass(frozen=True)
class Summary:
    """What a comparison keeps of one replay."""

    policy: str
    label: str
    jobs: int
    hits: int
    idle_seconds: float
    total_seconds: float
    prepare: tuple[float, float, float]  # p50, p95, p99
    pool_creates: int
    never_used: int
    cost_per_job: float
    halves: tuple[Half, Half]  # working hours, the rest

    @property
    def hit_rate(self) -> float:
        return self.hits / max(1, self.jobs)

    @property
    def idle_per_job(self) -> float:
        return self.idle_seconds / max(1, self.jobs)

    @property
    def total_per_job(self) -> float:
        return self.total_seconds / max(1, self.jobs)


def summarize(policy: str, result: Result, tier: StoppedTier) -> Summary:
    work, rest = [0, 0, 0.0], [0, 0, 0.0]
    for vm in result.vms:
        until = vm.claimed_at if vm.claimed_at is not None else vm.removed_at
        end = result.end if until is None else until
        inside = working_seconds(vm.started, end)
        work[2] += inside
        rest[2] += end - vm.started - inside
    for run in result.runs:
        half = work if working(run.job.arrival) else rest
        half[0] += 1
        half[1] += run.hit
        half[2] += (run.own_machine or result.claim_seconds) + run.job.duration
    rest[2] += result.tier_running
    return Summary(
        policy,
        result.label,
        result.jobs,
        sum(r.hit for r in result.runs),
        result.idle_seconds,
        result.total_seconds,
        (result.prepare(50), result.prepare(95), result.prepare(99)),
        len(result.vms),
        result.never_used,
        result.cost_per_job(tier),
        (Half(int(work[0]), int(work[1]), work[2]), Half(int(rest[0]), int(rest[1]), rest[2])),
    )


def oracle(trace: Trace, timing: Timing, tier: StoppedTier | None = None) -> Summary:
    """Perfect foresight, the floor of any policy: each job's machine is started one
    create before it arrives (its own create time, as drawn for it) and never idles."""
    work, rest = [0, 0.0], [0, 0.0]
    for job in trace.jobs:
        if job.runs and job.here:
            half = work if working(job.arrival) else rest
            half[0] += 1
            half[1] += job.create + timing.claim_seconds + job.duration
    jobs = int(work[0] + rest[0])
    total = work[1] + rest[1]
    claim = timing.claim_seconds
    price = (tier or StoppedTier()).running_per_hour
    return Summary(
        "oracle",
        "oracle: a machine ready as each job arrives, never idle",
        jobs,
        jobs,
        0.0,
        total,
        (claim, claim, claim),
        jobs,
        0,
        total * price / 3600 / max(1, jobs),
        (Half(int(work[0]), int(work[0]), work[1]), Half(int(rest[0]), int(rest[0]), rest[1])),
    )


def unforeseen(trace: Trace, timing: Timing, target: float) -> Summary:
    """The bound of driver.pool.replay.bound as a row: the floor, plus the least idle a
    pool pays for the jobs it cannot see coming (those GitLab does not announce) at
    `target`."""
    floor = oracle(trace, timing)
    bound = least_idle(announce_by_stage(trace.jobs, timing.claim_seconds), target)
    work, rest = floor.halves
    idle_work = sum(idle for hour, idle in bound.idle_hours if working(hour * 3600.0))
    idle_rest = bound.idle_seconds - idle_work
    return Summary(
        "bound",
        f"bound: {bound.jobs - bound.announced} of {bound.jobs} jobs not announced ahead",
        floor.jobs,
        math.ceil(bound.hits),
        bound.idle_seconds,
        floor.total_seconds + bound.idle_seconds,
        (math.nan, math.nan, math.nan),  # a bound, not a replay: no prepare measured
        floor.pool_creates,
        0,
        math.nan,
        (
            Half(work.jobs, work.hits, work.seconds + idle_work),
            Half(rest.jobs, rest.hits, rest.seconds + idle_rest),
        ),
    )


def idle_pool(peak: int, rest: int, timing: Timing) -> PoolSettings:
    """IdleCount `rest`, and `peak` in working hours (UTC), as `migrate` writes them."""
    pool: dict[str, object] = {
        "idle_count": rest,
        "idle_time": timing.idle_time,
        "check_interval": timing.tick,
    }
    if peak != rest:
        pool["autoscaling"] = [{"periods": [WORKING_HOURS], "idle_count": peak, "timezone": "UTC"}]
    return parse_settings({"pool": pool}).pool


def demand_pool(target: float, timing: Timing) -> PoolSettings:
    return parse_settings(
        {
            "pool": {
                "policy": "demand",
                "hit_rate_target": target,
                "demand_window": timing.demand_window,
                "idle_time": timing.idle_time,
                "check_interval": timing.tick,
            }
        }
    ).pool


@dataclass(frozen=True)
class Run:
    """One replay to make: picklable, for a pool of processes."""

    policy: str
    label: str
    pool: PoolSettings
    lookahead: bool
    learn: bool = False  # pipeline shapes learned from the jobs served (no [gitlab])


_TRACE: tuple[Trace, Timing, int, StoppedTier] | None = None


def _given(trace: Trace, timing: Timing, seed: int, tier: StoppedTier) -> None:
    global _TRACE
    _TRACE = (trace, timing, seed, tier)


def _replay(run: Run) -> Summary:
    assert _TRACE is not None
    trace, timing, seed, tier = _TRACE
    replay = Replay(
        trace,
        run.pool,
        LimitSettings(),
        seed=seed,
        creates=timing.creates,
        claim_seconds=timing.claim_seconds,
        tick=timing.tick,
        lookahead=run.lookahead,
        tier=tier,
        learn=run.learn,
    )
    return summarize(run.policy, replay.run(run.label), tier)


class Comparison:
    """The replays of one trace, cached by label; `jobs` processes at once."""

    def __init__(
        self,
        trace: Trace,
        timing: Timing,
        *,
        seed: int = 1,
        target: float = 0.95,
        jobs: int = 1,
        tier: StoppedTier | None = None,
        progress: Callable[[Summary], None] | None = None,
        search_max: int = 80,
    ) -> None:
        self.trace, self.timing, self.seed, self.target = trace, timing, seed, target
        self.tier = tier or StoppedTier()
        self.progress = progress
        self.search_max = search_max
        self.cache: dict[str, Summary] = {}
        self.jobs = max(1, jobs)
        self.executor: Executor | None = None
        _given(trace, timing, seed, self.tier)
        if jobs > 1:
            self.executor = ProcessPoolExecutor(
                jobs, initializer=_given, initargs=(trace, timing, seed, self.tier)
            )

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()

    def runs(self, wanted: Sequence[Run]) -> list[Summary]:
        todo = list({run.label: run for run in wanted if run.label not in self.cache}.values())
        if self.executor is not None and len(todo) > 1:
            done = list(self.executor.map(_replay, todo))
        else:
            done = [_replay(run) for run in todo]
        for summary in done:
            self.cache[summary.label] = summary
            if self.progress is not None:
                self.progress(summary)
        return [self.cache[run.label] for run in wanted]

    def run(self, run: Run) -> Summary:
        return self.runs([run])[0]

    # --- the searches

    def idle_run(self, peak: int, rest: int, lookahead: bool) -> Run:
        policy = "periods" if peak != rest else "idle_count"
        name = f"{policy}{' + lookahead' if lookahead else ''}"
        label = f"{name}: {peak} 8-18 mon-fri, else {rest}" if peak != rest else f"{name}: {peak}"
        return Run(name, label, idle_pool(peak, rest, self.timing), lookahead)

    def scan(self, lookahead: bool) -> list[Summary]:
        """One idle count all week, along COUNTS, until both halves reach well past the
        target (or `search_max`); `jobs` counts replayed at once."""
        enough = self.target + (1 - self.target) / 2
        counts = [n for n in COUNTS if n <= self.search_max]
        out: list[Summary] = []
        while len(out) < len(counts):
            batch = counts[len(out) : len(out) + self.jobs]
            out += self.runs([self.idle_run(n, n, lookahead) for n in batch])
            work, rest = out[-1].halves
            if min(h.hits / h.jobs if h.jobs else 1.0 for h in (work, rest)) >= enough:
                break
        return out

    def lowest(self, top: int, bottom: int, make: Callable[[int], Run]) -> tuple[int, Summary]:
        """The smallest count in bottom..top reaching the target (bisection), and its
        run; `top` reaches it."""
        while bottom < top:
            mid = (bottom + top) // 2
            if self.run(make(mid)).hit_rate >= self.target:
                top = mid
            else:
                bottom = mid + 1
        return top, self.run(make(top))

    def fixed(self, lookahead: bool = False) -> Summary | None:
        """The smallest single idle count reaching the target."""
        scanned = self.scan(lookahead)
        for i, found in enumerate(scanned):
            if found.hit_rate >= self.target:
                n, below = COUNTS[i], COUNTS[i - 1] + 1 if i else 0
                return self.lowest(n, below, lambda k: self.idle_run(k, k, lookahead))[1]
        return None

    def periods(self, lookahead: bool) -> Summary | None:
        """The cheapest pair of counts reaching the target: the pair the halves of a scan
        say is cheapest, moved up the scan while short, then each count down as far as
        it still reaches the target."""
        scanned = self.scan(lookahead)
        need = self.target * sum(h.jobs for h in scanned[0].halves)
        pairs = []
        for i, at_i in enumerate(scanned):
            for j, at_j in enumerate(scanned):
                work, other = at_i.halves[0], at_j.halves[1]
                if work.hits + other.hits >= need:
                    pairs.append((work.seconds + other.seconds, i, j))
        if not pairs:
            return None
        _, i, j = min(pairs)
        last = len(scanned) - 1
        found = self.run(self.idle_run(COUNTS[i], COUNTS[j], lookahead))
        while found.hit_rate < self.target and (i < last or j < last):

            def gain(k: int, half: int) -> float:
                a, b = scanned[k + 1].halves[half], scanned[k].halves[half]
                return (a.hits - b.hits) / max(1.0, a.seconds - b.seconds)

            if j >= last or (i < last and gain(i, 0) >= gain(j, 1)):
                i += 1
            else:
                j += 1
            found = self.run(self.idle_run(COUNTS[i], COUNTS[j], lookahead))
        if found.hit_rate < self.target:
            return None
        peak, rest = COUNTS[i], COUNTS[j]
        if i:  # each count down, within the step of the scan, while it still reaches

            def at_peak(k: int) -> Run:
                return self.idle_run(k, rest, lookahead)

            peak, found = self.lowest(peak, COUNTS[i - 1] + 1, at_peak)
        if j:

            def at_rest(k: int) -> Run:
                return self.idle_run(peak, k, lookahead)

            rest, found = self.lowest(rest, COUNTS[j - 1] + 1, at_rest)
        return found

    def demand(
        self,
        lookahead: bool,
        accept: Callable[[Summary], bool] | None = None,
        learn: bool = False,
    ) -> Summary | None:
        """The lowest hit_rate_target whose run reaches the target, or is accepted
        (bisection); `learn`: with pipeline shapes learned, not told."""
        name = (
            "demand + lookahead" if lookahead else "demand + learned shapes" if learn else "demand"
        )
        good = accept or (lambda found: found.hit_rate >= self.target)

        def at(i: int) -> Summary:
            target = DEMAND_TARGETS[i]
            label = f"{name}: hit_rate_target {target:g}"
            return self.run(Run(name, label, demand_pool(target, self.timing), lookahead, learn))

        lo, hi = 0, len(DEMAND_TARGETS) - 1
        if not good(at(hi)):
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if good(at(mid)):
                hi = mid
            else:
                lo = mid + 1
        return at(hi)

    def all(self) -> list[tuple[str, Summary | None]]:
        """The five policies, each at its cheapest setting reaching the target."""
        return [
            ("idle_count", self.fixed()),
            ("periods", self.periods(False)),
            ("periods + lookahead", self.periods(True)),
            ("demand", self.demand(False)),
            ("demand + lookahead", self.demand(True)),
        ]


def table(rows: Sequence[tuple[str, Summary | None]], target: float) -> list[str]:
    """The comparison as Markdown lines; a policy that reached nothing says so."""
    lines = [
        "| policy | setting | jobs from the pool | prepare p50 / p95 / p99 s "
        "| idle machine-s per job | total machine-s per job | pool creates | never used |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for policy, s in rows:
        if s is None:
            lines.append(f"| {policy} | none searched reaches {100 * target:g}% | | | | | | |")
            continue
        prepare = " / ".join("n/a" if math.isnan(p) else f"{p:.0f}" for p in s.prepare)
        setting = s.label.split(": ", 1)[-1]
        lines.append(
            f"| {policy} | {setting} | {100 * s.hit_rate:.1f}% | {prepare} "
            f"| {s.idle_per_job:.0f} | {s.total_per_job:.0f} | {s.pool_creates} | {s.never_used} |"
        )
    return lines


def versus(a: Summary | None, b: Summary | None) -> str:
    """`a` against `b` in total and idle machine-seconds: a saving as "N% less", a
    loss as "N% MORE"."""
    if a is None or b is None:
        return "n/a"

    def change(x: float, y: float) -> str:
        if y <= 0:
            return "n/a"
        d = 1 - x / y
        return f"{100 * d:.0f}% less" if d >= 0 else f"{100 * -d:.0f}% MORE"

    return (
        f"total {change(a.total_seconds, b.total_seconds)}, "
        f"idle {change(a.idle_seconds, b.idle_seconds)}"
    )
