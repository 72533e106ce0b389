"""The lookahead's reads at GitLab, through python-gitlab (a token with read_api).

A pipeline's jobs come from the REST list (`/projects/:id/pipelines/:id/jobs`,
100 a page) and its trigger jobs from `/bridges` (GitLab lists them apart). A
project's usual job durations from its last 100 successful jobs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from driver.pool.gitlab_api import DEFAULT_QUIET, PER_PAGE, ApiCalls, RateLimited
from driver.pool.pipelines import PipelineJob
from driver.settings import GitLabSettings

if TYPE_CHECKING:
    import gitlab

T = TypeVar("T")
# Every list and get: a 429 is ours to handle (RateLimited), never slept on inside.
ONCE: dict[str, Any] = {"obey_rate_limit": False, "max_retries": 0}


class GitLabJobs:
    """A pipeline's jobs and a project's usual durations, every request counted."""

    def __init__(self, settings: GitLabSettings, calls: ApiCalls | None = None) -> None:
        import gitlab
        import requests

        self.calls = calls or ApiCalls()
        session = requests.Session()
        session.hooks["response"].append(
            lambda response, *args, **kwargs: self.calls.seen(
                "rest", response.status_code, response.headers
            )
        )
        self.rest = gitlab.Gitlab(
            settings.url,
            private_token=settings.read_token() or None,
            timeout=settings.timeout,
            per_page=PER_PAGE,
            retry_transient_errors=False,  # a hint: never hold the lookahead for retries
            session=session,
        )

    def _asked(self, call: Callable[[], T]) -> T:
        """`call` at GitLab; a 429 becomes RateLimited with GitLab's quiet time."""
        from gitlab import exceptions

        try:
            return call()
        except exceptions.GitlabError as e:  # GitlabListError, GitlabGetError, ...
            if e.response_code == 429:
                raise RateLimited(self.calls.take_limited() or DEFAULT_QUIET) from None
            raise

    def list_jobs(self, project_id: int, pipeline_id: int) -> list[PipelineJob]:
        return self._asked(lambda: self._rest_jobs(project_id, pipeline_id))

    def _rest_jobs(self, project_id: int, pipeline_id: int) -> list[PipelineJob]:
        project = self.rest.projects.get(project_id, lazy=True)
        pipeline = project.pipelines.get(pipeline_id, lazy=True)
        found: list[gitlab.base.RESTObject] = pipeline.jobs.list(
            get_all=True, per_page=PER_PAGE, include_retried=False, **ONCE
        )
        return [_rest_job(job.attributes) for job in found]

    def usual_durations(self, project_id: int) -> dict[str, float]:
        """The median duration of each job name over a project's last 100 successful jobs."""
        project = self.rest.projects.get(project_id, lazy=True)
        found: list[gitlab.base.RESTObject] = self._asked(
            lambda: project.jobs.list(scope="success", per_page=PER_PAGE, get_all=False, **ONCE)
        )
        by_name: dict[str, list[float]] = {}
        for job in found:
            duration = job.attributes.get("duration")
            if isinstance(duration, int | float) and duration > 0:
                by_name.setdefault(str(job.attributes.get("name")), []).append(float(duration))
        return {name: statistics.median(seconds) for name, seconds in by_name.items()}


def _rest_job(job: dict[str, object]) -> PipelineJob:
    """A job as GitLab's REST jobs list gives it."""
    tags = job.get("tag_list")
    return PipelineJob(
        int(str(job["id"])),
        str(job["status"]),
        str(job["stage"]),
        frozenset(str(tag) for tag in tags) if isinstance(tags, list) else frozenset(),
        str(job.get("name", "")),
        timestamp(job.get("started_at")),
        bool(job.get("allow_failure", False)),
    )


def timestamp(value: object) -> float | None:
    """GitLab's ISO 8601 time (\"2026-12-01T10:00:00.000Z\") as clock seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
