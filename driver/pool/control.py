"""The pool's control loop, apart from the machines it acts on.

`PoolController.step` is fed an `Observation` (what the pool holds, what jobs
did since the last step, how long creates took) and reads the time from the
clock it was given; it decides how many machines to create and which idle ones
to remove, and starts that through the `create` and `remove` callables it was
given. The pool service passes the real clock and real creates; the replay
(bench/replay.py) passes a virtual clock and simulated ones, so both run this
very code.

Two policies decide how many machines should be ready or on their way:

- `IdleCountPolicy`: docker+machine's IdleCount, autoscaling periods and
  IdleScaleFactor (driver.pool.schedule).
- `DemandPolicy`: about the number of jobs expected to arrive within one
  create time, at a confidence the policy tunes itself so that
  `hit_rate_target` of the jobs find a ready machine (see its docstring).

Whatever the policy wants, the controller stays within max_growth_rate and the
[limits], and leaves to jobs waiting for capacity what they wait for: the pool
never starts a create that a waiting job could have started instead.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from driver.parsed import array, integer, number
from driver.pool.announced import AnnouncedTiming
from driver.pool.backoff import BACKOFF_MAX, FailureBackoff
from driver.pool.lookahead import NOTHING_AHEAD, Expected, Report
from driver.pool.schedule import Target, current_target
from driver.settings import LimitSettings, PoolSettings

# Jobs arriving within this many seconds of each other belong to one fan-out (the
# runner picks up a pipeline's parallel jobs over a few seconds, not at one instant).
BURST_GAP = 10.0
# Until the pool has measured a create of its own: a typical cloud VM, minutes.
DEFAULT_CREATE_SECONDS = 120.0


@dataclass(frozen=True)
class ReadyMachine:
    name: str
    ready_at: float  # clock seconds when it became ready


@dataclass(frozen=True)
class Observation:
    """What the pool and the host look like now, and what happened since the last step."""

    ready: Sequence[ReadyMachine]  # idle and claimable, the longest idle first
    creating: int  # the pool's creates in flight
    in_use: int  # machines of jobs (being created for a job, or running one)
    hits: int = 0  # jobs that took a ready machine since the last step
    misses: int = 0  # jobs that found none (and create their own) since the last step
    create_seconds: Sequence[float] = ()  # pool creates finished since: start to ready
    machines: int = 0  # every machine the driver owns on the host ([limits] max_machines)
    job_creates: int = 0  # jobs' own creates in flight ([limits] max_creating)
    waiting: int = 0  # jobs waiting for capacity to create their own machine
    # Jobs known to be coming, and what the announced ones did since the last step
    # (driver.pool.lookahead); its hits and misses are among `hits` and `misses`.
    ahead: Report = NOTHING_AHEAD


@dataclass(frozen=True)
class Decision:
    wanted: int  # machines the policy wants ready or being created
    create: int  # creates started by this step
    remove: tuple[str, ...]  # ready machines whose removal this step started
    held_back: str = ""  # the limit that kept creates below what the policy wanted


class Policy(Protocol):
    def observe(self, now: float, obs: Observation) -> None:
        """Learn from what happened since the last step."""

    def wanted(self, now: float, obs: Observation) -> int:
        """Machines to keep ready or being created."""

    def idle_time(self, now: float) -> float:
        """Seconds a machine beyond `wanted` may stay idle before it is removed."""

    def kept(self, now: float, wanted: int) -> int:
        """Machines (ready or being created) safe from removal now: `wanted`, or more.
        Called once a step, after `wanted`, with what it returned."""

    def memory(self) -> dict[str, object]:
        """What it learned, as JSON, for the next start of the service."""

    def recall(self, memory: Mapping[str, object], now: float) -> None:
        """Take back what `memory` gave; what is older than a week is let go."""


class IdleCountPolicy:
    """docker+machine's model: IdleCount (creating machines count), periods, IdleScaleFactor.

    With the lookahead (jobs announced ahead, driver.pool.lookahead), it keeps one
    machine more for each announced job, started as the demand policy starts them
    (driver.pool.announced)."""

    def __init__(self, pool: PoolSettings, create_seconds: float = DEFAULT_CREATE_SECONDS) -> None:
        self.pool = pool
        self.timing = AnnouncedTiming(create_seconds)
        self._minute = -1
        self._target = Target(pool.idle_count, pool.idle_count_min, pool.idle_scale_factor, 0.0)

    def target(self, now: float) -> Target:
        # Periods are cron lines, so the target can only change on a minute boundary.
        minute = int(now // 60)
        if minute != self._minute:
            self._minute = minute
            self._target = current_target(self.pool, datetime.fromtimestamp(now, UTC))
        return self._target

    def observe(self, now: float, obs: Observation) -> None:
        self.timing.observe(obs.create_seconds, obs.ahead)

    def wanted(self, now: float, obs: Observation) -> int:
        due = self.timing.due(now, obs.ahead.expected)
        return self.target(now).idle_wanted(obs.in_use) + due

    def idle_time(self, now: float) -> float:
        return self.target(now).idle_time

    def kept(self, now: float, wanted: int) -> int:
        return wanted  # docker+machine: what is beyond IdleCount goes after IdleTime

    def memory(self) -> dict[str, object]:
        return {}  # nothing learned: its settings say it all

    def recall(self, memory: Mapping[str, object], now: float) -> None:
        pass


class DemandPolicy:
    """Keep ready about the jobs expected to arrive within one create time.

    Jobs arrive in fan-outs (a pipeline's parallel jobs at once). The policy
    remembers when recent fan-outs started and how big they were, and the
    measured create times (start to ready). From them the number N of jobs
    arriving within one create time is compound Poisson: Poisson many
    fan-outs, each of a size seen recently, over a create time drawn from
    those measured. The pool keeps

        wanted = the smallest S with P(N > S) <= allowance

    machines ready or being created, and replaces each claimed machine at once.
    One more machine serves a job only when more than S jobs arrive within one
    create time, so P(N > S) is what it buys per second it stands idle: the
    same allowance at every hour spends idle machine time where it finds the
    most jobs (busy hours) and little on quiet ones.

    The fan-out rate is the count over the last `demand_window` seconds or,
    when that holds fewer than RATE_EVENTS fan-outs, over the time the last
    RATE_EVENTS took: responsive when busy, not fooled by one pipeline at night.

    The allowance follows from `hit_rate_target`: the policy samples its rate
    every 10 minutes over the last week, and picks the allowance whose
    expected share of jobs finding a machine over that week (each moment
    weighted by its jobs) is the target, the expected share at one moment
    being 1 - E[(N - S)+] / E[N]. The model's estimates lag a changing rate,
    so it aims above the target by as much as the jobs of that week fell short;
    a shortfall seen over a short history is mostly where one big fan-out
    happened to land, so it counts in proportion to the samples behind it
    (half at two days of them, AIM_TRUST).

    A machine beyond what the policy wants goes once it idled past `idle_time`,
    and only if the policy guessed fewer all that time (`kept`: the most it
    guessed over the last `idle_time` seconds, as Kubernetes' autoscaler
    steadies a scale-down). A guess wavers as fan-outs come and go; a machine
    removed to be made again minutes later costs a create, and is often never
    used at all. The machines for jobs GitLab announced are known, not
    guessed: once those jobs came, or were withdrawn, they are not held.

    Jobs announced ahead (a pipeline's next stage, driver.pool.lookahead) are
    not guessed but known: the policy adds one machine for each, started so it
    is ready when the job is likely to come (see `announced_due`), and leaves
    them out of the fan-out model. The allowance then aims the unannounced jobs at
    what, with the announced ones' hits, makes `hit_rate_target` of all jobs.
    """

    RATE_EVENTS = 8
    RATE_STEP = 0.05  # rates are bucketed in steps of 5% (log scale)
    HISTORY_EVERY, HISTORY_KEPT = 600.0, 7 * 144  # a week of 10-minute samples
    RECALIBRATE_EVERY = 3600.0
    REFRESH_EVERY = 6 * 3600.0  # sizes and create times read into the model
    SIZES_KEPT = 500  # fan-outs remembered
    CREATES_KEPT = AnnouncedTiming.CREATES_KEPT
    LEAD_POINTS = 5  # create times (quantiles of those measured) the model averages over
    SMALLEST_ALLOWANCE, LARGEST_ALLOWANCE = 1e-5, 0.5
    HIGHEST_AIM = 0.999
    AIM_GAIN = 3.0
    AIM_TRUST = 2 * 144  # samples (two days) at which a shortfall counts half
    LEADS_NEEDED = AnnouncedTiming.LEADS_NEEDED

    def __init__(self, pool: PoolSettings, create_seconds: float = DEFAULT_CREATE_SECONDS) -> None:
        self.pool = pool
        self.target = pool.hit_rate_target
        self.recent_wanted: deque[tuple[float, int]] = deque()  # (when, guessed), see `kept`
        self.told = 0  # machines due for jobs GitLab told of, as `wanted` last counted them
        self.window = pool.demand_window
        self.starts: deque[float] = deque(maxlen=self.SIZES_KEPT)  # when each fan-out began
        self.sizes: deque[int] = deque(maxlen=self.SIZES_KEPT)  # and its jobs
        self.last_arrival = -math.inf
        # Create times, and how announced jobs came (shared with IdleCountPolicy).
        self.timing = AnnouncedTiming(create_seconds)
        self.creates, self.leads, self.errors = (
            self.timing.creates,
            self.timing.leads,
            self.timing.errors,
        )
        # Every 10 minutes: the fan-out rate, the jobs that found a machine or not, and
        # of them the announced ones.
        self.history: deque[tuple[float, int, int, int, int]] = deque(maxlen=self.HISTORY_KEPT)
        self.hits = self.misses = self.announced_hits = self.announced_misses = 0
        self.next_sample = -math.inf
        self.allowance = 1.0 - self.target
        self.aim = self.target
        self.model: ArrivalModel | None = None
        self.model_sizes = 0  # fan-outs seen when the model was made
        self.next_refresh = -math.inf
        self.next_calibration = -math.inf

    def observe(self, now: float, obs: Observation) -> None:
        self.timing.observe(obs.create_seconds, obs.ahead)
        # Announced jobs are known, not guessed: the fan-out model learns from the others.
        arrived = obs.hits + obs.misses - obs.ahead.hits - obs.ahead.misses
        self.hits += obs.hits
        self.misses += obs.misses
        self.announced_hits += obs.ahead.hits
        self.announced_misses += obs.ahead.misses
        if arrived > 0:
            if now - self.last_arrival <= BURST_GAP and self.sizes:
                self.sizes[-1] += arrived  # the same fan-out, seen over two steps
            else:
                self.starts.append(now)
                self.sizes.append(arrived)
            self.last_arrival = now
        if now >= self.next_sample:
            self.history.append(
                (
                    self.fanout_rate(now),
                    self.hits,
                    self.misses,
                    self.announced_hits,
                    self.announced_misses,
                )
            )
            self.hits = self.misses = self.announced_hits = self.announced_misses = 0
            self.next_sample = now + self.HISTORY_EVERY
        if not self.sizes:
            return
        # The model is remade as the fan-outs seen double (early on) or every few hours,
        # and the allowance recalibrated with it and every hour.
        if now >= self.next_refresh or len(self.sizes) >= 2 * self.model_sizes:
            self.model = ArrivalModel(
                Counter(self.sizes), _quantile_points(sorted(self.creates), self.LEAD_POINTS)
            )
            self.model_sizes = len(self.sizes)
            self.next_refresh = now + self.REFRESH_EVERY
            self.next_calibration = now
        if now >= self.next_calibration and self.model is not None:
            hits = sum(h for _, h, _, _, _ in self.history)
            jobs = hits + sum(m for _, _, m, _, _ in self.history)
            announced_hits = sum(a for _, _, _, a, _ in self.history)
            announced = announced_hits + sum(a for _, _, _, _, a in self.history)
            # What the unannounced jobs must reach for target of all jobs.
            base = self.target
            if jobs > announced:
                base = (self.target * jobs - announced_hits) / (jobs - announced)
            shortfall = self.target - hits / jobs if jobs else 0.0
            shortfall *= len(self.history) / (len(self.history) + self.AIM_TRUST)
            self.aim = min(self.HIGHEST_AIM, max(0.0, base, base + self.AIM_GAIN * shortfall))
            self.allowance = self.calibrate(self.model, self.aim)
            self.next_calibration = now + self.RECALIBRATE_EVERY

    def fanout_rate(self, now: float) -> float:
        """Fan-outs per second lately."""
        recent = 0
        for start in reversed(self.starts):
            if start <= now - self.window:
                break
            recent += 1
        if recent >= self.RATE_EVENTS:
            return recent / self.window
        if len(self.starts) >= self.RATE_EVENTS:
            return self.RATE_EVENTS / max(self.window, now - self.starts[-self.RATE_EVENTS])
        return recent / self.window

    def _bucket(self, rate: float) -> int | None:
        return round(math.log(rate) / self.RATE_STEP) if rate > 1e-9 else None

    def calibrate(self, model: ArrivalModel, aim: float) -> float:
        """The allowance whose expected hit rate over the remembered week is `aim`."""
        weights: dict[int, float] = {}
        for rate, *_ in self.history:
            bucket = self._bucket(rate)
            if bucket is not None:
                weights[bucket] = weights.get(bucket, 0.0) + rate
        if not weights:
            return self.allowance
        tails = {bucket: model.tails(math.exp(bucket * self.RATE_STEP)) for bucket in weights}
        total = sum(weights.values())

        def expected_hits(allowance: float) -> float:
            return sum(w * tails[b].hit_share(allowance) for b, w in weights.items()) / total

        low, high = math.log(self.SMALLEST_ALLOWANCE), math.log(self.LARGEST_ALLOWANCE)
        if expected_hits(math.exp(high)) >= aim:
            return self.LARGEST_ALLOWANCE
        for _ in range(20):  # bisection: a larger allowance means fewer machines, fewer hits
            middle = (low + high) / 2
            if expected_hits(math.exp(middle)) >= aim:
                low = middle
            else:
                high = middle
        return math.exp(low)

    def wanted(self, now: float, obs: Observation) -> int:
        expected = obs.ahead.expected
        due = self.told = self.announced_due(now, expected)
        if any(job.guess for job in expected):  # guessed stages waver as the stock does
            self.told = self.announced_due(now, [job for job in expected if not job.guess])
        bucket = self._bucket(self.fanout_rate(now))
        if bucket is None or self.model is None:
            return due
        return due + self.model.tails(math.exp(bucket * self.RATE_STEP)).stock(self.allowance)

    def announced_due(self, now: float, expected: Sequence[Expected]) -> int:
        """The announced jobs' machines that should be ready or on their way now
        (driver.pool.announced: each job counts as its share of one)."""
        return self.timing.due(now, expected)

    def announced_start_delay(self) -> float:
        return self.timing.start_delay()

    def idle_time(self, now: float) -> float:
        return self.pool.idle_time

    def kept(self, now: float, wanted: int) -> int:
        """The machines due now for jobs GitLab told of, and the largest number of the
        others wanted over the last `idle_time` seconds (only a guess wavers)."""
        guessed = wanted - self.told
        recent = self.recent_wanted  # newer entries only, each wanting less than the one before
        while recent and recent[-1][1] <= guessed:
            recent.pop()
        recent.append((now, guessed))
        while recent[0][0] < now - self.pool.idle_time:
            recent.popleft()
        return recent[0][1] + self.told

    MEMORY_VERSION = 1

    def memory(self) -> dict[str, object]:
        return {
            "version": self.MEMORY_VERSION,
            "starts": list(self.starts),
            "sizes": list(self.sizes),
            "creates": list(self.creates) if self.timing.measured else [],
            "leads": list(self.leads),
            "errors": list(self.errors),
            "history": [list(sample) for sample in self.history],
            "history_until": self.next_sample - self.HISTORY_EVERY if self.history else 0.0,
        }

    def recall(self, memory: Mapping[str, object], now: float) -> None:
        """A service restarted (an upgrade, a reboot) goes on from what it had learned
        instead of a week of learning again. Anything malformed raises (ValueError,
        TypeError, KeyError): the caller starts afresh then."""
        if memory.get("version") != self.MEMORY_VERSION:
            raise ValueError(f"memory version {memory.get('version')!r}")
        week = self.HISTORY_EVERY * self.HISTORY_KEPT
        fanouts = [
            (number(start), integer(size))
            for start, size in zip(array(memory["starts"]), array(memory["sizes"]), strict=True)
            if now - week < number(start) <= now and integer(size) > 0
        ]
        history = [
            (number(r), integer(h), integer(m), integer(ah), integer(am))
            for r, h, m, ah, am in map(array, array(memory["history"]))
        ]
        # The samples are 10 minutes apart, the newest taken at history_until: keep
        # those of the last week.
        newest = number(memory["history_until"])
        keep = sum(1 for i in range(len(history)) if newest - i * self.HISTORY_EVERY > now - week)
        self.starts.extend(start for start, _ in fanouts)
        self.sizes.extend(size for _, size in fanouts)
        if self.starts:
            self.last_arrival = self.starts[-1]
        creates = [number(c) for c in array(memory["creates"]) if number(c) > 0]
        if creates:
            self.creates.clear()
            self.creates.extend(creates)
            self.timing.measured = True
        self.leads.extend(number(lead) for lead in array(memory["leads"]))
        self.errors.extend(number(error) for error in array(memory["errors"]))
        self.timing.changed()
        self.history.extend(history[len(history) - keep :])


@dataclass(frozen=True)
class Tails:
    """N, the jobs arriving within one create time, at one fan-out rate."""

    above: list[float]  # above[n] = P(N > n)
    excess: list[float]  # excess[n] = E[(N - n)+], the jobs beyond n

    def stock(self, allowance: float) -> int:
        """The smallest S with P(N > S) <= allowance."""
        for n, p in enumerate(self.above):
            if p <= allowance:
                return n
        return len(self.above)

    def hit_share(self, allowance: float) -> float:
        """The expected share of jobs that find one of `stock(allowance)` machines."""
        mean = self.excess[0]
        if mean <= 0:
            return 1.0
        stock = self.stock(allowance)
        beyond = self.excess[stock] if stock < len(self.excess) else 0.0
        return 1.0 - beyond / mean


class ArrivalModel:
    """Fan-out sizes and create times; the distribution of N at any fan-out rate."""

    MOST = 1000  # machines: beyond any pool worth computing

    def __init__(self, sizes: Counter[int], leads: Sequence[float]) -> None:
        total = sum(sizes.values())
        self.support = sorted((size, count / total) for size, count in sizes.items() if size > 0)
        self.leads = list(leads)
        self.cache: dict[float, Tails] = {}

    def tails(self, fanouts_per_second: float) -> Tails:
        if fanouts_per_second not in self.cache:
            self.cache[fanouts_per_second] = self._tails(fanouts_per_second)
        return self.cache[fanouts_per_second]

    def _tails(self, fanouts_per_second: float) -> Tails:
        """Compound Poisson for each lead time, averaged; Panjer's recursion."""
        means = [fanouts_per_second * lead for lead in self.leads]
        pmfs = [[math.exp(-mean)] for mean in means]
        cdf = sum(pmf[0] for pmf in pmfs) / len(pmfs)
        above = [1.0 - cdf]
        while above[-1] > 1e-6 and len(above) < self.MOST:
            n = len(above)
            for mean, pmf in zip(means, pmfs, strict=True):
                term = 0.0
                for size, share in self.support:
                    if size > n:
                        break
                    term += size * share * pmf[n - size]
                pmf.append(mean / n * term)
            cdf += sum(pmf[n] for pmf in pmfs) / len(pmfs)
            above.append(max(0.0, 1.0 - cdf))
        excess = [0.0] * len(above)
        running = 0.0
        for n in range(len(above) - 1, -1, -1):  # E[(N - n)+] = sum over k >= n of P(N > k)
            running += above[n]
            excess[n] = running
        return Tails(above, excess)


def jobs_within(
    fanouts_per_second: float, sizes: Counter[int], leads: Sequence[float], allowance: float
) -> int:
    """The smallest S with P(N > S) <= allowance (N: jobs arriving within one lead time)."""
    return ArrivalModel(sizes, leads).tails(fanouts_per_second).stock(allowance)


def _quantile_points(ordered: Sequence[float], points: int) -> list[float]:
    """`points` values spread over the distribution of `ordered` (mid-quantiles)."""
    if len(ordered) <= points:
        return list(ordered)
    return [ordered[int((i + 0.5) / points * len(ordered))] for i in range(points)]


def make_policy(pool: PoolSettings, create_seconds: float = DEFAULT_CREATE_SECONDS) -> Policy:
    if pool.policy == "demand":
        return DemandPolicy(pool, create_seconds)
    return IdleCountPolicy(pool, create_seconds)


class PoolController:
    """Decides what to create and remove, and starts it; the same code on any clock."""

    def __init__(
        self,
        pool: PoolSettings,
        limits: LimitSettings,
        *,
        clock: Callable[[], float],
        create: Callable[[], bool],
        remove: Callable[[str, str], None],
        policy: Policy | None = None,
        alarm: Callable[[str, int, float], None] | None = None,
    ) -> None:
        """`create()` starts one create and says whether it did (False: the rate limit
        said no); `remove(name, why)` starts removing a ready machine; `alarm(reason,
        failures, hold)` is told each time identical failures hold creates back."""
        self.pool = pool
        self.limits = limits
        self.clock = clock
        self.create = create
        self.remove = remove
        self.policy = policy or make_policy(pool)
        self.last_arrival = -math.inf
        self.backoff = FailureBackoff(pool.failure_threshold, pool.failure_backoff, BACKOFF_MAX)
        self.alarm = alarm

    def failed(self, reason: str) -> None:
        """A create, or the making ready of what it made, failed for ``reason``."""
        hold = self.backoff.failed(reason, self.clock())
        if hold and self.alarm is not None:
            self.alarm(reason, self.backoff.failures, hold)

    def succeeded(self) -> None:
        """A machine became ready: failures count anew."""
        self.backoff.succeeded()

    def step(self, obs: Observation) -> Decision:
        now = self.clock()
        if obs.hits or obs.misses:
            self.last_arrival = now
        self.policy.observe(now, obs)
        wanted = self.policy.wanted(now, obs)
        missing = wanted - len(obs.ready) - obs.creating
        allowed, held_back = self.room(obs, arriving=now - self.last_arrival <= BURST_GAP)
        if allowed is not None and missing > allowed:
            missing = allowed
        else:
            held_back = ""
        if missing > 0 and self.backoff.holding(now):
            missing, held_back = 0, "failure_backoff"
        created = 0
        for _ in range(max(0, missing)):
            if not self.create():
                held_back = "create_rate"
                break
            created += 1
        # Idle machines beyond the target go once they have idled past idle_time,
        # the longest idle first.
        removed: list[str] = []
        excess = len(obs.ready) + obs.creating + created - self.policy.kept(now, wanted)
        idle_time = self.policy.idle_time(now)
        for machine in obs.ready:
            if excess <= 0:
                break
            if now - machine.ready_at > idle_time:
                self.remove(machine.name, "idle past idle_time")
                removed.append(machine.name)
                excess -= 1
        return Decision(wanted, created, tuple(removed), held_back)

    def room(self, obs: Observation, arriving: bool = False) -> tuple[int | None, str]:
        """How many creates the limits leave the pool now (None: any), and the tightest one.

        Jobs come first: the pool takes neither a machine slot, a create slot
        nor a rate token that a job waits for, nor, while a fan-out may still
        be arriving (`arriving`: jobs came within BURST_GAP seconds), one that
        its next jobs may need if they miss. Its creates wait those seconds.
        """
        rooms: list[tuple[int, str]] = []
        if self.pool.max_growth_rate:
            rooms.append((self.pool.max_growth_rate - obs.creating, "max_growth_rate"))
        if self.limits.max_machines:
            rooms.append((self.limits.max_machines - obs.machines - obs.waiting, "max_machines"))
        if self.limits.max_creating:
            in_flight = obs.job_creates + obs.creating + obs.waiting
            rooms.append((self.limits.max_creating - in_flight, "max_creating"))
        if self.limits.create_rate and obs.waiting:
            rooms.append((0, "create_rate"))
        limited = self.limits.max_machines or self.limits.max_creating or self.limits.create_rate
        if limited and arriving:
            rooms.append((0, "jobs arriving"))
        if not rooms:
            return None, ""
        allowed, name = min(rooms)
        return max(0, allowed), name
