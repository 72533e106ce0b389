"""A local HTTP server answering GitLab's job endpoint as GitLab does, for the sweeper.

GET /api/v4/projects/:project/jobs/:job with a PRIVATE-TOKEN header:
200 with the job's JSON, 404 for a job it does not know, 401 for a bad token.
For doctor also /version, /user, and /projects/:project/jobs (200 for a project
the token may read, else 404). For the pool's lookahead
/projects/:project/pipelines/:pipeline/jobs: the jobs set in `pipelines`.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

JOB_PATH = re.compile(r"^/api/v4/projects/(\d+)/jobs/(\d+)$")
JOBS_PATH = re.compile(r"^/api/v4/projects/(\d+)/jobs$")
PIPELINE_JOBS_PATH = re.compile(r"^/api/v4/projects/(\d+)/pipelines/(\d+)/jobs$")


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
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
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
                    if key not in fake.pipelines:
                        return self._reply(404, {"message": "404 Not found"})
                    return self._reply(200, list(fake.pipelines[key]))
                listing = JOBS_PATH.match(path)
                if listing:
                    project = int(listing[1])
                    if project in fake.finished:
                        return self._reply(200, list(fake.finished[project]))
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

            def _reply(self, code: int, body: dict[str, object] | list[object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
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
        self.server.shutdown()
        self.server.server_close()
