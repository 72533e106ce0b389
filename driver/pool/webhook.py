"""GitLab's pipeline and job events, received by the pool service (optional).

Polling sees a cancel at the next look, up to 30 s later; an admin who can point
a group (or instance) webhook at the runner host makes that seconds: a job event
"canceled" withdraws the job at once, a pipeline event "canceled" all of that
pipeline's announced jobs, and any other event of a watched pipeline makes the
service look at it at its next tick (one look per pipeline per tick, however
many events came). The looks every 30 s become a safety net every 300 s.
With `[gitlab] watch_heard_pipelines` (on by default with webhook_listen), a
pipeline event of a pipeline not watched starts watching it (its project's
`project.id`): its later jobs are announced even when no job of it came here
(driver.pool.pipelines).

GitLab sends the hook's secret token in `X-Gitlab-Token`; it is compared in
constant time with the one in `[gitlab] webhook_secret_file` (mode 0600) or
the WEBHOOK_SECRET_ENV variable, never an argument. A request without it is
refused with 401 and changes nothing. Events are `X-Gitlab-Event: Job Hook`
(`build_id`, `build_status`, `pipeline_id`) and `Pipeline Hook`
(`object_attributes.id`, `object_attributes.status`, `project.id`), as GitLab's
webhook docs describe them; others are answered 200 and ignored.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from driver.errors import ConfigError
from driver.files import read_private
from driver.pool.pipelines import HEARD_RECHECK, PipelineWatch
from driver.settings import GitLabSettings

WEBHOOK_SECRET_ENV = "GITLAB_MACHINE_DRIVER_WEBHOOK_SECRET"  # noqa: S105 (a name)
LARGEST_BODY = 4 << 20  # a pipeline event lists every job: a few hundred KiB at most
READ_TIMEOUT = 10.0  # seconds a sender may take to send its request
CANCELED = {"canceled", "canceling"}

# What an event tells: (pipeline id, job id or None for a pipeline event, status,
# project id or None).
Event = tuple[int, int | None, str, int | None]
Heard = Callable[[int, int | None, str, int | None], None]


def read_secret(path: Path | None) -> str:
    """The hook's secret token: the file's (mode 0600), else the environment's."""
    if path is None:
        secret = os.environ.get(WEBHOOK_SECRET_ENV, "")
        if not secret:
            raise ConfigError(
                "[gitlab] webhook_listen is set but there is no secret token",
                hint=f"set webhook_secret_file (mode 0600) or {WEBHOOK_SECRET_ENV}",
            )
        return secret
    secret = read_private(
        path,
        "[gitlab] webhook_secret_file",
        holds="the webhook's secret token",
        how="create it (mode 0600) with the secret token set on the GitLab webhook",
    ).strip()
    if not secret:
        raise ConfigError(f"[gitlab] webhook_secret_file {path} is empty")
    return secret


def parse_event(kind: str, body: object) -> Event | None:
    """(pipeline, job or None, status, project or None) from a Job Hook or Pipeline
    Hook (the project of a pipeline event only); else None."""
    if not isinstance(body, dict):
        return None
    try:
        if kind == "Job Hook":
            # Its project is not needed: a job event never starts a watch.
            return int(body["pipeline_id"]), int(body["build_id"]), str(body["build_status"]), None
        if kind == "Pipeline Hook":
            attributes = body["object_attributes"]
            project = body.get("project")
            project_id = _project(project.get("id")) if isinstance(project, dict) else None
            return int(attributes["id"]), None, str(attributes["status"]), project_id
    except (KeyError, TypeError, ValueError):
        return None
    return None


def _project(value: object) -> int | None:
    """A project id, if the event tells one (only needed to watch a pipeline heard)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class WebhookReceiver:
    """A small HTTP server in a thread of its own; `heard` is called for each event."""

    def __init__(self, listen: str, secret: str, heard: Heard) -> None:
        host, _, port = listen.rpartition(":")
        expected = secret.encode()

        class Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT

            def do_POST(self) -> None:
                token = self.headers.get("X-Gitlab-Token", "").encode()
                if not hmac.compare_digest(token, expected):
                    return self._reply(401)
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    return self._reply(400)
                if not 0 <= length <= LARGEST_BODY:
                    return self._reply(413)
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    return self._reply(400)
                event = parse_event(self.headers.get("X-Gitlab-Event", ""), body)
                if event is not None:
                    heard(*event)
                self._reply(200)

            def _reply(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # GitLab's hook logs say what was sent; ours would only repeat it

        # An empty host (":8950"): every interface, as the admin wrote it.
        self.server = ThreadingHTTPServer((host, int(port)), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start(settings: GitLabSettings, watch: PipelineWatch | None) -> WebhookReceiver | None:
    """The receiver `[gitlab] webhook_listen` asks for, telling `watch`; None if unset
    or without a lookahead (a missing secret is the admin's error: raised)."""
    if not settings.webhook_listen or watch is None:
        return None
    secret = read_secret(settings.webhook_secret_file)
    watch.recheck = HEARD_RECHECK  # events ask for the looks; the timer is a safety net
    watch.watch_heard = settings.watches_heard_pipelines
    return WebhookReceiver(
        settings.webhook_listen,
        secret,
        lambda pipeline, job, status, project: watch.heard(
            pipeline, job, status, time.time(), project
        ),
    )
