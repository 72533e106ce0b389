"""The part of GitLab's GraphQL schema the pool's lookahead reads, answered from the fake
GitLab's pipelines, by graphql-core: a query asking a field or argument GitLab's schema
does not have fails here as it fails at GitLab.

Names and types as GitLab declares them (app/graphql/types/ci/job_type.rb,
app/graphql/resolvers/ci/jobs_resolver.rb, project_pipeline_resolver.rb): `CiJob` has
no `when`; `Pipeline.jobs` filters by `whenExecuted`, `statuses` and `retried` and
lists jobs and bridges newest first; `Project.pipeline` takes a global `id`; needs
are `CiBuildNeed`s (id, name); a bridge's child is `downstreamPipeline`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from graphql import GraphQLError, build_schema, graphql_sync, parse
from graphql.language import FieldNode, IntValueNode, OperationDefinitionNode, SelectionSetNode

SCHEMA = build_schema(
    """
    scalar Time
    scalar JobID
    scalar CiPipelineID

    enum CiJobStatus {
      CREATED WAITING_FOR_RESOURCE PREPARING WAITING_FOR_CALLBACK PENDING RUNNING
      FAILED SUCCESS CANCELED CANCELING SKIPPED MANUAL SCHEDULED
    }
    enum CiJobKind { BUILD BRIDGE }

    type Query { project(fullPath: ID!): Project }
    type Project {
      id: ID!
      fullPath: ID!
      pipeline(id: CiPipelineID, iid: ID, sha: String, ref: String): Pipeline
    }
    type PageInfo {
      hasNextPage: Boolean!
      hasPreviousPage: Boolean!
      startCursor: String
      endCursor: String
    }
    type Pipeline {
      id: ID!
      iid: String!
      project: Project
      stages(first: Int, after: String): CiStageConnection
      jobs(
        first: Int, after: String, statuses: [CiJobStatus!], retried: Boolean,
        whenExecuted: [String!]
      ): CiJobConnection
    }
    type CiStageConnection { nodes: [CiStage] pageInfo: PageInfo! }
    type CiStage { id: ID! name: String }
    type CiJobConnection { count: Int! nodes: [CiJob] pageInfo: PageInfo! }
    type CiBuildNeedConnection { nodes: [CiBuildNeed] pageInfo: PageInfo! }
    type CiBuildNeed { id: ID! name: String }
    type CiJob {
      id: JobID
      name: String
      status: CiJobStatus
      allowFailure: Boolean!
      kind: CiJobKind!
      tags: [String!]
      startedAt: Time
      scheduledAt: Time
      schedulingType: String
      manualJob: Boolean
      retried: Boolean
      stage: CiStage
      needs: CiBuildNeedConnection
      downstreamPipeline: Pipeline
    }
    """
)
MAX_PAGE = 100  # GitLab's max_page_size for connections
# The most complex query GitLab runs for a signed-in user (app/graphql/gitlab_schema.rb:
# AUTHENTICATED_COMPLEXITY; 200 without a token, 300 for an admin).
MAX_COMPLEXITY = 250


def complexity(query: str) -> int:
    """GitLab's score of ``query``, as app/graphql/types/base_field.rb and
    resolvers/base_resolver.rb count it: a field costs 1 plus its selections; a
    connection (read through a resolver) its selections plus 1, and 1% more for each
    item it may return (`first`, at most 100): a page of 100 doubles it. Every
    connection is counted so here, also those GitLab reads without a resolver: no
    kinder than GitLab."""

    def score(selections: SelectionSetNode) -> int:
        total = 0
        for field in selections.selections:
            if not isinstance(field, FieldNode):
                continue
            inner = score(field.selection_set) if field.selection_set else 0
            names = (
                {s.name.value for s in field.selection_set.selections if isinstance(s, FieldNode)}
                if field.selection_set
                else set()
            )
            if "nodes" in names:  # a connection
                first = next(
                    (a.value for a in field.arguments or () if a.name.value == "first"), None
                )
                items = (
                    min(MAX_PAGE, int(first.value)) if isinstance(first, IntValueNode) else MAX_PAGE
                )
                total += int((inner + 1) * (1 + items * 0.01))
            else:
                total += 1 + inner
        return total

    document = parse(query)
    return sum(
        score(op.selection_set)
        for op in document.definitions
        if isinstance(op, OperationDefinitionNode)
    )


def _page(items: list[Any], first: int | None, after: str | None) -> dict[str, Any]:
    start = int(after) if after else 0
    size = min(MAX_PAGE, first or MAX_PAGE)
    chunk = items[start : start + size]
    more = start + size < len(items)
    return {
        "count": len(items),
        "nodes": chunk,
        "pageInfo": {
            "hasNextPage": more,
            "hasPreviousPage": start > 0,
            "startCursor": str(start),
            "endCursor": str(start + len(chunk)),
        },
    }


def execute(
    query: str,
    variables: Mapping[str, Any] | None,
    paths: Callable[[int], str],
    pipelines: Mapping[tuple[int, int], list[dict[str, object]]],
    bridges: Mapping[tuple[int, int], list[dict[str, object]]],
    stages: Mapping[tuple[int, int], list[str]],
    max_complexity: int = MAX_COMPLEXITY,
) -> dict[str, Any]:
    """GitLab's answer to `query`: {"data": ...} and "errors" where GitLab would list any.
    A query over ``max_complexity`` is refused whole, with graphql-ruby's message."""
    try:
        score = complexity(query)
    except GraphQLError:
        score = 0  # not a query: graphql-core says why below
    if score > max_complexity:
        message = (
            f"Query has complexity of {score}, which exceeds max complexity of {max_complexity}"
        )
        return {"errors": [{"message": message}]}

    def pipeline(project_id: int, pipeline_id: int) -> dict[str, Any] | None:
        key = (project_id, pipeline_id)
        if key not in pipelines and key not in bridges:
            return None
        builds = list(pipelines.get(key, []))
        triggers = list(bridges.get(key, []))
        order = list(stages.get(key, []))
        for job in builds + triggers:
            if str(job["stage"]) not in order:
                order.append(str(job["stage"]))

        def jobs(
            info: object,
            first: int | None = None,
            after: str | None = None,
            statuses: list[str] | None = None,
            retried: bool | None = None,
            whenExecuted: list[str] | None = None,
        ) -> dict[str, Any]:
            found = [(job, False) for job in builds] + [(job, True) for job in triggers]
            found.sort(key=lambda pair: -int(str(pair[0]["id"])))  # statuses_order_id_desc
            if statuses:
                found = [p for p in found if str(p[0]["status"]).upper() in statuses]
            if retried is not None:  # the fake keeps the latest try only
                found = [] if retried else found
            if whenExecuted:
                found = [p for p in found if p[0].get("when", "on_success") in whenExecuted]
            page = _page(found, first, after)  # only the page's jobs made into CiJobs
            page["nodes"] = [ci_job(job, bridge) for job, bridge in page["nodes"]]
            return page

        return {
            "id": f"gid://gitlab/Ci::Pipeline/{pipeline_id}",
            "iid": str(pipeline_id),
            "project": lambda info: project(project_id),
            "stages": lambda info, first=None, after=None: _page(
                [{"id": f"gid://gitlab/Ci::Stage/{n}", "name": s} for n, s in enumerate(order)],
                first,
                after,
            ),
            "jobs": jobs,
        }

    def ci_job(job: dict[str, object], bridge: bool) -> dict[str, Any]:
        needs = job.get("needs")
        names = [str(name) for name in needs] if isinstance(needs, list) else []
        downstream = job.get("downstream_pipeline")
        return {
            "id": f"gid://gitlab/Ci::{'Bridge' if bridge else 'Build'}/{job['id']}",
            "name": job.get("name", ""),
            "status": str(job["status"]).upper(),
            "allowFailure": bool(job.get("allow_failure", False)),
            "kind": "BRIDGE" if bridge else "BUILD",
            "tags": None if bridge else list(job.get("tag_list", []) or []),  # type: ignore[call-overload]
            "startedAt": job.get("started_at"),
            "scheduledAt": job.get("scheduled_at"),
            "schedulingType": "stage" if needs is None else "dag",
            "manualJob": job.get("when") in ("manual", "delayed"),
            "retried": False,
            "stage": {"id": "gid://gitlab/Ci::Stage/0", "name": job["stage"]},
            "needs": _page(
                [{"id": f"gid://gitlab/Ci::BuildNeed/{n}", "name": m} for n, m in enumerate(names)],
                None,
                None,
            ),
            "downstreamPipeline": (
                (lambda info: pipeline(int(downstream["project_id"]), int(downstream["id"])))
                if isinstance(downstream, dict)
                else None
            ),
        }

    def project(project_id: int) -> dict[str, Any]:
        def one(
            info: object,
            id: str | None = None,
            iid: str | None = None,
            sha: str | None = None,
            ref: str | None = None,
        ) -> dict[str, Any] | None:
            wanted = id.rsplit("/", 1)[-1] if id else iid
            return None if wanted is None else pipeline(project_id, int(wanted))

        return {
            "id": f"gid://gitlab/Project/{project_id}",
            "fullPath": paths(project_id),
            "pipeline": one,
        }

    def find(info: object, fullPath: str) -> dict[str, Any] | None:
        known = {p for p, _ in pipelines} | {p for p, _ in bridges}
        matches = [p for p in known if paths(p) == fullPath]
        return project(matches[0]) if matches else None

    result = graphql_sync(
        SCHEMA, query, root_value={"project": find}, variable_values=dict(variables or {})
    )
    answer: dict[str, Any] = {"data": result.data}
    if result.errors:
        answer["errors"] = [error.formatted for error in result.errors]
    return answer
