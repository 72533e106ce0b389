"""The pool service with GitLab's webhook events, end to end: a cancel withdraws the
announced jobs at once, not at the next look at GitLab.

The events are those GitLab sends to a group or project webhook with "Job events"
and "Pipeline events" ticked (GitLab docs, "Webhook events",
https://docs.gitlab.com/user/project/integrations/webhook_events/ : "Job events",
`X-Gitlab-Event: Job Hook`, `object_kind` "build" with `build_id`, `build_status`,
`pipeline_id`; "Pipeline events", `X-Gitlab-Event: Pipeline Hook`, `object_kind`
"pipeline" with `object_attributes.id` and `.status`, and its `builds`), the
hook's secret token in `X-Gitlab-Token`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from driver.commands import pool as pool_command
from driver.pool import webhook
from driver.pool.pipelines import HEARD_RECHECK, PipelineWatch
from driver.pool.service import PoolService
from driver.pool.webhook import WebhookReceiver
from driver.settings import GitLabSettings, Settings, parse_settings
from driver.state import JobDir, JobPhase, JobRecord
from testing.fake_gitlab import FakeGitLab

TOKEN = "glpat-webhook-test"
SECRET = "hook-secret-of-the-group-webhook"
PROJECT, PIPELINE = 40, 7
BUILD, UNIT, LINT = 101, 102, 103  # the build stage, here; the test stage, announced
SHA = "bcbb5ec396a2c0f828686f14fac9b80b780504f2"


def wait_until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30  # a hang detector, not a speed target
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def job_event(job_id: int, name: str, status: str) -> dict[str, object]:
    """A Job Hook as GitLab sends it (the docs' example, trimmed of repository URLs)."""
    return {
        "object_kind": "build",
        "ref": "main",
        "tag": False,
        "before_sha": SHA,
        "sha": SHA,
        "build_id": job_id,
        "build_name": name,
        "build_stage": "test",
        "build_status": status,
        "build_created_at": "2026-12-07 06:00:00 UTC",
        "build_started_at": None,
        "build_finished_at": "2026-12-07 06:01:03 UTC",
        "build_duration": None,
        "build_queued_duration": None,
        "build_allow_failure": False,
        "build_failure_reason": "unknown_failure",
        "retries_count": 0,
        "pipeline_id": PIPELINE,
        "project_id": PROJECT,
        "project_name": "group / project-40",
        "user": {"id": 3, "name": "Admin", "username": "admin", "email": "admin@example.com"},
        "commit": {
            "id": PIPELINE,  # (GitLab's: the pipeline's id)
            "sha": SHA,
            "message": "test\n",
            "author_name": "Admin",
            "author_email": "admin@example.com",
            "status": "running",
            "duration": None,
            "started_at": "2026-12-07 06:00:01 UTC",
            "finished_at": None,
        },
        "repository": {"name": "project-40", "homepage": "https://gitlab.example.com/group/p"},
        "runner": None,
        "environment": None,
    }


def pipeline_event(status: str) -> dict[str, object]:
    """A Pipeline Hook as GitLab sends it (the docs' example, trimmed)."""
    return {
        "object_kind": "pipeline",
        "object_attributes": {
            "id": PIPELINE,
            "iid": 3,
            "name": None,
            "ref": "main",
            "tag": False,
            "sha": SHA,
            "before_sha": SHA,
            "source": "push",
            "status": status,
            "detailed_status": status,
            "stages": ["build", "test"],
            "created_at": "2026-12-07 06:00:00 UTC",
            "finished_at": "2026-12-07 06:01:05 UTC",
            "duration": 63,
            "queued_duration": None,
            "variables": [],
        },
        "merge_request": None,
        "user": {"id": 3, "name": "Admin", "username": "admin"},
        "project": {
            "id": PROJECT,
            "name": "project-40",
            "path_with_namespace": "group/project-40",
            "default_branch": "main",
        },
        "commit": {"id": SHA, "message": "test\n", "timestamp": "2026-12-07T06:00:00+00:00"},
        "builds": [
            {"id": BUILD, "stage": "build", "name": "compile", "status": "success"},
            {"id": UNIT, "stage": "test", "name": "unit", "status": "canceled"},
            {"id": LINT, "stage": "test", "name": "lint", "status": "canceled"},
        ],
    }


def post(port: int, event: str, body: object, token: str) -> int:
    """POST an event as GitLab's webhook does; the HTTP status it was answered."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/17.6.0",
        "X-Gitlab-Event": event,
        "X-Gitlab-Instance": "https://gitlab.example.com",
    }
    if token:
        headers["X-Gitlab-Token"] = token
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return e.code


def pool_status(settings: Settings, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    """What `gitlab-machine-driver pool status --json` says."""
    capsys.readouterr()
    assert pool_command.status(settings, as_json=True) == 0
    service = json.loads(capsys.readouterr().out)["service"]
    assert isinstance(service, dict)
    return service


def test_a_cancel_gitlab_sends_withdraws_the_announced_jobs_before_any_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pipeline 7's build job runs here; its test stage (unit, lint) is announced.
    A person cancels `unit`, then the whole pipeline: GitLab's Job Hook and Pipeline
    Hook withdraw them at once, while GitLab, held, has told the service nothing
    since the announcement and still lists them "created". An event without the
    secret token is refused with 401 and changes nothing. The service stops, and
    with it the receiver: its port is closed."""
    token, secret = tmp_path / "gitlab-token", tmp_path / "webhook-secret"
    token.write_text(TOKEN)
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    with FakeGitLab(TOKEN) as gitlab:
        listed: list[dict[str, object]] = [
            {"id": BUILD, "status": "running", "stage": "build", "name": "compile"},
            {"id": UNIT, "status": "created", "stage": "test", "name": "unit"},
            {"id": LINT, "status": "created", "stage": "test", "name": "lint"},
        ]
        for job in listed:
            job["tag_list"] = ["vm"]
        gitlab.pipelines[(PROJECT, PIPELINE)] = listed
        gitlab.finished[PROJECT] = []  # no history: announced, not predicted
        settings = parse_settings(
            {
                "state_dir": str(tmp_path / "state"),
                "pool": {"policy": "demand", "check_interval": 0.05, "health_interval": 600},
                "gitlab": {
                    "url": gitlab.url,
                    "token_file": str(token),
                    "webhook_listen": "127.0.0.1:0",  # any free port: read from the receiver
                    "webhook_secret_file": str(secret),
                },
            }
        )
        # The build job, as its prepare recorded it: the service sees it at its next tick.
        job_dir = JobDir(settings.state_dir, BUILD)
        job_dir.create()
        job_dir.save(
            JobRecord(
                job_id=BUILD,
                project_id=PROJECT,
                pipeline_id=PIPELINE,
                machine="gmd-p0a1b2c3d",
                phase=JobPhase.READY,
            )
        )
        service = PoolService(settings)

        def create() -> bool:  # no machines here: the controller's creates start nothing
            return False

        service.controller.create = create
        receivers: list[WebhookReceiver] = []
        real_start = webhook.start

        def start(
            gitlab_settings: GitLabSettings, watch: PipelineWatch | None
        ) -> WebhookReceiver | None:
            receiver = real_start(gitlab_settings, watch)  # the service's own, only seen
            assert receiver is not None
            receivers.append(receiver)
            return receiver

        monkeypatch.setattr(webhook, "start", start)
        stop = threading.Event()
        loop = threading.Thread(target=service.run, args=(stop,), daemon=True)
        loop.start()
        try:
            wait_until(lambda: bool(receivers), "the webhook receiver")
            port = receivers[0].port
            watch = service.pipelines
            assert watch is not None and watch.recheck == HEARD_RECHECK  # looks: a safety net
            wait_until(lambda: set(service.lookahead.expected) == {UNIT, LINT}, "the announce")
            # The look done: the next one not before the safety net's 300 s.
            wait_until(lambda: watch.pipelines[PIPELINE].look_at > time.time(), "the look")
            wait_until(lambda: pool_status(settings, capsys)["jobs_announced"] == 2, "status")
            assert any(f"Ci::Pipeline/{PIPELINE}" in q for q in gitlab.graphql_queries)

            # From here GitLab answers nothing: what the service learns, the events told.
            gitlab.answering.clear()
            asked = len(gitlab.requests)
            look_at = watch.pipelines[PIPELINE].look_at

            canceled = job_event(UNIT, "unit", "canceled")
            assert post(port, "Job Hook", canceled, token="guessed") == 401
            assert post(port, "Job Hook", canceled, token="") == 401
            assert post(port, "Pipeline Hook", pipeline_event("canceled"), token="x") == 401
            assert set(service.lookahead.expected) == {UNIT, LINT}  # nothing changed
            assert watch.pipelines[PIPELINE].look_at == look_at  # nor a look asked for

            # A person cancels `unit`: withdrawn when GitLab's hook is answered.
            assert post(port, "Job Hook", canceled, token=SECRET) == 200
            assert set(service.lookahead.expected) == {LINT}
            # Then the whole pipeline: what it still had announced goes too.
            assert post(port, "Pipeline Hook", pipeline_event("canceled"), token=SECRET) == 200
            assert service.lookahead.expected == {}
            wait_until(lambda: pool_status(settings, capsys)["jobs_announced"] == 0, "status")
            # Only the events can have told: GitLab still lists both as waiting, and the
            # look the events asked for is still waiting for its answer.
            assert [job["status"] for job in listed] == ["running", "created", "created"]
            wait_until(lambda: len(gitlab.requests) > asked, "the look the events asked for")
            assert service.lookahead.expected == {}

            # GitLab answers again, as it does after a cancel: the look agrees.
            for job in listed:
                job["status"] = "canceled" if job["id"] != BUILD else "success"
            gitlab.answering.set()
            wait_until(lambda: PIPELINE not in watch.pipelines, "the look at the pipeline")
            assert service.lookahead.expected == {}
        finally:
            gitlab.answering.set()
            stop.set()
            loop.join(timeout=60)
        assert not loop.is_alive()
        assert pool_status(settings, capsys)["running"] is False
        receivers[0].thread.join(timeout=10)
        assert not receivers[0].thread.is_alive()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
