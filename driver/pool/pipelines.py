"""Ask GitLab which jobs of the pipelines this runner works on are still to come.

When a job of pipeline P starts here, the jobs of P's next stage already exist
at GitLab in status "created", waiting for this stage to end. The pool
service (with `policy = "demand"` and `[gitlab]` configured) lists P's jobs
once, announces the next stage's jobs that carry the same tags as a job this
runner took (those it is likely to get too) to the Lookahead, and looks again
every RECHECK seconds while any is announced, to withdraw those that will not
come here: skipped after a failure, canceled, made manual, or taken by another
runner. A job of the next stage arriving makes the pipeline's following stage
the next one to announce.

Only ever a hint: an error or a refused token costs the lookahead, never a job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from driver.pool.lookahead import Lookahead
from driver.settings import GitLabSettings

RECHECK = 30.0  # seconds between two looks at a pipeline with jobs announced
WAITING = "created"  # GitLab's status of a job whose earlier stages have not ended
STILL_COMING = {"created", "pending", "waiting_for_resource", "preparing", "scheduled"}


@dataclass(frozen=True)
class PipelineJob:
    id: int
    status: str
    stage: str
    tags: frozenset[str]


class ListJobs(Protocol):
    def __call__(self, project_id: int, pipeline_id: int) -> list[PipelineJob]: ...


@dataclass
class Pipeline:
    project_id: int
    ours: set[int] = field(default_factory=set)  # its jobs that came to this runner
    announced: set[int] = field(default_factory=set)
    look_at: float = 0.0  # when to list its jobs next


class PipelineWatch:
    """Announces to `lookahead` the next stage of each pipeline a job of ours is in."""

    def __init__(
        self, lookahead: Lookahead, list_jobs: ListJobs, warn: Callable[[str], None]
    ) -> None:
        self.lookahead = lookahead
        self.list_jobs = list_jobs
        self.warn = warn
        self.pipelines: dict[int, Pipeline] = {}
        self.failing = False  # warn once per run of errors, not every tick

    def job_arrived(
        self, project_id: int, pipeline_id: int | None, job_id: int, now: float, hit: bool
    ) -> None:
        self.lookahead.arrived(job_id, now, hit)
        if pipeline_id is None:
            return
        pipeline = self.pipelines.setdefault(pipeline_id, Pipeline(project_id))
        pipeline.ours.add(job_id)
        pipeline.announced.discard(job_id)
        pipeline.look_at = now  # its next stage may be the one after this job's

    def poll(self, now: float) -> None:
        for pipeline_id, pipeline in list(self.pipelines.items()):
            if now < pipeline.look_at:
                continue
            try:
                jobs = self.list_jobs(pipeline.project_id, pipeline_id)
            except Exception as e:  # a hint only: the next look may do better
                if not self.failing:
                    self.warn(f"cannot list the jobs of pipeline {pipeline_id}: {str(e)[:200]}")
                self.failing = True
                pipeline.look_at = now + RECHECK
                continue
            self.failing = False
            self._update(pipeline, jobs, now)
            if pipeline.announced:
                pipeline.look_at = now + RECHECK
            else:  # nothing more to watch until another of its jobs comes here
                del self.pipelines[pipeline_id]

    def _update(self, pipeline: Pipeline, jobs: Iterable[PipelineJob], now: float) -> None:
        jobs = list(jobs)
        tags = {job.tags for job in jobs if job.id in pipeline.ours}
        gone = {
            job.id
            for job in jobs
            if job.id in pipeline.announced and job.status not in STILL_COMING
        }
        self.lookahead.withdraw(gone)
        pipeline.announced -= gone
        waiting = [job for job in jobs if job.status == WAITING and job.tags in tags]
        if not waiting:
            return
        # GitLab numbers a pipeline's jobs stage by stage: the lowest waiting is next.
        next_stage = min(waiting, key=lambda job: job.id).stage
        coming = [job.id for job in waiting if job.stage == next_stage]
        self.lookahead.announce(coming, now)
        pipeline.announced.update(coming)


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
        found: list[Any] = pipeline.jobs.list(get_all=True, include_retried=False)
        return [
            PipelineJob(
                int(job.id),
                str(job.status),
                str(job.stage),
                frozenset(str(tag) for tag in (getattr(job, "tag_list", None) or ())),
            )
            for job in found
        ]

    return list_jobs
