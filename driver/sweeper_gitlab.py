"""What one sweep asks GitLab, within one deadline for the whole sweep.

GitLab's answer is one proof among several, and only a finished status proves
anything: a GitLab that does not answer must cost a sweep seconds, not minutes
per machine. So each question gets what is left of the sweep's time (at most
`[gitlab] timeout`) and is asked once, never retried (python-gitlab would retry
a connection error ten times, with back-off, whatever the timeout); after
UNKNOWN_ALARM unknown answers in a row, or once the time is up, the rest of the
sweep asks nothing and says why: those machines are kept, as for any unknown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from driver import log
from driver.errors import DriverError
from driver.settings import Settings

FINISHED = frozenset({"success", "failed", "canceled", "skipped", "manual"})
ALIVE = frozenset(
    {"created", "pending", "running", "waiting_for_resource", "preparing", "scheduled"}
)
UNKNOWN = "unknown"  # the prefix of every answer that proves nothing
# (project id, job id, seconds it may take) -> a status, or "unknown (why)"
JobStatus = Callable[[int, int, float], str]
# So many unknown answers in one sweep mean a configuration problem, not gone jobs.
UNKNOWN_ALARM = 3
# All of one sweep's questions: well inside the timer's 10 minutes and its unit's limit.
GITLAB_TIME = 120.0


@dataclass
class Questions:
    """One sweep's questions and answers; each job is asked at most once."""

    job_status: JobStatus | None
    seconds: float = GITLAB_TIME
    clock: Callable[[], float] = time.monotonic
    answers: dict[tuple[int, int], str] = field(default_factory=dict)
    asked: int = 0
    unknown_in_a_row: int = 0
    stopped: str = ""  # why the sweep asks no more
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = self.clock() + self.seconds

    def ask(self, project_id: int, job_id: int) -> str | None:
        if self.job_status is None:
            return None
        key = (project_id, job_id)
        if key not in self.answers:
            self.answers[key] = self._ask(project_id, job_id)
        return self.answers[key]

    def _ask(self, project_id: int, job_id: int) -> str:
        left = self.deadline - self.clock()
        if not self.stopped and left <= 0:
            self._stop(f"this sweep's {self.seconds:g}s for GitLab are up")
        if self.stopped:
            return f"{UNKNOWN} (not asked: {self.stopped})"
        assert self.job_status is not None
        self.asked += 1
        try:
            answer = self.job_status(project_id, job_id, left)
        except DriverError as e:
            answer = f"{UNKNOWN} ({e.message})"
        if not answer.startswith(UNKNOWN):
            self.unknown_in_a_row = 0
            return answer
        self.unknown_in_a_row += 1
        if self.unknown_in_a_row >= UNKNOWN_ALARM:
            self._stop(f"{self.unknown_in_a_row} answers in a row proved nothing ({answer})")
        return answer

    def _stop(self, why: str) -> None:
        self.stopped = why
        log.get().error("sweep_gitlab_stopped", reason=why, asked=self.asked)

    def unknown(self) -> list[str]:
        return [a for a in self.answers.values() if a.startswith(UNKNOWN)]


def job_status(settings: Settings) -> JobStatus | None:
    """How this sweep asks GitLab, or None (and the log says why) if it cannot."""
    if not settings.gitlab.configured:
        log.get().warning(
            "sweep_without_gitlab",
            note="[gitlab] url is not set: GitLab is never asked, so machines of finished "
            "jobs go only when their runner is gone or after [sweeper] max_age",
        )
        return None
    token = settings.gitlab.read_token()
    if not token:
        log.get().warning(
            "sweep_without_gitlab_token",
            note="[gitlab] has no token (token_file or token): GitLab answers 404 for the "
            "jobs of private projects, which keeps their machines until [sweeper] max_age",
        )
    return gitlab_job_status(settings, token)


def gitlab_job_status(settings: Settings, token: str) -> JobStatus:
    """Ask GitLab for a job's status, once. Only a status is an answer: 401, 403, 404 (also
    what a token that cannot see the project gets) and errors are "unknown"."""
    import gitlab
    from gitlab import exceptions

    client = gitlab.Gitlab(
        settings.gitlab.url,
        private_token=token or None,
        timeout=settings.gitlab.timeout,
        retry_transient_errors=False,
    )

    def status(project_id: int, job_id: int, seconds: float) -> str:
        timeout = max(0.1, min(settings.gitlab.timeout, seconds))
        try:
            job = client.projects.get(project_id, lazy=True).jobs.get(
                job_id, timeout=timeout, max_retries=0, obey_rate_limit=False
            )
        except exceptions.GitlabAuthenticationError as e:
            return f"{UNKNOWN} (GitLab refused the token: {e.response_code})"
        except exceptions.GitlabGetError as e:
            return f"{UNKNOWN} (GitLab answered {e.response_code} for project {project_id})"
        except exceptions.GitlabError as e:
            return f"{UNKNOWN} (cannot ask GitLab: {str(e)[:120]})"
        except Exception as e:  # connection refused, timeouts: requests' errors
            return f"{UNKNOWN} (GitLab did not answer: {type(e).__name__})"
        return str(job.status)

    return status
