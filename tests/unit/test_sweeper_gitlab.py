"""One sweep's questions to GitLab: one deadline for all, asked once each, and no
more questions after a run of answers that prove nothing. A GitLab that does not
answer costs a sweep seconds, not minutes per machine (bench/sweep_gitlab.py
measures it against a real socket)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import structlog
from gitlab._backends.requests_backend import RequestsBackend

from driver import sweeper, sweeper_gitlab
from driver.settings import parse_settings
from tests.unit.test_sweeper import FakeMachines, live_job, world

NO_ANSWER = "unknown (GitLab did not answer: ReadTimeout)"


def test_a_run_of_unknown_answers_stops_the_questions_and_keeps_the_machines(
    tmp_path: Path,
) -> None:
    settings, state, dm = world(tmp_path)
    for job_id in range(10, 20):
        dm.add(f"gmd-{job_id}")
        live_job(state, job_id, f"gmd-{job_id}")
    asked: list[int] = []

    def job_status(project_id: int, job_id: int, seconds: float) -> str:
        asked.append(job_id)
        return NO_ANSWER

    with structlog.testing.capture_logs() as logs:
        report = sweeper.sweep(dm, settings, job_status, False, lambda _: None)  # type: ignore[arg-type]
    assert asked == [10, 11, 12]
    assert dm.removed == []
    assert len(report.unknown_answers) == 10
    assert "could not tell the state of 10 machines' jobs" in report.configuration_problem
    stopped = [e for e in logs if e["event"] == "sweep_gitlab_stopped"]
    assert len(stopped) == 1 and stopped[0]["log_level"] == "error"
    assert "3 answers in a row proved nothing" in stopped[0]["reason"]


def test_an_answer_between_unknowns_keeps_the_questions_going() -> None:
    answers = iter([NO_ANSWER, NO_ANSWER, "running", NO_ANSWER, NO_ANSWER, "success"])
    questions = sweeper_gitlab.Questions(lambda p, j, s: next(answers))
    assert [questions.ask(1, job) for job in range(6)][-1] == "success"
    assert questions.asked == 6 and not questions.stopped


def test_all_of_a_sweeps_questions_share_one_deadline() -> None:
    now = [1000.0]
    given: list[float] = []

    def slow_gitlab(project_id: int, job_id: int, seconds: float) -> str:
        given.append(seconds)
        now[0] += 50.0  # each question takes 50 s (a GitLab timing out)
        return "running"

    questions = sweeper_gitlab.Questions(slow_gitlab, seconds=120.0, clock=lambda: now[0])
    answers = [questions.ask(1, job) for job in range(5)]
    assert given == [120.0, 70.0, 20.0]  # each question gets what is left, no more
    assert answers[:3] == ["running"] * 3
    assert str(answers[3]).startswith("unknown (not asked: this sweep's 120s for GitLab are up")
    assert questions.asked == 3


def test_a_question_is_asked_once_with_the_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """python-gitlab retried a connection error 10 times with back-off, whatever
    `[gitlab] timeout` said: 103 s for one machine."""
    calls: list[float] = []

    def refused(self: RequestsBackend, method: str, url: str, **kwargs: object) -> None:
        timeout = kwargs["timeout"]
        assert isinstance(timeout, float)
        calls.append(timeout)
        raise requests.ConnectionError("refused")

    monkeypatch.setattr(RequestsBackend, "http_request", refused)
    monkeypatch.setattr("time.sleep", lambda s: pytest.fail(f"a back-off of {s}s"))
    settings = parse_settings({"gitlab": {"url": "http://127.0.0.1:9", "timeout": 10}})
    status = sweeper_gitlab.gitlab_job_status(settings, "a-token")
    assert status(1, 2, 4.0) == "unknown (GitLab did not answer: ConnectionError)"
    assert calls == [4.0]


def test_the_log_says_when_gitlab_is_not_asked_or_has_no_token() -> None:
    with structlog.testing.capture_logs() as logs:
        assert sweeper_gitlab.job_status(parse_settings({})) is None
        no_token = parse_settings({"gitlab": {"url": "https://gitlab.example.com"}})
        assert sweeper_gitlab.job_status(no_token) is not None
    events = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert events == ["sweep_without_gitlab", "sweep_without_gitlab_token"]


def test_ls_asks_nothing(tmp_path: Path) -> None:
    settings, _, _ = world(tmp_path)
    look = sweeper.Sweep(FakeMachines(tmp_path / "dm"), settings, job_status=None)  # type: ignore[arg-type]
    assert look.ask(1, 2) is None
