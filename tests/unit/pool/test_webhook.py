"""GitLab's webhook events withdraw a canceled job at once (GitLab's docs, "Webhook
events": `X-Gitlab-Event: Job Hook` with `build_id`, `build_status`, `pipeline_id`;
`Pipeline Hook` with `object_attributes.id` and `.status`; the hook's secret token
in `X-Gitlab-Token`)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.errors import ConfigError
from driver.pool.pipelines import HEARD_RECHECK, RECHECK, PipelineJob, PipelineWatch
from driver.pool.webhook import WEBHOOK_SECRET_ENV, WebhookReceiver, read_secret, start
from driver.settings import GitLabSettings
from tests.unit.pool.test_pipelines import job, watch

SECRET = "hook-secret"


@pytest.fixture
def watched() -> Iterator[tuple[PipelineWatch, WebhookReceiver, list[float]]]:
    pipelines, lookahead, gitlab, _ = watch()
    gitlab.jobs[7] = [job(1, "running", "build"), job(2, "created", "test")]
    gitlab.jobs[7] += [job(3, "created", "test")]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    assert sorted(lookahead.expected) == [2, 3]
    times: list[float] = []
    receiver = WebhookReceiver(
        "127.0.0.1:0",
        SECRET,
        lambda pipeline, job_id, status, project: pipelines.heard(
            pipeline, job_id, status, 110.0, project
        ),
    )
    try:
        yield pipelines, receiver, times
    finally:
        receiver.stop()


def send(receiver: WebhookReceiver, event: str, body: object, token: str = SECRET) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{receiver.port}/",
        data=json.dumps(body).encode(),
        headers={"X-Gitlab-Event": event, "X-Gitlab-Token": token},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_a_canceled_job_is_withdrawn_when_gitlab_says_so(
    watched: tuple[PipelineWatch, WebhookReceiver, list[float]],
) -> None:
    pipelines, receiver, _ = watched
    job_event = {"build_id": 2, "build_status": "canceled", "pipeline_id": 7}
    assert send(receiver, "Job Hook", job_event) == 200
    assert sorted(pipelines.lookahead.expected) == [3]  # at once, no look at GitLab


def test_a_canceled_pipeline_withdraws_all_it_announced(
    watched: tuple[PipelineWatch, WebhookReceiver, list[float]],
) -> None:
    pipelines, receiver, _ = watched
    event = {"object_kind": "pipeline", "object_attributes": {"id": 7, "status": "canceled"}}
    assert send(receiver, "Pipeline Hook", event) == 200
    assert pipelines.lookahead.expected == {}


def test_any_other_event_asks_for_a_look_at_the_next_tick(
    watched: tuple[PipelineWatch, WebhookReceiver, list[float]],
) -> None:
    pipelines, receiver, _ = watched
    assert pipelines.pipelines[7].look_at == 100.0 + RECHECK
    job_event = {"build_id": 1, "build_status": "success", "pipeline_id": 7}
    assert send(receiver, "Job Hook", job_event) == 200
    assert pipelines.pipelines[7].look_at == 110.0


def test_a_pipeline_event_of_a_pipeline_not_watched_starts_watching_it(
    watched: tuple[PipelineWatch, WebhookReceiver, list[float]],
) -> None:
    """A group webhook tells of pipeline 9 of project 41, no job of which came here:
    its project, from the event's `project.id`, is where its jobs are listed."""
    pipelines, receiver, _ = watched
    pipelines.watch_heard = True  # [gitlab] watch_heard_pipelines
    listed: list[tuple[int, int]] = []

    def list_jobs(project_id: int, pipeline_id: int) -> list[PipelineJob]:
        listed.append((project_id, pipeline_id))
        return [job(11, "running", "build"), job(12, "created", "test")]

    pipelines.list_jobs = list_jobs
    event = {
        "object_kind": "pipeline",
        "object_attributes": {"id": 9, "status": "running"},
        "project": {"id": 41, "path_with_namespace": "group/project-41"},
    }
    assert send(receiver, "Pipeline Hook", event) == 200
    pipelines.poll(110.0)
    assert listed == [(41, 9)]
    assert sorted(pipelines.lookahead.expected) == [2, 3, 12]


def test_without_the_secret_token_nothing_changes(
    watched: tuple[PipelineWatch, WebhookReceiver, list[float]],
) -> None:
    pipelines, receiver, _ = watched
    job_event = {"build_id": 2, "build_status": "canceled", "pipeline_id": 7}
    assert send(receiver, "Job Hook", job_event, token="guess") == 401
    assert send(receiver, "Job Hook", job_event, token="") == 401
    assert sorted(pipelines.lookahead.expected) == [2, 3]


def test_the_secret_comes_from_a_private_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="accessible to other users"):
        read_secret(secret)
    secret.chmod(0o600)
    assert read_secret(secret) == SECRET
    monkeypatch.delenv(WEBHOOK_SECRET_ENV, raising=False)
    with pytest.raises(ConfigError, match="no secret token"):
        read_secret(None)
    monkeypatch.setenv(WEBHOOK_SECRET_ENV, "from-env")
    assert read_secret(None) == "from-env"
    # Off unless webhook_listen is set.
    pipelines, *_ = watch()
    assert start(GitLabSettings(url="https://gitlab.example.com"), pipelines) is None
    receiver = start(
        GitLabSettings(url="https://gitlab.example.com", webhook_listen="127.0.0.1:0"), pipelines
    )
    assert receiver is not None
    receiver.stop()
    assert pipelines.recheck == HEARD_RECHECK  # events ask for looks: the timer a safety net
    assert pipelines.watch_heard  # on by default with the events


def test_watching_pipelines_heard_of_is_on_with_the_events_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(WEBHOOK_SECRET_ENV, SECRET)
    url, listen = "https://gitlab.example.com", "127.0.0.1:0"
    for setting, on in ((None, True), (True, True), (False, False)):
        pipelines, *_ = watch()
        settings = GitLabSettings(url=url, webhook_listen=listen, watch_heard_pipelines=setting)
        receiver = start(settings, pipelines)
        assert receiver is not None
        receiver.stop()
        assert pipelines.watch_heard is on, setting
    # Without the events there is nothing to hear: asking for it is an error.
    with pytest.raises(ValueError, match=r"watch_heard_pipelines = true needs .* webhook_listen"):
        GitLabSettings(url=url, watch_heard_pipelines=True)
    assert not GitLabSettings(url=url).watches_heard_pipelines


def test_webhook_listen_is_host_and_port() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        GitLabSettings(webhook_listen="8950")
    assert GitLabSettings(webhook_listen=":8950").webhook_listen == ":8950"
