"""Pipeline shapes learned from the jobs served, for a pool that cannot ask GitLab.

Without [gitlab] the pool is told nothing ahead. But each job's payload names
its project, pipeline and stage, so the pool can learn, per project and
stage, what usually followed it: how many jobs of a next stage, and how long
after the stage's first job. When the first job of a stage arrives, the
likely next stage is announced to the lookahead as placeholder jobs (negative
ids), each counted as the share of such stages that had a next one; the next
stage's jobs arrive as those placeholders, and placeholders nobody took are
withdrawn when the stage after begins, or once they are well overdue.
"""

from __future__ import annotations

import itertools
import statistics
from collections import deque
from dataclasses import dataclass, field

from driver.pool.lookahead import Lookahead


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
    overdue: float = 0.0  # when `ahead` is given up


class PipelineShapes:
    """What followed each (project, stage), learned; placeholders announced for it."""

    KEPT = 50  # stages remembered per (project, stage)
    NEEDED = 5  # before any announcement
    FORGET = 3600.0  # a pipeline quiet this long is over

    def __init__(self, lookahead: Lookahead) -> None:
        self.lookahead = lookahead
        # (project, stage) -> (jobs of the stage after it, seconds from its first job to
        # theirs); 0 jobs: the pipeline ended (or failed) after it.
        self.followed: dict[tuple[int, str], deque[tuple[int, float]]] = {}
        self.pipelines: dict[int, _Pipeline] = {}
        self.ids = itertools.count(-1, -1)

    def arrived(self, job_id: int, project: int, pipeline: int, stage: str, now: float) -> int:
        """A job arrived; the id the lookahead counts its arrival under (a placeholder
        announced for its stage, or its own)."""
        self.expire(now)
        seen = self.pipelines.get(pipeline)
        if seen is None:
            seen = _Pipeline(project, [_Stage(stage, now)], now)
            self.pipelines[pipeline] = seen
            self._announce(seen, now)
            return job_id
        seen.last = now
        if seen.stages[-1].name == stage:
            seen.stages[-1].jobs += 1
        else:  # a new stage: the one before the last is over, and so is its count
            if len(seen.stages) >= 2:
                self._learn(seen, seen.stages[-2], seen.stages[-1])
            seen.stages.append(_Stage(stage, now))
            self.lookahead.withdraw(seen.coming)
            seen.coming, seen.ahead = seen.ahead, []
            self._announce(seen, now)
        return seen.coming.pop() if seen.coming else job_id

    def _learn(self, seen: _Pipeline, stage: _Stage, after: _Stage | None) -> None:
        followed = self.followed.setdefault((seen.project, stage.name), deque(maxlen=self.KEPT))
        followed.append((0, 0.0) if after is None else (after.jobs, after.first - stage.first))

    def _announce(self, seen: _Pipeline, now: float) -> None:
        history = self.followed.get((seen.project, seen.stages[-1].name))
        if history is None or len(history) < self.NEEDED:
            return
        followed = [(jobs, lag) for jobs, lag in history if jobs > 0]
        if not followed:
            return
        share = len(followed) / len(history)
        jobs = max(1, round(statistics.median(n for n, _ in followed)))
        lag = statistics.median(lag for _, lag in followed)
        seen.ahead = [next(self.ids) for _ in range(jobs)]
        seen.overdue = now + lag + max(600.0, lag)
        self.lookahead.announce(seen.ahead, now, now + lag, likely=share)

    def expire(self, now: float) -> None:
        """Placeholders overdue are withdrawn; a quiet pipeline is over: what followed
        its last stages is learned, and it is let go."""
        for pipeline, seen in list(self.pipelines.items()):
            if seen.ahead and now > seen.overdue:
                self.lookahead.withdraw(seen.ahead)
                seen.ahead = []
            if now - seen.last > self.FORGET:
                if len(seen.stages) >= 2:
                    self._learn(seen, seen.stages[-2], seen.stages[-1])
                self._learn(seen, seen.stages[-1], None)
                self.lookahead.withdraw([*seen.coming, *seen.ahead])
                del self.pipelines[pipeline]
