"""The lookahead's reads at GitLab, through python-gitlab (a token with read_api).

A pipeline's jobs come from GraphQL (`Pipeline.jobs`, 100 a page): GitLab's REST
jobs list tells neither a job's `when:` nor its `needs:` nor a delayed job's
time. GraphQL has `needs`, `schedulingType`, `scheduledAt`, `kind` and a
bridge's `downstreamPipeline`, but no `when`: the jobs of each `when:` come
from `jobs(whenExecuted: [...])`, asked in the same request. GraphQL names a
project by its path, read once per project from `/projects/:id`.

A query GitLab finds too complex (its limit is 250 for a token's user; this one
scores under 100 by GitLab's count) is asked again with half the page, down to
SMALLEST_PAGE jobs. Where GraphQL fails (an old GitLab, a field it lacks, a query
too complex even so), the REST list is read instead (`/projects/:id/pipelines/:id/jobs` and the
trigger jobs under `/bridges`, which GitLab lists apart) and GraphQL tried
again after GRAPHQL_AGAIN seconds. A project's usual job durations come from
its last 100 successful jobs (REST).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from driver.parsed import items, table, tables
from driver.pool.gitlab_api import DEFAULT_QUIET, PER_PAGE, ApiCalls, RateLimited
from driver.pool.pipelines import PipelineJob
from driver.settings import GitLabSettings

if TYPE_CHECKING:
    import gitlab

T = TypeVar("T")
GRAPHQL_AGAIN = 3600.0  # seconds on REST after GraphQL failed, before trying it again
WHEN = ("on_failure", "always", "manual", "delayed")  # besides on_success, the default
SMALLEST_PAGE = 12  # halving a too complex query's page stops here (100, 50, 25, 12)
TOO_COMPLEX = "exceeds max complexity"  # graphql-ruby's error for such a query


def jobs_query(path: str, pipeline_id: int, after: str | None, first: int = PER_PAGE) -> str:
    """One page of ``first`` jobs of a pipeline, and on the first page the ids of its jobs
    of each `when:` (rarely that many of any). Values are written in as JSON strings, which
    are GraphQL strings: python-gitlab's `execute` takes a query text only."""
    page = f"after: {json.dumps(after)}, " if after else ""
    lists = "".join(
        f"{kind}: jobs(first: {first}, retried: false, whenExecuted: [{json.dumps(kind)}]) "
        "{ nodes { id } }\n"
        for kind in WHEN
        if after is None
    )
    return f"""{{
  project(fullPath: {json.dumps(path)}) {{
    pipeline(id: {json.dumps(f"gid://gitlab/Ci::Pipeline/{pipeline_id}")}) {{
      stages {{ nodes {{ name }} }}
      jobs(first: {first}, {page}retried: false) {{
        pageInfo {{ hasNextPage endCursor }}
        nodes {{
          id name status allowFailure kind tags startedAt scheduledAt schedulingType
          stage {{ name }}
          needs {{ nodes {{ name }} }}
          downstreamPipeline {{ id project {{ id }} }}
        }}
      }}
      {lists}
    }}
  }}
}}"""


# Every list and get: a 429 is ours to handle (RateLimited), never slept on inside.
ONCE: dict[str, Any] = {"obey_rate_limit": False, "max_retries": 0}


class GitLabJobs:
    """A pipeline's jobs and a project's usual durations, every request counted."""

    def __init__(
        self, settings: GitLabSettings, calls: ApiCalls | None = None, per_page: int = PER_PAGE
    ) -> None:
        import gitlab
        import requests

        self.calls = calls or ApiCalls()
        session = requests.Session()
        session.hooks["response"].append(
            lambda response, *args, **kwargs: self.calls.seen(
                "rest", response.status_code, response.headers
            )
        )
        token = settings.read_token() or None
        self.rest = gitlab.Gitlab(
            settings.url,
            private_token=token,
            timeout=settings.timeout,
            per_page=per_page,
            retry_transient_errors=False,  # a hint: never hold the lookahead for retries
            session=session,
        )
        self.settings, self.token, self.per_page = settings, token, per_page
        self.graphql: gitlab.GraphQL | None = None  # made at its first use
        self.graphql_failed = -math.inf  # when GraphQL last failed (time.monotonic)
        self.graphql_error = ""
        self.paths: dict[int, str] = {}  # project id: its full path, for GraphQL
        self.graphql_page = PER_PAGE  # smaller once GitLab found a page too complex

    def _graphql(self) -> gitlab.GraphQL:
        if self.graphql is None:
            import gitlab
            import httpx

            def seen(response: httpx.Response) -> None:
                self.calls.seen("graphql", response.status_code, response.headers)

            self.graphql = gitlab.GraphQL(
                self.settings.url,
                token=self.token,
                timeout=self.settings.timeout,
                client=httpx.Client(
                    headers={"Authorization": f"Bearer {self.token}"} if self.token else {},
                    timeout=self.settings.timeout,
                    event_hooks={"response": [seen]},
                ),
                max_retries=0,
                obey_rate_limit=False,  # a 429 is RateLimited, never slept on
                retry_transient_errors=False,
            )
        return self.graphql

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
        if time.monotonic() - self.graphql_failed >= GRAPHQL_AGAIN:
            try:
                return self._asked(lambda: self._graphql_jobs(project_id, pipeline_id))
            except RateLimited:
                raise
            except Exception as e:  # REST knows less, but knows
                self.graphql_failed, self.graphql_error = time.monotonic(), str(e)[:300]
        return self._asked(lambda: self._rest_jobs(project_id, pipeline_id))

    def _path(self, project_id: int) -> str:
        if project_id not in self.paths:
            project = self.rest.projects.get(project_id, **ONCE)
            self.paths[project_id] = str(project.attributes["path_with_namespace"])
        return self.paths[project_id]

    def _graphql_jobs(self, project_id: int, pipeline_id: int) -> list[PipelineJob]:
        path = self._path(project_id)
        nodes: list[dict[str, object]] = []
        when: dict[int, str] = {}
        stages: list[str] = []
        after: str | None = None
        while True:
            query = jobs_query(path, pipeline_id, after, self.graphql_page)
            try:
                answer = table(self._graphql().execute(query))
            except Exception as e:  # gql's TransportQueryError carries GitLab's errors
                if TOO_COMPLEX not in str(e) or self.graphql_page <= SMALLEST_PAGE:
                    raise
                self.graphql_page = max(SMALLEST_PAGE, self.graphql_page // 2)
                continue
            pipeline = table(table(answer.get("project")).get("pipeline"))
            if not pipeline:
                raise LookupError(f"GraphQL does not know pipeline {pipeline_id} of {path}")
            if after is None:
                stages = [str(stage.get("name")) for stage in _nodes(pipeline.get("stages"))]
                for kind in WHEN:
                    when |= {gid(job.get("id")): kind for job in _nodes(pipeline.get(kind))}
            jobs = table(pipeline.get("jobs"))
            nodes += _nodes(jobs)
            page = table(jobs.get("pageInfo"))
            if not page.get("hasNextPage"):
                break
            after = str(page.get("endCursor"))
        return [_graphql_job(node, when, stages) for node in nodes]

    def _rest_jobs(self, project_id: int, pipeline_id: int) -> list[PipelineJob]:
        project = self.rest.projects.get(project_id, lazy=True)
        pipeline = project.pipelines.get(pipeline_id, lazy=True)
        found: list[gitlab.base.RESTObject] = pipeline.jobs.list(
            get_all=True, per_page=self.per_page, include_retried=False, **ONCE
        )
        bridges: list[gitlab.base.RESTObject] = pipeline.bridges.list(
            get_all=True, per_page=self.per_page, **ONCE
        )
        return [_rest_job(job.attributes) for job in found] + [
            _rest_job(bridge.attributes, bridge=True) for bridge in bridges
        ]

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


def _rest_job(job: dict[str, object], bridge: bool = False) -> PipelineJob:
    """A job as GitLab's REST jobs list gives it; or a trigger job as /bridges does,
    with its child as `downstream_pipeline` (id, project_id), null until made."""
    tags = job.get("tag_list")
    child = job.get("downstream_pipeline")
    return PipelineJob(
        int(str(job["id"])),
        str(job["status"]),
        str(job["stage"]),
        frozenset(str(tag) for tag in tags) if isinstance(tags, list) else frozenset(),
        str(job.get("name", "")),
        timestamp(job.get("started_at")),
        bool(job.get("allow_failure", False)),
        bridge=bridge,
        downstream=(int(str(child["project_id"])), int(str(child["id"])))
        if isinstance(child, dict)
        else None,
    )


def _graphql_job(job: dict[str, object], when: dict[int, str], stages: list[str]) -> PipelineJob:
    """A job as GitLab's GraphQL `CiJob` gives it (status in capitals, ids global)."""
    job_id = gid(job.get("id"))
    stage = str(table(job.get("stage")).get("name", ""))
    downstream = table(job.get("downstreamPipeline"))
    dag = job.get("schedulingType") == "dag"
    return PipelineJob(
        job_id,
        str(job.get("status")).lower(),
        stage,
        frozenset(str(tag) for tag in items(job.get("tags"))),
        str(job.get("name") or ""),
        timestamp(job.get("startedAt")),
        bool(job.get("allowFailure")),
        when=when.get(job_id, "on_success"),
        needs=tuple(str(n.get("name")) for n in _nodes(job.get("needs"))) if dag else None,
        scheduled_at=timestamp(job.get("scheduledAt")),
        stage_index=stages.index(stage) if stage in stages else -1,
        bridge=job.get("kind") == "BRIDGE",
        downstream=(gid(table(downstream.get("project")).get("id")), gid(downstream.get("id")))
        if downstream
        else None,
    )


def _nodes(connection: object) -> list[dict[str, object]]:
    """A GraphQL connection's nodes; none where GitLab gave null (not allowed to see)."""
    return tables(table(connection).get("nodes"))


def gid(value: object) -> int:
    """The number of a GraphQL global id (\"gid://gitlab/Ci::Build/123\")."""
    return int(str(value).rsplit("/", 1)[-1])


def timestamp(value: object) -> float | None:
    """GitLab's ISO 8601 time (\"2026-12-01T10:00:00.000Z\") as clock seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
