"""What GitLab will run next in a pipeline, and when: its rules, from its job list.

GitLab starts a job when the jobs it waits for are done: the jobs it `needs:`,
or, without `needs:`, every job of the stages before its own. Then `when:`
decides whether it runs: `on_success` (the default) if none of those failed,
`on_failure` only if one did, `always` either way, `manual` when a person
starts it, `delayed` `start_in` after. A manual job that may not fail (the
default under `rules:`) holds everything after it until a person acts. A job
of a `resource_group` waits ("waiting_for_resource") until another pipeline's
job lets go of it: no one can say when.

`Plan` tells, for each job of a pipeline, whether it may still run and when it
should start and end: a running job ends its usual duration after it started,
a waiting one starts when the last of the jobs it waits for should end, a
delayed one at its scheduled time, a trigger job (a bridge) of
`strategy: depend` when its child pipeline should end. NaN where that cannot
be told (a duration never seen, a resource group, a delay not yet set); inf
where it never comes without a person.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# GitLab's job statuses (CiJobStatus), lower case as the REST API writes them.
BEGUN = {"pending", "preparing", "running", "waiting_for_callback"}
FINISHED = {"success", "failed", "canceled", "canceling", "skipped"}
NOT_YET = {"created", "scheduled", "waiting_for_resource"}


@dataclass(frozen=True)
class PipelineJob:
    id: int
    status: str
    stage: str
    tags: frozenset[str]
    name: str = ""
    started: float | None = None  # when it started running (clock seconds), if it did
    allow_failure: bool = False
    when: str = "on_success"  # GitLab's `when:`; the REST list does not tell: assumed
    needs: tuple[str, ...] | None = None  # the names of the jobs it needs; None: stages
    scheduled_at: float | None = None  # a delayed job's due time, once GitLab set it
    stage_index: int = -1  # its stage's place in the pipeline; -1: told by job ids
    bridge: bool = False  # a trigger job (REST: /bridges; GraphQL: kind BRIDGE)
    downstream: tuple[int, int] | None = None  # a bridge's (project, pipeline), once made


def latest(times: Iterable[float]) -> float:
    """The latest of `times`: NaN if any is unknown, -inf if there are none."""
    result = -math.inf
    for t in times:
        if math.isnan(t):
            return math.nan
        result = max(result, t)
    return result


class Plan:
    """One look at a pipeline's jobs (the latest try of each, as GitLab lists them)."""

    def __init__(
        self,
        jobs: list[PipelineJob],
        usual: dict[str, float],
        now: float,
        child_end: Callable[[int, int], float] = lambda project, pipeline: math.nan,
    ) -> None:
        self.jobs = jobs
        self.usual = usual
        self.now = now
        self.child_end = child_end  # a child pipeline's predicted end
        self.by_name = {job.name: job for job in jobs}
        # Stage order: GitLab's, where told; else GitLab numbers jobs stage by stage.
        first_id: dict[str, int] = {}
        for job in jobs:
            first_id[job.stage] = min(first_id.get(job.stage, job.id), job.id)
        by_ids = {stage: n for n, stage in enumerate(sorted(first_id, key=first_id.__getitem__))}
        self.rank = {
            job.id: job.stage_index if job.stage_index >= 0 else by_ids[job.stage] for job in jobs
        }
        self._starts: dict[int, float] = {}
        self._ends: dict[int, float] = {}
        self._held: dict[int, bool] = {}
        self._waits: dict[int, list[PipelineJob]] = {}
        self._upstream: dict[int, str] = {}

    def waits_for(self, job: PipelineJob) -> list[PipelineJob]:
        """The jobs GitLab waits for before it starts `job`."""
        if job.id not in self._waits:
            if job.needs is not None:
                waited = [self.by_name[name] for name in job.needs if name in self.by_name]
            else:
                rank = self.rank[job.id]
                waited = [other for other in self.jobs if self.rank[other.id] < rank]
            self._waits[job.id] = waited
        return self._waits[job.id]

    def upstream(self, job: PipelineJob) -> str:
        """What the jobs `job` waits for came to so far: failed, canceled or success."""
        if job.id not in self._upstream:
            outcome = "success"
            for other in self.waits_for(job):
                if other.status == "failed" and not other.allow_failure:
                    outcome = "failed"
                    break
                if other.status in ("canceled", "canceling"):
                    outcome = "canceled"
            self._upstream[job.id] = outcome
        return self._upstream[job.id]

    def blocking(self, job: PipelineJob) -> bool:
        """A manual job that may not fail, not started: what follows waits for a person."""
        manual = job.status == "manual" or (job.status == "created" and job.when == "manual")
        return manual and not job.allow_failure

    def held(self, job: PipelineJob) -> bool:
        """Whether `job` waits, at any remove, for a blocking manual job."""
        if job.id not in self._held:
            self._held[job.id] = False  # a cycle (never from GitLab): not held
            self._held[job.id] = any(
                self.blocking(other) or (other.status == "created" and self.held(other))
                for other in self.waits_for(job)
            )
        return self._held[job.id]

    def may_run(self, job: PipelineJob) -> bool:
        """Whether GitLab will start `job` without a person acting, as things stand."""
        if job.status in BEGUN or job.status in ("scheduled", "waiting_for_resource"):
            return True
        if job.status != "created" or job.when == "manual":
            return False
        if self.held(job):
            return False
        upstream = self.upstream(job)
        if job.when == "on_failure":
            return upstream == "failed"
        if job.when == "always":
            return True
        return upstream == "success"  # on_success, delayed

    def start(self, job: PipelineJob) -> float:
        if job.id not in self._starts:
            self._starts[job.id] = math.nan  # a cycle (never from GitLab): unknown
            self._starts[job.id] = self._start(job)
        return self._starts[job.id]

    def _start(self, job: PipelineJob) -> float:
        if job.status in FINISHED or job.status in BEGUN:
            return self.now if job.started is None else job.started
        if job.status == "scheduled":
            return math.nan if job.scheduled_at is None else job.scheduled_at
        if job.status == "waiting_for_resource":
            return math.nan  # until another pipeline lets go of the resource
        if not self.may_run(job):
            return math.inf
        if job.when == "delayed":
            return math.nan  # its start_in is told only once it is scheduled
        ends = latest(self.end(other) for other in self.waits_for(job))
        return ends if math.isnan(ends) else max(self.now, ends)

    def end(self, job: PipelineJob) -> float:
        """When `job` should be done, as far as the jobs after it wait for it."""
        if job.id not in self._ends:
            self._ends[job.id] = math.nan
            self._ends[job.id] = self._end(job)
        return self._ends[job.id]

    def _end(self, job: PipelineJob) -> float:
        if job.status in FINISHED:
            return -math.inf
        if self.blocking(job):
            return math.inf
        if job.status == "manual" or (job.status == "created" and not self.may_run(job)):
            # Not to run: GitLab skips it once what it waits for is done.
            return latest(self.end(other) for other in self.waits_for(job))
        start = self.start(job)
        if job.bridge:
            if job.downstream is not None:  # strategy: depend, or it would be done
                return self.child_end(*job.downstream)
            return math.nan
        return start + self.usual.get(job.name, math.nan)

    def announced_at(self, job: PipelineJob) -> float | None:
        """When a job not begun should arrive, if it is to be announced now; else None.

        Announced: a delayed job once GitLab scheduled it (at its time); a job that
        may run once every job it waits for has begun (at the latest of their
        predicted ends, NaN if unknown), or earlier where that end can be predicted."""
        if job.bridge or not self.may_run(job):
            return None
        if job.status == "scheduled":
            return job.scheduled_at  # None: REST does not tell when
        if job.status != "created" or job.when == "delayed":
            return None
        start = self.start(job)
        if math.isfinite(start):
            return start
        waited = self.waits_for(job)
        if math.isnan(start) and all(other.status not in NOT_YET for other in waited):
            return start
        return None
