"""Pipeline shapes learned from the jobs served, for a pool that cannot ask GitLab.

Without [gitlab] the pool is told nothing ahead. But each job's payload names
its project, pipeline and stage, so the pool learns, per project and stage,
what followed it in the pipelines it served: no next stage (the pipeline ended
or failed there), or a next stage of so many jobs, so many seconds after this
stage's first job. Each outcome is one of the last KEPT of that stage: a run
of failures lowers the chance of a next stage, it never rules it out.

The next stage's jobs are announced to the lookahead as placeholders
(negative ids) only as their arrival draws near: at each tick, for a pipeline
whose stage began `e` seconds ago, the share of the outcomes remembered that
came within (e, e + horizon] among those still possible after `e` (the
pipelines that ended there, and those whose next stage came later than `e`)
is the chance the next stage comes within one create time. Each placeholder
counts as that chance times the usual size of the next stage over the
placeholders announced (`Expected.likely`): the pool keeps about the jobs
expected within a create time, as the demand policy does for the rest, and
starts their machines at once (no predicted time: the guess is only made when
it is near). A next stage that came takes the placeholders; those it did not
need are withdrawn once its jobs stopped arriving, and all of them once no
outcome remembered came that late.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from driver.parsed import array, integer, items, number
from driver.pool.control import DemandPolicy, IdleCountPolicy, Policy
from driver.pool.lookahead import Lookahead
from driver.records import JobRecord

# A stage's jobs are picked up within seconds of each other (the controller's BURST_GAP).
PICKUP = 10.0


@dataclass
class _Stage:
    name: str
    first: float  # when its first job arrived
    jobs: int = 1


@dataclass
class _Pipeline:
    project: int
    stages: list[_Stage]
    last: float  # when its latest job arrived
    coming: list[int] = field(default_factory=list)  # placeholders its stage takes
    ahead: list[int] = field(default_factory=list)  # placeholders for the next stage
    likely: float = -1.0  # what `ahead` was last announced with
    learned: int = 0  # its stages whose successor has been learned


class _Followed:
    """What followed one (project, stage): its last KEPT outcomes."""

    def __init__(self, kept: int) -> None:
        self.outcomes: deque[tuple[int, float]] = deque(maxlen=kept)  # (jobs, lag); 0: none
        self._lags: list[float] | None = None

    def add(self, jobs: int, lag: float) -> None:
        self.outcomes.append((jobs, lag))
        self._lags = None

    @property
    def lags(self) -> list[float]:
        """The lags of the outcomes with a next stage, in order."""
        if self._lags is None:
            self._lags = sorted(lag for jobs, lag in self.outcomes if jobs > 0)
        return self._lags

    def size(self) -> float:
        """The mean jobs of a next stage that came."""
        came = [jobs for jobs, _ in self.outcomes if jobs > 0]
        return sum(came) / len(came) if came else 0.0

    def chance(self, elapsed: float, horizon: float) -> float:
        """The chance a next stage comes within `horizon` seconds, given it has not come
        by `elapsed` (give or take a PICKUP: it may be due this very moment)."""
        lags = self.lags
        earlier = bisect.bisect_right(lags, elapsed - PICKUP)
        possible = len(self.outcomes) - earlier
        within = bisect.bisect_right(lags, elapsed + horizon) - earlier
        return within / possible if within > 0 else 0.0


class PipelineShapes:
    """What followed each (project, stage), learned; placeholders announced for it."""

    KEPT = 50  # outcomes remembered per (project, stage)
    NEEDED = 5  # before any announcement
    FORGET = 3600.0  # a pipeline quiet this long is over

    def __init__(self, lookahead: Lookahead, horizon: float = 120.0) -> None:
        """`horizon`: seconds a create takes (the tick may pass a measured one)."""
        self.lookahead = lookahead
        self.horizon = horizon
        self.followed: dict[tuple[int, str], _Followed] = {}
        self.pipelines: dict[int, _Pipeline] = {}
        self.ids = itertools.count(-1, -1)

    def memory(self) -> list[object]:
        """What followed each (project, stage), as JSON, for the next start of the service."""
        return [
            [project, stage, [list(outcome) for outcome in followed.outcomes]]
            for (project, stage), followed in self.followed.items()
        ]

    def recall(self, memory: object) -> None:
        """Take back what `memory` gave; an entry that is not one is left out."""
        for entry in items(memory):
            try:
                project, stage, outcomes = array(entry)
                followed = _Followed(self.KEPT)
                for outcome in array(outcomes):
                    jobs, lag = array(outcome)
                    followed.add(integer(jobs), number(lag))
                self.followed[(integer(project), str(stage))] = followed
            except (TypeError, ValueError):
                continue

    def arrived(self, job_id: int, project: int, pipeline: int, stage: str, now: float) -> int:
        """A job arrived; the id the lookahead counts its arrival under (a placeholder
        announced for its stage, or its own)."""
        seen = self.pipelines.get(pipeline)
        if seen is None:
            self.pipelines[pipeline] = _Pipeline(project, [_Stage(stage, now)], now)
            return job_id
        seen.last = now
        if seen.stages[-1].name == stage:
            seen.stages[-1].jobs += 1
        elif any(s.name == stage for s in seen.stages):
            pass  # a retry of an earlier stage's job: not a new stage
        else:  # a new stage: the last one's count is final
            self._learn_counted(seen)
            seen.stages.append(_Stage(stage, now))
            self.lookahead.withdraw(seen.coming)
            seen.coming, seen.ahead, seen.likely = seen.ahead, [], -1.0
        return seen.coming.pop() if seen.coming else job_id

    def _learn_counted(self, seen: _Pipeline) -> None:
        """What followed the stage before the last, once the last one's jobs are all in."""
        if len(seen.stages) - 1 > seen.learned:
            self._learn(seen, seen.stages[-2], seen.stages[-1])
            seen.learned = len(seen.stages) - 1

    def _learn(self, seen: _Pipeline, stage: _Stage, after: _Stage | None) -> None:
        followed = self.followed.setdefault((seen.project, stage.name), _Followed(self.KEPT))
        followed.add(0, 0.0) if after is None else followed.add(
            after.jobs, after.first - stage.first
        )

    def tick(self, now: float, horizon: float | None = None) -> None:
        """Announce, reweigh or withdraw each pipeline's next stage for `now`; a quiet
        pipeline is over: what followed its last stages is learned, and it is let go."""
        horizon = self.horizon if horizon is None else horizon
        for pipeline, seen in list(self.pipelines.items()):
            stage = seen.stages[-1]
            if now - seen.last > PICKUP:  # its stage's jobs are all in
                self.lookahead.withdraw(seen.coming)  # the placeholders none took
                seen.coming = []
                self._learn_counted(seen)
            if now - seen.last > self.FORGET:  # no next stage came: it ended (or failed)
                self._learn(seen, stage, None)
                self.lookahead.withdraw(seen.ahead)
                del self.pipelines[pipeline]
                continue
            self._announce(seen, stage, now, horizon)

    def _announce(self, seen: _Pipeline, stage: _Stage, now: float, horizon: float) -> None:
        followed = self.followed.get((seen.project, stage.name))
        chance = 0.0
        if followed is not None and len(followed.outcomes) >= self.NEEDED:
            chance = followed.chance(now - stage.first, horizon)
        if chance <= 0.0:
            if seen.ahead:
                self.lookahead.withdraw(seen.ahead)
                seen.ahead, seen.likely = [], -1.0
            return
        assert followed is not None
        size = followed.size()
        if not seen.ahead:
            seen.ahead = [next(self.ids) for _ in range(math.ceil(size))]
        likely = min(1.0, chance * size / len(seen.ahead))
        if abs(likely - seen.likely) > 0.01:
            self.lookahead.announce(seen.ahead, now, likely=likely, guess=True)
            seen.likely = likely


def create_horizon(policy: Policy) -> float | None:
    """A slow create, as the policy measured them: how near a guessed stage is announced."""
    if isinstance(policy, DemandPolicy | IdleCountPolicy):
        return policy.timing.learned()[0]
    return None


class ServedShapes:
    """The pool service's view: the jobs prepared on this host (their records, with
    project, pipeline and stage from the payload) teach the shapes; their arrivals,
    under the placeholder each took, are told to the lookahead."""

    def __init__(self, lookahead: Lookahead) -> None:
        self.lookahead = lookahead
        self.shapes = PipelineShapes(lookahead)
        # Jobs counted, and when last seen: a job whose prepare the runner retries
        # (its record gone, then back) is one job of its stage, not two.
        self.seen: dict[int, float] = {}

    def served(
        self,
        records: Mapping[int, JobRecord | None],
        now: float,
        pool_machine: Callable[[int, JobRecord], bool],
        horizon: float | None = None,
    ) -> None:
        """The records of the jobs on this host now; `pool_machine(job_id, record)`: it
        took a ready machine (a hit)."""
        for job_id, record in records.items():
            if record is None:
                continue
            counted_before = job_id in self.seen
            self.seen[job_id] = now
            if counted_before:
                continue
            counted = job_id
            if record.pipeline_id is not None and record.stage:
                counted = self.shapes.arrived(
                    job_id, record.project_id, record.pipeline_id, record.stage, now
                )
            self.lookahead.arrived(counted, now, pool_machine(job_id, record))
        self.seen = {job: at for job, at in self.seen.items() if now - at < PipelineShapes.FORGET}
        self.shapes.tick(now, horizon)
