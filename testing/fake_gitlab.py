"""A local HTTP server answering GitLab's job endpoint as GitLab does, for the sweeper.

GET /api/v4/projects/:project/jobs/:job with a PRIVATE-TOKEN header:
200 with the job's JSON, 404 for a job it does not know, 401 for a bad token.
For doctor also /version, /user, and /projects/:project/jobs (200 for a project
the token may read, else 404). For the pool's lookahead
/projects/:project/pipelines/:pipeline/jobs: the jobs set in `pipelines`.

Lists are paged as GitLab pages them: `per_page` 20 unless asked, at most 100,
`page` from 1, with X-Page, X-Per-Page, X-Total, X-Next-Page and a Link header
(rel="next") that clients follow. `rate_limited` makes the next requests answer
429 with a Retry-After header, as GitLab's rate limits do. `answering` cleared
holds each request unanswered (a slow GitLab), logged in `requests` as it
comes, until it is set again.

A pipeline's jobs may carry what only GraphQL tells (`when`, `needs`,
`scheduled_at`): the REST list leaves them out, as GitLab's does. Trigger jobs
are set apart in `bridges` (REST: /pipelines/:id/bridges, with
`downstream_pipeline`), as GitLab lists them; POST /api/graphql answers the
lookahead's queries (testing/fake_gitlab_graphql.py), and /projects/:id gives
a project's `path_with_namespace` (GraphQL names projects by path).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlencode, urlsplit

from testing import fake_gitlab_graphql

JOB_PATH = re.compile(r"^/api/v4/projects/(\d+)/jobs/(\d+)$")
JOBS_PATH = re.compile(r"^/api/v4/projects/(\d+)/jobs$")
PIPELINE_JOBS_PATH = re.compile(r"^/api/v4/projects/(\d+)/pipelines/(\d+)/(jobs|bridges)$")
PROJECT_PATH = re.compile(r"^/api/v4/projects/(\d+)$")
# What GitLab's REST job entity (API::Entities::Ci::Job) does not carry.
GRAPHQL_ONLY = {"when", "needs", "scheduled_at"}


class FakeGitLab:
    def __init__(self, token: str) -> None:
        self.token = token
        self.jobs: dict[tuple[int, int], str] = {}  # (project, job) -> status
        self.requests: list[str] = []
        # Projects the token may read besides those of `jobs` (for GET .../projects/:id/jobs).
        self.projects: set[int] = set()
        # (project, pipeline) -> its jobs, as GitLab lists them: id, status, stage, tag_list.
        self.pipelines: dict[tuple[int, int], list[dict[str, object]]] = {}
        # project -> its finished jobs, listed by GET .../projects/:id/jobs (name, duration).
        self.finished: dict[int, list[dict[str, object]]] = {}
        # The next `rate_limited` requests answer 429, with Retry-After `retry_after`.
        self.rate_limited = 0
        self.retry_after = "60"
        # (project, pipeline) -> its trigger jobs (GitLab lists them under /bridges).
        self.bridges: dict[tuple[int, int], list[dict[str, object]]] = {}
        # (project, pipeline) -> its stages in order (else in the order its jobs name them).
        self.stages: dict[tuple[int, int], list[str]] = {}
        self.paths: dict[int, str] = {}  # project -> path_with_namespace
        self.graphql_errors: list[str] = []  # answered instead of data (an older GitLab)
        self.graphql_queries: list[str] = []
        self.graphql_max_complexity = fake_gitlab_graphql.MAX_COMPLEXITY
        self.answering = threading.Event()  # cleared: requests wait, unanswered
        self.answering.set()
        fake = self

        def path_of(project: int) -> str:
            return fake.paths.get(project, f"group/project-{project}")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
                fake.answering.wait()
                if fake.rate_limited > 0:
                    fake.rate_limited -= 1
                    return self._reply(
                        429, {"message": "Retry later"}, {"Retry-After": fake.retry_after}
                    )
                if self.headers.get("PRIVATE-TOKEN") != fake.token:
                    return self._reply(401, {"message": "401 Unauthorized"})
                path = self.path.split("?")[0]
                if path == "/api/v4/version":
                    return self._reply(200, {"version": "16.11.0-fake", "revision": "0"})
                if path == "/api/v4/user":
                    return self._reply(200, {"id": 1, "username": "sweeper"})
                pipeline = PIPELINE_JOBS_PATH.match(path)
                if pipeline:
                    key = (int(pipeline[1]), int(pipeline[2]))
                    if key not in fake.pipelines and key not in fake.bridges:
                        return self._reply(404, {"message": "404 Not found"})
                    listed = fake.pipelines if pipeline[3] == "jobs" else fake.bridges
                    return self._page(
                        [
                            {k: v for k, v in job.items() if k not in GRAPHQL_ONLY}
                            for job in listed.get(key, [])
                        ]
                    )
                project_path = PROJECT_PATH.match(path)
                if project_path:
                    project = int(project_path[1])
                    if not any(p == project for p, _ in fake.pipelines):
                        return self._reply(404, {"message": "404 Project Not Found"})
                    return self._reply(
                        200, {"id": project, "path_with_namespace": path_of(project)}
                    )
                listing = JOBS_PATH.match(path)
                if listing:
                    project = int(listing[1])
                    if project in fake.finished:
                        return self._page(fake.finished[project])
                    if project in fake.projects or any(p == project for p, _ in fake.jobs):
                        return self._reply(200, [])
                    return self._reply(404, {"message": "404 Project Not Found"})
                match = JOB_PATH.match(path)
                if not match:
                    return self._reply(404, {"error": "404 Not Found"})
                key = (int(match[1]), int(match[2]))
                if key not in fake.jobs:
                    return self._reply(404, {"message": "404 Not found"})
                self._reply(200, {"id": key[1], "status": fake.jobs[key], "name": "test"})

            def do_POST(self) -> None:
                fake.requests.append(f"POST {self.path}")
                fake.answering.wait()
                if fake.rate_limited > 0:
                    fake.rate_limited -= 1
                    return self._reply(
                        429, {"message": "Retry later"}, {"Retry-After": fake.retry_after}
                    )
                if self.path != "/api/graphql":
                    return self._reply(404, {"error": "404 Not Found"})
                bearer = self.headers.get("Authorization", "")
                if fake.token not in (
                    bearer.removeprefix("Bearer "),
                    self.headers.get("PRIVATE-TOKEN"),
                ):
                    return self._reply(401, {"errors": [{"message": "Invalid token"}]})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                fake.graphql_queries.append(str(body.get("query")))
                if fake.graphql_errors:
                    return self._reply(
                        200, {"errors": [{"message": m} for m in fake.graphql_errors]}
                    )
                self._reply(
                    200,
                    fake_gitlab_graphql.execute(
                        str(body.get("query")),
                        body.get("variables"),
                        path_of,
                        fake.pipelines,
                        fake.bridges,
                        fake.stages,
                        fake.graphql_max_complexity,
                    ),
                )

            def _page(self, items: list[dict[str, object]]) -> None:
                """One page of a list, with GitLab's pagination headers."""
                query = parse_qs(urlsplit(self.path).query)
                per_page = min(100, max(1, int(query.get("per_page", ["20"])[0])))
                page = max(1, int(query.get("page", ["1"])[0]))
                chunk = items[(page - 1) * per_page : page * per_page]
                headers = {
                    "X-Page": str(page),
                    "X-Per-Page": str(per_page),
                    "X-Total": str(len(items)),
                    "X-Next-Page": "",
                }
                if page * per_page < len(items):
                    headers["X-Next-Page"] = str(page + 1)
                    after = {k: v[0] for k, v in query.items()} | {"page": str(page + 1)}
                    url = f"{fake.url}{urlsplit(self.path).path}?{urlencode(after)}"
                    headers["Link"] = f'<{url}>; rel="next"'
                self._reply(200, list(chunk), headers)

            def _reply(
                self,
                code: int,
                body: dict[str, object] | list[object],
                headers: dict[str, str] | None = None,
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeGitLab:
        self.thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.answering.set()  # a request held would hold server_close, which joins it
        self.server.shutdown()
        self.server.server_close()
