"""Ask GitLab which jobs of the pipelines this runner works on are still to come.

When a job of pipeline P starts here, the jobs of P's next stage already exist
at GitLab in status "created", waiting for this stage to end. The pool
service (with `policy = "demand"` and `[gitlab]` configured) lists P's jobs
once, announces to the Lookahead the next stage's jobs this runner could take
(their tags all among those of the jobs it took, or none if it took an
untagged one), and looks again every RECHECK seconds while any is announced,
to withdraw those that will not come here: skipped after a failure, canceled,
made manual, or taken by another runner. A job of the next stage arriving
makes the pipeline's following stage the next one to announce.

It also predicts when that stage starts: when the last of the jobs before it
should end, each started (or starting now) and taking what its name's last
successful runs in the project took (their median; GitLab's job list, read
at most once per USUAL_KEPT seconds per project). Where a job's usual time is
unknown there is no prediction, and the policy goes by the announcement alone.

Only ever a hint: an error or a refused token costs the lookahead, never a job.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from driver.pool.lookahead import Lookahead
from driver.settings import GitLabSettings

RECHECK = 30.0  # seconds between two looks at a pipeline with jobs announced
USUAL_KEPT = 3600.0  # seconds a project's usual job durations are kept before read again
# A pipeline none of whose jobs came here for this long is no longer watched, and what
# it announced is withdrawn: GitLab down for hours must not keep machines for it.
WATCHED_AT_MOST = 3 * 3600.0
UNFINISHED = {"created", "pending", "waiting_for_resource", "preparing", "running"}
WAITING = "created"  # GitLab's status of a job whose earlier stages have not ended
STILL_COMING = {"created", "pending", "waiting_for_resource", "preparing", "scheduled"}


@dataclass(frozen=True)
class PipelineJob:
    id: int
    status: str
    stage: str
    tags: frozenset[str]
    name: str = ""
    started: float | None = None  # when it started running (clock seconds), if it did
    allow_failure: bool = False


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
    last_arrival: float = 0.0  # when a job of it last came here


class PipelineWatch:
    """Announces to `lookahead` the next stage of each pipeline a job of ours is in."""

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

    def poll(self, now: float) -> None:
        with self.lock:
            for pipeline_id, old in list(self.pipelines.items()):
                if now - old.last_arrival > WATCHED_AT_MOST:
                    self.lookahead.withdraw(old.announced)
                    del self.pipelines[pipeline_id]
            due = [(i, p.project_id) for i, p in self.pipelines.items() if now >= p.look_at]
        for pipeline_id, project_id in due:
            try:
                jobs = self.list_jobs(project_id, pipeline_id)
            except Exception as e:  # a hint only: the next look may do better
                if not self.failing:
                    self.warn(f"cannot list the jobs of pipeline {pipeline_id}: {str(e)[:200]}")
                self.failing = True
                jobs = None
            usual = self._usual(project_id, now) if jobs else {}
            with self.lock:
                pipeline = self.pipelines.get(pipeline_id)
                if pipeline is None:
                    continue
                # A job of it that came meanwhile asks for a look at once.
                arrived_meanwhile = pipeline.look_at > now
                if jobs is not None:
                    self.failing = False
                    self._update(pipeline, jobs, now, usual)
                if arrived_meanwhile:
                    continue
                if pipeline.announced or jobs is None:
                    pipeline.look_at = now + RECHECK
                else:  # nothing more to watch until another of its jobs comes here
                    del self.pipelines[pipeline_id]

    def _usual(self, project_id: int, now: float) -> dict[str, float]:
        """The project's usual job durations, read again once they are USUAL_KEPT old."""
        if self.usual_durations is None:
            return {}
        read_at, usual = self.usual.get(project_id, (-math.inf, {}))
        if now - read_at >= USUAL_KEPT:
            try:
                usual = self.usual_durations(project_id)
            except Exception as e:  # a hint only
                self.warn(f"cannot read the usual job durations of project {project_id}: {e}")
                usual = {}
            self.usual[project_id] = (now, usual)
        return usual

    def _update(
        self,
        pipeline: Pipeline,
        jobs: Iterable[PipelineJob],
        now: float,
        usual: dict[str, float],
    ) -> None:
        jobs = list(jobs)
        ours = [job.tags for job in jobs if job.id in pipeline.ours]
        # GitLab gives a runner the jobs whose tags it all has; this runner has at least
        # the tags of the jobs it took, and takes untagged jobs if it took one.
        runner_tags = frozenset().union(*ours)
        untagged = frozenset() in ours

        def could_be_ours(tags: frozenset[str]) -> bool:
            return tags <= runner_tags if tags else untagged

        gone = {
            job.id
            for job in jobs
            if job.id in pipeline.announced and job.status not in STILL_COMING
        }
        self.lookahead.withdraw(gone)
        pipeline.announced -= gone
        waiting = [
            job
            for job in jobs
            if job.status == WAITING and could_be_ours(job.tags) and job.id not in pipeline.ours
        ]  # (one of ours still "created": GitLab's list lagging behind, it came already)
        if not waiting:
            return
        # GitLab numbers a pipeline's jobs stage by stage: the lowest waiting is next.
        first = min(waiting, key=lambda job: job.id)
        coming = [job.id for job in waiting if job.stage == first.stage]
        before = [job for job in jobs if job.id < first.id and job.status in UNFINISHED]
        if any(
            job.id < first.id and job.status == "manual" and not job.allow_failure for job in jobs
        ):
            return  # the stage waits for someone to start a manual job: maybe never
        self.lookahead.announce(coming, now, _predict(before, usual, now))
        pipeline.announced.update(coming)


def _predict(before: list[PipelineJob], usual: dict[str, float], now: float) -> float:
    """When the jobs `before` should all have ended; NaN if that cannot be told."""
    if not before or any(job.name not in usual for job in before):
        return math.nan
    return max((now if job.started is None else job.started) + usual[job.name] for job in before)


def gitlab_list_jobs(settings: GitLabSettings) -> ListJobs:
    """The pipeline jobs endpoint, through python-gitlab (a token with read_api)."""
    import gitlab

    client = gitlab.Gitlab(
        settings.url,
        private_token=settings.read_token() or None,
        timeout=settings.timeout,
        retry_transient_errors=False,  # a hint: never hold the pool's loop for retries
    )

    def list_jobs(project_id: int, pipeline_id: int) -> list[PipelineJob]:
        project = client.projects.get(project_id, lazy=True)
        pipeline = project.pipelines.get(pipeline_id, lazy=True)
        found = pipeline.jobs.list(get_all=True, include_retried=False)
        return [
            PipelineJob(
                int(job.id),
                str(job.status),
                str(job.stage),
                frozenset(str(tag) for tag in (getattr(job, "tag_list", None) or ())),
                str(getattr(job, "name", "")),
                _timestamp(getattr(job, "started_at", None)),
                bool(getattr(job, "allow_failure", False)),
            )
            for job in found
        ]

    return list_jobs


def gitlab_usual_durations(settings: GitLabSettings) -> UsualDurations:
    """The median duration of each job name over a project's last 100 successful jobs."""
    import gitlab

    client = gitlab.Gitlab(
        settings.url,
        private_token=settings.read_token() or None,
        timeout=settings.timeout,
        retry_transient_errors=False,
    )

    def usual_durations(project_id: int) -> dict[str, float]:
        project = client.projects.get(project_id, lazy=True)
        found = project.jobs.list(scope="success", per_page=100, get_all=False)
        by_name: dict[str, list[float]] = {}
        for job in found:
            duration = getattr(job, "duration", None)
            if isinstance(duration, int | float) and duration > 0:
                by_name.setdefault(str(job.name), []).append(float(duration))
        return {name: statistics.median(seconds) for name, seconds in by_name.items()}

    return usual_durations


def _timestamp(value: object) -> float | None:
    """GitLab's ISO 8601 time (\"2026-12-01T10:00:00.000Z\") as clock seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
