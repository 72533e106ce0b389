"""The replay itself: a trace through the pool controller's real code, on a virtual clock.

A discrete-event simulation: jobs arrive as the trace says; each takes a
ready machine from the pool (a hit: prepare takes `claim_seconds`) or, when
none is ready, creates its own (a miss: prepare takes that create, plus any
wait for [limits] capacity), as prepare does. Every `tick` seconds (the
service's check_interval) the controller (driver.pool.control, the code the
service runs) is fed what the pool holds and what happened since, and its
creates and removals are simulated. What the lookahead learns of pipelines
(announcements, withdrawals) is fed to a real `Lookahead` at the times the
trace says. Creates take log-normal times; nothing fails.

Optionally a tier of machines is kept stopped (made ahead, then stopped: a
disk-only cost): a create of the pool, or a job that misses, starts one of
them (`start` seconds) instead of a full create (`pool_starts` False: only a
job), and the tier is refilled by full creates.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from driver.pool.control import Observation, Policy, PoolController, ReadyMachine, make_policy
from driver.pool.lookahead import Lookahead
from driver.pool.replay.trace import (
    WEEK_START,
    Draws,
    LogNormal,
    Trace,
    TraceJob,
    announce_by_stage,
)
from driver.pool.shapes import PipelineShapes, create_horizon
from driver.settings import LimitSettings, PoolSettings


@dataclass(frozen=True)
class Timing:
    """The cloud and the service, as the replay models them."""

    create_median: float = 90.0
    create_p95: float = 240.0
    claim_seconds: float = 1.0  # prepare on a hit
    tick: float = 2.0  # the service's check_interval
    idle_time: float = 600.0  # IdleTime / idle_time
    demand_window: float = 1800.0

    @property
    def creates(self) -> LogNormal:
        return LogNormal(self.create_median, self.create_p95)


@dataclass(frozen=True)
class StoppedTier:
    """Machines kept stopped, and what the cloud bills (per hour) for each state."""

    size: int = 0
    start_median: float = 20.0  # seconds to start a stopped machine
    start_p95: float = 40.0
    running_per_hour: float = 1.0
    stopped_per_hour: float = 0.05
    # The pool's own creates start a stopped machine too; False: only jobs that find no
    # ready machine do, as the pool service does today (driver.pool.stopped).
    pool_starts: bool = True


@dataclass
class PoolVM:
    name: str
    started: float
    ready_at: float | None = None
    claimed_at: float | None = None
    removed_at: float | None = None


@dataclass
class JobRun:
    job: TraceJob
    number: int  # its place in the trace: the job id the lookahead knows it by
    hit: bool = False
    create_started: float | None = None
    prepared: float | None = None  # prepare seconds
    machine: str = ""  # the pool machine it took, on a hit
    own_machine: float = 0.0  # seconds its own machine was being made (a miss)

    @property
    def waited_for_capacity(self) -> float:
        return 0.0 if self.create_started is None else self.create_started - self.job.arrival


class RateBucket:
    """[limits] create_rate and create_burst, as driver.limits.TokenBucket counts them."""

    def __init__(self, limits: LimitSettings) -> None:
        self.rate, self.burst = limits.create_rate, limits.create_burst
        self.tokens, self.at = float(self.burst), 0.0

    def take(self, now: float) -> bool:
        if not self.rate:
            return True
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.at) * self.rate / 60)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Result:
    label: str
    runs: list[JobRun]
    vms: list[PoolVM]
    end: float
    wall: float
    wanted_mean: float = 0.0
    claim_seconds: float = 1.0
    stopped_seconds: float = 0.0  # machine-seconds of the stopped tier, stopped
    tier_running: float = 0.0  # and running: made for the tier

    @property
    def jobs(self) -> int:
        return len(self.runs)

    @property
    def hit_rate(self) -> float:
        return sum(r.hit for r in self.runs) / max(1, self.jobs)

    def prepare(self, p: float) -> float:
        return percentile([r.prepared or 0.0 for r in self.runs], p)

    @property
    def idle_seconds(self) -> float:
        """Pool machines ready with no job, and the whole life of those removed unused."""
        total = 0.0
        for vm in self.vms:
            if vm.claimed_at is not None and vm.ready_at is not None:
                total += vm.claimed_at - vm.ready_at
            elif vm.removed_at is not None:
                total += vm.removed_at - vm.started  # made for nothing
            elif vm.ready_at is not None:
                total += self.end - vm.ready_at  # still ready at the end
        return total

    @property
    def idle_per_job(self) -> float:
        return self.idle_seconds / max(1, self.jobs)

    @property
    def total_seconds(self) -> float:
        """Every running machine-second: creates (the pool's and jobs' own), idle, jobs."""
        total = self.tier_running
        for vm in self.vms:
            until = vm.claimed_at if vm.claimed_at is not None else vm.removed_at
            total += (self.end if until is None else until) - vm.started
        for run in self.runs:  # a job's own create, or its claim of a pool machine
            total += (run.own_machine or self.claim_seconds) + run.job.duration
        return total

    @property
    def total_per_job(self) -> float:
        return self.total_seconds / max(1, self.jobs)

    def cost_per_job(self, tier: StoppedTier) -> float:
        """Cloud cost per job, at the tier's prices for running and stopped machines."""
        running = self.total_seconds * tier.running_per_hour
        return (running + self.stopped_seconds * tier.stopped_per_hour) / 3600 / max(1, self.jobs)

    @property
    def never_used(self) -> int:
        return sum(1 for vm in self.vms if vm.claimed_at is None and vm.removed_at is not None)


class Replay:
    """One policy over one trace: events on a heap, the controller every `tick` seconds."""

    # The order of events at equal times.
    JOB_DONE, POOL_READY, JOB_CREATED, ANNOUNCE, ARRIVE, WITHDRAW, TIER_STOPPED = range(7)

    def __init__(
        self,
        trace: Trace,
        pool: PoolSettings,
        limits: LimitSettings,
        *,
        seed: int,
        creates: Draws,
        claim_seconds: float,
        tick: float | None = None,
        policy: Policy | None = None,
        start_ready: int = 0,
        lookahead: bool = True,
        tier: StoppedTier | None = None,
        learn: bool = False,
    ) -> None:
        """`lookahead`: the trace's announcements (what GitLab tells) reach the pool;
        `learn`: the pool guesses pipelines' next stages from the jobs it served
        (driver.pool.shapes), as without [gitlab]."""
        self.trace = trace
        self.jobs = announce_by_stage(trace.jobs, claim_seconds)
        self.pool, self.limits = pool, limits
        self.rng = random.Random(seed * 7919 + 17)  # the pool's creates: their own stream
        self.creates = creates
        self.claim_seconds = claim_seconds
        self.tick = tick or pool.check_interval
        self.now = trace.start
        self.events: list[tuple[float, int, int, object]] = []
        self.order = 0
        self.vms: dict[str, PoolVM] = {}
        self.ready: list[ReadyMachine] = []
        self.pool_creating = 0
        self.job_machines = 0  # creating for, or running, a job
        self.job_creates = 0
        self.waiting: list[JobRun] = []
        self.bucket = RateBucket(limits)
        self.hits = self.misses = 0
        self.created_seconds: list[float] = []
        self.runs: list[JobRun] = []
        self.wanted_sum = 0.0
        self.lookahead = Lookahead()
        self.announcing = lookahead  # False: a pool that cannot ask GitLab (no [gitlab])
        self.shapes = PipelineShapes(self.lookahead) if learn else None
        self.ticks = 0
        self.tier = tier or StoppedTier()
        self.tier_starts = LogNormal(self.tier.start_median, self.tier.start_p95)
        self.stopped: list[float] = []  # when each machine of the tier was stopped
        self.stopped_seconds = self.tier_running = 0.0
        self.controller = PoolController(
            pool,
            limits,
            clock=lambda: WEEK_START + self.now,
            create=self._pool_create,
            remove=self._pool_remove,
            policy=policy or make_policy(pool),
        )
        for _ in range(start_ready):
            vm = self._new_vm()
            vm.ready_at = self.now
            self.ready.append(ReadyMachine(vm.name, WEEK_START + self.now))
        for _ in range(self.tier.size):
            self.stopped.append(self.now)

    # events

    def _at(self, when: float, kind: int, data: object) -> None:
        self.order += 1
        heapq.heappush(self.events, (when, kind, self.order, data))

    def _new_vm(self) -> PoolVM:
        vm = PoolVM(f"p{len(self.vms)}", self.now)
        self.vms[vm.name] = vm
        return vm

    def _from_tier(self) -> float | None:
        """Start a stopped machine, if the tier has one: its start seconds. The tier is
        refilled by a full create (billed running), then stopped."""
        if not self.stopped:
            return None
        self.stopped_seconds += self.now - self.stopped.pop(0)
        refill = self.creates.draw(self.rng)
        self.tier_running += refill
        self._at(self.now + refill, self.TIER_STOPPED, None)
        return self.tier_starts.draw(self.rng)

    def _pool_create(self) -> bool:
        if not self.bucket.take(self.now):
            return False
        vm = self._new_vm()
        self.pool_creating += 1
        start = self._from_tier() if self.tier.pool_starts else None
        seconds = self.creates.draw(self.rng) if start is None else start
        self._at(self.now + seconds, self.POOL_READY, vm)
        return True

    def _pool_remove(self, name: str, why: str) -> None:
        for i, machine in enumerate(self.ready):
            if machine.name == name:
                del self.ready[i]
                self.vms[name].removed_at = self.now
                self._admit_waiting()
                return

    @property
    def machines(self) -> int:
        return len(self.ready) + self.pool_creating + self.job_machines

    def _may_create_for_job(self) -> bool:
        if self.limits.max_machines and self.machines >= self.limits.max_machines:
            return False
        creating = self.job_creates + self.pool_creating
        if self.limits.max_creating and creating >= self.limits.max_creating:
            return False
        return self.bucket.take(self.now)

    def _admit_waiting(self) -> None:
        while self.waiting and self._may_create_for_job():
            self._start_job_create(self.waiting.pop(0))

    def _start_job_create(self, run: JobRun) -> None:
        run.create_started = self.now
        self.job_machines += 1
        self.job_creates += 1
        start = self._from_tier()
        run.own_machine = run.job.create if start is None else start
        self._at(self.now + run.own_machine, self.JOB_CREATED, run)

    def _arrive(self, run: JobRun) -> None:
        number, job = run.number, run.job
        if self.shapes is not None and job.pipeline >= 0:  # stages by number
            number = self.shapes.arrived(
                number, job.project, job.pipeline, str(job.stage), WEEK_START + self.now
            )
        self.lookahead.arrived(number, WEEK_START + self.now, hit=bool(self.ready))
        self.runs.append(run)
        if self.ready:
            machine = self.ready.pop(0)  # the longest idle, as PoolStore.claim takes it
            self.vms[machine.name].claimed_at = self.now
            run.machine = machine.name
            run.hit = True
            run.prepared = self.claim_seconds
            self.hits += 1
            self.job_machines += 1
            self._at(self.now + self.claim_seconds + run.job.duration, self.JOB_DONE, run)
            return
        self.misses += 1
        if not self.waiting and self._may_create_for_job():
            self._start_job_create(run)
        else:
            self.waiting.append(run)

    def _pool_ready(self, vm: PoolVM) -> None:
        vm.ready_at = self.now
        self.pool_creating -= 1
        self.created_seconds.append(self.now - vm.started)
        if self.waiting:  # a job waiting for capacity takes it, as prepare does
            waiter = self.waiting.pop(0)
            vm.claimed_at = self.now
            waiter.machine = vm.name
            waiter.prepared = self.now - waiter.job.arrival + self.claim_seconds
            self.job_machines += 1
            done = self.now + self.claim_seconds + waiter.job.duration
            self._at(done, self.JOB_DONE, waiter)
        else:
            self.ready.append(ReadyMachine(vm.name, WEEK_START + self.now))
        self._admit_waiting()

    def _handle(self, kind: int, data: object) -> None:
        if kind == self.ARRIVE:
            assert isinstance(data, JobRun)
            self._arrive(data)
        elif kind == self.POOL_READY:
            assert isinstance(data, PoolVM)
            self._pool_ready(data)
        elif kind == self.JOB_CREATED:
            assert isinstance(data, JobRun)
            self.job_creates -= 1
            data.prepared = self.now - data.job.arrival
            self._at(self.now + data.job.duration, self.JOB_DONE, data)
            self._admit_waiting()
        elif kind == self.JOB_DONE:
            self.job_machines -= 1
            self._admit_waiting()
        elif kind == self.ANNOUNCE:
            assert isinstance(data, tuple)
            ids, predicted = data
            self.lookahead.announce(ids, WEEK_START + self.now, WEEK_START + predicted)
        elif kind == self.WITHDRAW:
            assert isinstance(data, tuple)
            number, elsewhere = data
            self.lookahead.withdraw([number], elsewhere=elsewhere)
        elif kind == self.TIER_STOPPED:
            self.stopped.append(self.now)

    def _step(self) -> None:
        if self.shapes is not None:
            self.shapes.tick(WEEK_START + self.now, create_horizon(self.controller.policy))
        obs = Observation(
            ready=tuple(self.ready),
            creating=self.pool_creating,
            in_use=self.job_machines,
            hits=self.hits,
            misses=self.misses,
            create_seconds=self.created_seconds,
            machines=self.machines,
            job_creates=self.job_creates,
            waiting=len(self.waiting),
            ahead=self.lookahead.report(),
        )
        self.hits = self.misses = 0
        self.created_seconds = []
        decision = self.controller.step(obs)
        self.wanted_sum += decision.wanted
        self.ticks += 1
        self._admit_waiting()

    def _schedule(self) -> None:
        for number, job in enumerate(self.jobs):
            if job.runs and job.here:
                self._at(job.arrival, self.ARRIVE, JobRun(job, number))
            else:  # skipped, canceled, or started by another runner manager
                self._at(job.arrival, self.WITHDRAW, (number, job.runs and not job.here))
        if not self.announcing:
            return
        announced = [
            (job.announced, job.predicted, number)
            for number, job in enumerate(self.jobs)
            if job.announced is not None and not math.isnan(job.announced)
        ]
        announced.sort(key=lambda a: (a[0], a[2]))
        for (when, _), group in groupby(announced, key=lambda a: (a[0], a[1])):
            predicted = [a for a in group]
            ids = [number for _, _, number in predicted]
            self._at(when, self.ANNOUNCE, (ids, predicted[0][1]))

    def run(self, label: str) -> Result:
        started = time.perf_counter()
        self._schedule()
        next_tick = self.now = self.trace.start
        while self.events or next_tick <= self.trace.length:
            when = self.events[0][0] if self.events else math.inf
            if next_tick <= when and next_tick <= self.trace.length:
                self.now = next_tick
                self._step()
                next_tick += self.tick
                continue
            when, kind, _, data = heapq.heappop(self.events)
            self.now = when
            self._handle(kind, data)
        end = max(self.now, self.trace.length)
        self.stopped_seconds += sum(end - since for since in self.stopped)
        result = Result(
            label,
            self.runs,
            list(self.vms.values()),
            end,
            time.perf_counter() - started,
            claim_seconds=self.claim_seconds,
            stopped_seconds=self.stopped_seconds,
            tier_running=self.tier_running,
        )
        result.wanted_mean = self.wanted_sum / max(1, self.ticks)
        return result
