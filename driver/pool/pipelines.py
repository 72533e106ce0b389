"""Ask GitLab which jobs of the pipelines this runner works on are still to come.

When a job of pipeline P starts here, the jobs P runs later already exist at
GitLab, most in status "created", waiting for the jobs before them. The pool
service (with `policy = "demand"` and `[gitlab]` configured) lists P's jobs,
and announces to the Lookahead, with the tags they ask for, those this runner
could take (their tags all among those of the jobs it took, or none if it took
an untagged one) that GitLab will start without a person acting
(driver.pool.plan: `needs:`, stages, `when:`, manual jobs, delays), each once
every job it waits for has begun, or earlier where its start can be predicted.
It looks again every RECHECK seconds while any is announced, withdraws those
that will not come (skipped, canceled, waiting for a resource group), and
those seen running elsewhere as taken by another runner manager (which the
lookahead counts per tag set). A job of P arriving asks for a look at once.

With `[gitlab] watch_heard_pipelines` (driver.pool.webhook), a Pipeline Hook
event of a pipeline no job of which came here starts watching it too, so that
a stage whose stage before ran on another runner manager is announced here:
its jobs this runner could take are those whose tags the jobs it took lately
had (none learned yet: nothing is watched). One found to have none is
remembered as not ours (NOT_OURS_KEPT at most, for WATCHED_AT_MOST): its
further events ask GitLab nothing. Such a pipeline, or any with jobs of ours
still to begin, stays watched while nothing is announced, looked at again
when an event of it comes and every RECHECK (HEARD_RECHECK) seconds, and let
go WATCHED_AT_MOST after its last event or job here.

The predictions: a job should end its usual duration (the median of its name's
last successful runs in the project, read at most once per USUAL_KEPT seconds)
after it started; a job waiting starts at the latest predicted end of the jobs
it waits for; a trigger job of `strategy: depend` ends when its child pipeline
should, which is watched like any pipeline, its jobs announced the same way.

Only ever a hint: an error or a refused token costs the lookahead, never a job.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from driver.pool.gitlab_api import RateLimited
from driver.pool.lookahead import Lookahead
from driver.pool.plan import PipelineJob, Plan, latest

__all__ = ["ListJobs", "PipelineJob", "PipelineWatch", "UsualDurations"]

RECHECK = 30.0  # seconds between two looks at a pipeline with jobs announced
# With GitLab's webhook events, which ask for a look at each change: a safety net only.
HEARD_RECHECK = 300.0
USUAL_KEPT = 3600.0  # seconds a project's usual job durations are kept before read again
# A pipeline none of whose jobs came here for this long is no longer watched, and what
# it announced is withdrawn: GitLab down for hours must not keep machines for it.
WATCHED_AT_MOST = 3 * 3600.0
# An announced job seen running this long without having come here went to another
# runner manager (GitLab marks it running when a runner takes it; ours writes its
# record within seconds, seen at the next tick).
ELSEWHERE_AFTER = RECHECK
NOT_OURS_KEPT = 10_000  # heard pipelines remembered as having nothing for this runner
TAG_SETS_KEPT = 100  # the tag sets of the jobs this runner took lately
# A pipeline event of these: a pipeline done (or going), not worth a first look.
DONE = {"success", "failed", "canceled", "canceling", "skipped"}
# Jobs that may still begin: one of these keeps a pipeline watched while events come.
NOT_BEGUN = {"created", "pending", "preparing", "scheduled", "waiting_for_resource", "manual"}
COMING_NOW = {"pending", "preparing"}  # an announced job GitLab queued: it comes now
RAN = {"running", "waiting_for_callback", "success", "failed", "canceled", "canceling"}


class ListJobs(Protocol):
    def __call__(self, project_id: int, pipeline_id: int) -> list[PipelineJob]: ...


class UsualDurations(Protocol):
    """A project's job names and what their recent successful runs took (seconds)."""

    def __call__(self, project_id: int) -> dict[str, float]: ...


@dataclass
class Pipeline:
    project_id: int
    ours: set[int] = field(default_factory=set)  # its jobs that came to this runner
    announced: set[int] = field(default_factory=set)
    look_at: float = 0.0  # when to list its jobs next
    last_arrival: float = 0.0  # when a job of it last came here (or it was last heard)
    # The tags of the jobs of it (or of its parent's) that came here: those the runner has.
    tag_sets: set[frozenset[str]] = field(default_factory=set)
    ends: float = math.nan  # when its last job should end (a child's: its bridge's end)
    children: set[int] = field(default_factory=set)  # downstream pipelines seen
    parent: int | None = None  # the pipeline whose trigger job made it
    heard: bool = False  # watched because an event of it was heard, not a job of ours
    waiting: bool = False  # a job this runner could take has not begun yet


class PipelineWatch:
    """Announces to `lookahead` the jobs still to come of each pipeline a job of ours is
    in, and of their child pipelines."""

    def __init__(
        self,
        lookahead: Lookahead,
        list_jobs: ListJobs,
        warn: Callable[[str], None],
        usual_durations: UsualDurations | None = None,
    ) -> None:
        self.lookahead = lookahead
        self.list_jobs = list_jobs
        self.usual_durations = usual_durations
        self.warn = warn
        self.pipelines: dict[int, Pipeline] = {}
        self.usual: dict[int, tuple[float, dict[str, float]]] = {}  # project: (read at, usual)
        self.failing = False  # warn once per run of errors, not every tick
        self.quiet_until = -math.inf  # GitLab's rate limit said: ask nothing before then
        self.recheck = RECHECK  # HEARD_RECHECK once webhook events come (driver.pool.webhook)
        # [gitlab] watch_heard_pipelines: a pipeline event starts watching its pipeline.
        self.watch_heard = False
        # Tag sets of the jobs this runner took (the latest last), for heard pipelines.
        self.tag_sets: dict[frozenset[str], None] = {}
        self.not_ours: dict[int, float] = {}  # heard pipelines with nothing for us: since
        # The pool's loop tells of arrivals while `poll` may be waiting on GitLab in
        # another thread: GitLab is asked outside this lock, never holding the loop.
        self.lock = threading.Lock()

    def job_arrived(
        self, project_id: int, pipeline_id: int | None, job_id: int, now: float, hit: bool
    ) -> None:
        self.lookahead.arrived(job_id, now, hit)
        if pipeline_id is None:
            return
        with self.lock:
            pipeline = self.pipelines.setdefault(pipeline_id, Pipeline(project_id))
            pipeline.ours.add(job_id)
            pipeline.announced.discard(job_id)
            pipeline.look_at = now  # its next stage may be the one after this job's
            pipeline.last_arrival = now

    def heard(
        self,
        pipeline_id: int,
        job_id: int | None,
        status: str,
        now: float,
        project_id: int | None = None,
    ) -> None:
        """A webhook event of a pipeline (job_id None) or one of its jobs: a cancel
        withdraws at once; anything else asks for a look at the next poll. With
        `watch_heard`, a pipeline event of a pipeline not watched starts watching it."""
        with self.lock:
            pipeline = self.pipelines.get(pipeline_id)
            if pipeline is None:
                if job_id is None and project_id is not None:
                    self._hear(pipeline_id, project_id, status, now)
                return
            if self.watch_heard:  # an event of it: GitLab still tells of it
                pipeline.last_arrival = max(pipeline.last_arrival, now)
            if status in ("canceled", "canceling"):
                canceled = pipeline.announced if job_id is None else {job_id}
                canceled = canceled & pipeline.announced
                self.lookahead.withdraw(canceled)
                pipeline.announced -= canceled
            pipeline.look_at = now  # (during a look: looked at again once it is done)

    def _hear(self, pipeline_id: int, project_id: int, status: str, now: float) -> None:
        """Start watching a pipeline heard of, unless it is done, known to have nothing
        for this runner, or this runner's tags are not known yet."""
        if not self.watch_heard or not self.tag_sets or status in DONE:
            return
        if now - self.not_ours.get(pipeline_id, -math.inf) <= WATCHED_AT_MOST:
            return
        self.pipelines[pipeline_id] = Pipeline(
            project_id, look_at=now, last_arrival=now, tag_sets=set(self.tag_sets), heard=True
        )

    def poll(self, now: float) -> None:
        with self.lock:
            for pipeline_id, old in list(self.pipelines.items()):
                if now - old.last_arrival > WATCHED_AT_MOST:
                    self.lookahead.withdraw(old.announced)
                    del self.pipelines[pipeline_id]
            for pipeline_id, since in list(self.not_ours.items()):  # the oldest first
                if now - since <= WATCHED_AT_MOST and len(self.not_ours) <= NOT_OURS_KEPT:
                    break
                del self.not_ours[pipeline_id]
        looked: set[int] = set()
        for _ in range(2):  # and once more for the child pipelines the first round found
            with self.lock:
                due = [
                    (i, p.project_id)
                    for i, p in self.pipelines.items()
                    if now >= p.look_at and i not in looked
                ]
            for pipeline_id, project_id in due:
                if now < self.quiet_until:
                    return  # what is due stays due, looked at once GitLab allows it
                looked.add(pipeline_id)
                if not self._look(pipeline_id, project_id, now):
                    return

    def _look(self, pipeline_id: int, project_id: int, now: float) -> bool:
        """List a pipeline's jobs and update what is announced; False on a 429."""
        try:
            jobs = self.list_jobs(project_id, pipeline_id)
        except RateLimited as e:
            self._rate_limited(now, e)
            return False
        except Exception as e:  # a hint only: the next look may do better
            if not self.failing:
                self.warn(f"cannot list the jobs of pipeline {pipeline_id}: {str(e)[:200]}")
            self.failing = True
            jobs = None
        usual = self._usual(project_id, now) if jobs else {}
        with self.lock:
            pipeline = self.pipelines.get(pipeline_id)
            if pipeline is None:
                return True
            # A job of it that came meanwhile asks for a look at once.
            arrived_meanwhile = pipeline.look_at > now
            if jobs is not None:
                self.failing = False
                if not self._update(pipeline_id, pipeline, jobs, now, usual) and (
                    pipeline.heard and not pipeline.ours
                ):  # heard of, and nothing of it for this runner: not asked of again
                    self.not_ours[pipeline_id] = now
                    self.lookahead.withdraw(pipeline.announced)
                    del self.pipelines[pipeline_id]
                    return True
            if arrived_meanwhile:
                return True
            parent = self.pipelines.get(pipeline.parent) if pipeline.parent else None
            # A child a watched parent may wait for is watched until its jobs are done.
            awaited = parent is not None and pipeline.ends != -math.inf
            # Heard of, with a job for us still to begin: its events (if the hook sends
            # job events) ask for the looks, the timer makes sure of them.
            waiting = self.watch_heard and pipeline.waiting
            if pipeline.announced or jobs is None or awaited or waiting:
                pipeline.look_at = now + self.recheck
            else:  # nothing more to watch until another of its jobs comes here
                del self.pipelines[pipeline_id]
        return True

    def _rate_limited(self, now: float, limit: RateLimited) -> None:
        """GitLab said 429: nothing is asked before its Retry-After; nothing withdrawn."""
        if now >= self.quiet_until:  # said once per 429, not per pipeline
            self.warn(f"GitLab's rate limit: the lookahead asks again in {limit.seconds:g}s")
        self.quiet_until = now + limit.seconds

    def _usual(self, project_id: int, now: float) -> dict[str, float]:
        """The project's usual job durations, read again once they are USUAL_KEPT old."""
        if self.usual_durations is None:
            return {}
        read_at, usual = self.usual.get(project_id, (-math.inf, {}))
        if now - read_at >= USUAL_KEPT:
            try:
                usual = self.usual_durations(project_id)
            except RateLimited as e:  # read again at the next look GitLab allows
                self._rate_limited(now, e)
                return {}
            except Exception as e:  # a hint only
                self.warn(f"cannot read the usual job durations of project {project_id}: {e}")
                usual = {}
            self.usual[project_id] = (now, usual)
        return usual

    def _update(
        self,
        pipeline_id: int,
        pipeline: Pipeline,
        jobs: Iterable[PipelineJob],
        now: float,
        usual: dict[str, float],
    ) -> bool:
        """Announce and withdraw; False if no job of it is one this runner could take."""
        jobs = list(jobs)
        for job in jobs:
            if job.id in pipeline.ours:
                pipeline.tag_sets.add(job.tags)
                self.tag_sets.pop(job.tags, None)  # the latest last
                self.tag_sets[job.tags] = None
        while len(self.tag_sets) > TAG_SETS_KEPT:
            del self.tag_sets[next(iter(self.tag_sets))]
        # GitLab gives a runner the jobs whose tags it all has; this runner has at least
        # the tags of the jobs it took, and takes untagged jobs if it took one.
        runner_tags = frozenset[str]().union(*pipeline.tag_sets)
        untagged = frozenset() in pipeline.tag_sets

        def could_be_ours(tags: frozenset[str]) -> bool:
            return tags <= runner_tags if tags else untagged

        plan = Plan(jobs, usual, now, self._child_end)
        pipeline.ends = latest(plan.end(job) for job in jobs)
        coming: dict[int, tuple[float, frozenset[str]]] = {}
        for job in jobs:
            if job.id in pipeline.ours or not could_be_ours(job.tags):
                continue  # (one of ours still "created": GitLab's list lags behind)
            at = plan.announced_at(job)
            if at is not None:
                coming[job.id] = (at, job.tags)
        listed = {job.id: job for job in jobs}
        gone, elsewhere = set(), set()
        for job_id in pipeline.announced - set(coming):
            seen = listed.get(job_id)
            if seen is None:
                gone.add(job_id)  # retried: GitLab lists the new try under a new id
            elif seen.status in COMING_NOW or (seen.status == "created" and plan.may_run(seen)):
                continue  # still coming, its prediction kept
            elif seen.status in RAN and seen.started is not None:
                if now - seen.started >= ELSEWHERE_AFTER:
                    elsewhere.add(job_id)
            else:  # skipped, canceled, made manual, waiting for a resource group
                gone.add(job_id)
        self.lookahead.withdraw(gone)
        self.lookahead.withdraw(elsewhere, elsewhere=True)
        pipeline.announced -= gone | elsewhere
        for job_id, (at, tags) in coming.items():
            self.lookahead.announce([job_id], now, at, tags)
        pipeline.announced.update(coming)
        for job in jobs:  # child pipelines: watched like any, their jobs announced
            if job.bridge and job.downstream is not None:
                self._watch_child(pipeline_id, pipeline, job, now)
        takes = [job for job in jobs if job.id not in pipeline.ours and could_be_ours(job.tags)]
        pipeline.waiting = any(job.status in NOT_BEGUN for job in takes)
        return bool(takes) or bool(pipeline.ours)

    def _watch_child(
        self, parent_id: int, parent: Pipeline, bridge: PipelineJob, now: float
    ) -> None:
        """Watch a bridge's downstream pipeline: once when it appears, and while a
        `strategy: depend` bridge waits for it (its end is the bridge's end)."""
        assert bridge.downstream is not None
        project_id, child_id = bridge.downstream
        if child_id in self.pipelines:
            return
        if child_id in parent.children and bridge.status not in ("running", "pending"):
            return
        parent.children.add(child_id)
        self.pipelines[child_id] = Pipeline(
            project_id,
            look_at=now,
            last_arrival=parent.last_arrival,
            tag_sets=parent.tag_sets,  # the runner's tags, as far as the parent tells
            parent=parent_id,
        )

    def _child_end(self, project_id: int, pipeline_id: int) -> float:
        child = self.pipelines.get(pipeline_id)
        return math.nan if child is None else child.ends
