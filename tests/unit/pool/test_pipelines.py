"""The pool's lookahead at GitLab: a pipeline's next stage, announced before it starts."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from driver.pool.gitlab_api import RateLimited
from driver.pool.gitlab_jobs import GitLabJobs
from driver.pool.lookahead import Lookahead
from driver.pool.pipelines import (
    HEARD_RECHECK,
    RECHECK,
    WATCHED_AT_MOST,
    PipelineJob,
    PipelineWatch,
)
from driver.pool.service import PoolService
from driver.settings import GitLabSettings, parse_settings
from driver.state import JobDir, JobPhase, JobRecord
from testing.fake_gitlab import FakeGitLab

TOKEN = "glpat-lookahead"


def job(
    id: int,
    status: str,
    stage: str,
    tags: tuple[str, ...] = ("vm",),
    name: str = "",
    started: float | None = None,
    **more: Any,
) -> PipelineJob:
    return PipelineJob(id, status, stage, frozenset(tags), name or f"{stage}-{id}", started, **more)


class Pipelines:
    """GitLab's answers, changed by the test; every call counted."""

    def __init__(self) -> None:
        self.jobs: dict[int, list[PipelineJob]] = {}
        self.calls = 0
        self.down = False

    def __call__(self, project_id: int, pipeline_id: int) -> list[PipelineJob]:
        self.calls += 1
        if self.down:
            raise ConnectionError("GitLab did not answer")
        return self.jobs[pipeline_id]


def watch(
    usual: dict[str, float] | None = {},  # noqa: B006 (never changed)
) -> tuple[PipelineWatch, Lookahead, Pipelines, list[str]]:
    lookahead, gitlab, warnings = Lookahead(), Pipelines(), list[str]()

    def usual_durations(project_id: int) -> dict[str, float]:
        if usual is None:
            raise ConnectionError("GitLab did not answer")
        return usual

    pipelines = PipelineWatch(lookahead, gitlab, warnings.append, usual_durations)
    return pipelines, lookahead, gitlab, warnings


def test_only_the_next_stage_with_our_tags_is_announced() -> None:
    pipelines, lookahead, gitlab, _ = watch()
    gitlab.jobs[7] = [
        job(1, "running", "build"),
        *(job(i, "created", "test") for i in (2, 3, 4)),
        job(5, "created", "test", ("windows",)),  # another runner's
        job(6, "created", "deploy"),  # after the tests: not yet
        job(8, "manual", "deploy"),
    ]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    assert sorted(lookahead.expected) == [2, 3, 4]


def test_a_job_whose_tags_this_runner_has_is_announced_others_not() -> None:
    pipelines, lookahead, gitlab, _ = watch()
    gitlab.jobs[7] = [
        job(1, "running", "build", ("docker", "linux")),
        job(2, "created", "test", ("docker",)),  # a subset of what this runner has
        job(3, "created", "test", ("docker", "gpu")),  # gpu: not known to be here
        job(4, "created", "test", ()),  # untagged: this runner took none such
    ]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    assert sorted(lookahead.expected) == [2]


def test_jobs_that_will_not_come_are_withdrawn_and_the_following_stage_comes_next() -> None:
    pipelines, lookahead, gitlab, _ = watch()
    # GitLab skips the on_success jobs after a canceled one; `when: always` ones run.
    gitlab.jobs[7] = [
        job(1, "running", "build"),
        job(2, "created", "test"),
        job(3, "created", "test"),
        job(6, "created", "deploy", when="always"),
    ]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    # Job 2 comes here; job 3 is canceled.
    gitlab.jobs[7] = [
        job(1, "success", "build"),
        job(2, "running", "test"),
        job(3, "canceled", "test"),
        job(6, "created", "deploy", when="always"),
    ]
    pipelines.job_arrived(40, 7, 2, now=700.0, hit=True)
    pipelines.poll(700.0)
    assert sorted(lookahead.expected) == [6]
    report = lookahead.report()
    assert report.leads == (600.0,) and (report.hits, report.misses) == (1, 0)


def test_a_job_that_came_here_is_never_announced_again() -> None:
    pipelines, lookahead, gitlab, _ = watch()
    gitlab.jobs[7] = [job(1, "running", "build"), job(2, "created", "test")]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    pipelines.job_arrived(40, 7, 2, now=400.0, hit=True)
    pipelines.poll(400.0)  # GitLab's list still says "created": it lags behind
    assert lookahead.expected == {}


def test_a_failed_stage_withdraws_what_it_announced_at_the_next_look() -> None:
    pipelines, lookahead, gitlab, _ = watch()
    gitlab.jobs[7] = [job(1, "running", "build"), job(2, "created", "test")]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    gitlab.jobs[7] = [job(1, "failed", "build"), job(2, "skipped", "test")]
    pipelines.poll(100.0 + RECHECK / 2)
    assert list(lookahead.expected) == [2]  # not looked at again yet
    pipelines.poll(100.0 + RECHECK)
    assert lookahead.expected == {}
    calls = gitlab.calls
    pipelines.poll(100.0 + 10 * RECHECK)
    assert gitlab.calls == calls  # nothing left to watch in that pipeline


def test_gitlab_failing_costs_the_lookahead_only_and_is_said_once() -> None:
    pipelines, lookahead, gitlab, warnings = watch()
    gitlab.down = True
    for n in range(3):
        pipelines.job_arrived(40, 7 + n, 1 + n, now=100.0, hit=False)
    pipelines.poll(100.0)
    pipelines.poll(100.0 + RECHECK)
    assert lookahead.expected == {}
    assert len(warnings) == 1 and "pipeline 7" in warnings[0]


def test_the_next_stage_is_due_when_the_slowest_job_before_it_usually_ends() -> None:
    pipelines, lookahead, gitlab, _ = watch({"build": 300.0, "lint": 60.0, "test": 500.0})
    gitlab.jobs[7] = [
        job(1, "running", "build", name="build", started=1000.0),
        job(2, "success", "build", name="lint", started=1000.0),  # done: no longer waited for
        job(3, "created", "test", name="test"),
    ]
    pipelines.job_arrived(40, 7, 1, now=1010.0, hit=True)
    pipelines.poll(1010.0)
    assert lookahead.expected[3].predicted == 1300.0  # build started at 1000, takes 300


def test_no_prediction_when_a_job_before_has_no_history() -> None:
    pipelines, lookahead, gitlab, warnings = watch({"build": 300.0})
    gitlab.jobs[7] = [
        job(1, "running", "build", name="build", started=1000.0),
        job(2, "pending", "build", name="new-job"),  # never ran in this project
        job(3, "created", "test", name="test"),
    ]
    pipelines.job_arrived(40, 7, 1, now=1010.0, hit=True)
    pipelines.poll(1010.0)
    assert math.isnan(lookahead.expected[3].predicted)
    assert warnings == []
    # And none when GitLab cannot tell the durations: said once, the job still announced.
    pipelines, lookahead, gitlab, warnings = watch(None)
    gitlab.jobs[7] = [job(1, "running", "build", started=1000.0), job(3, "created", "test")]
    pipelines.job_arrived(40, 7, 1, now=1010.0, hit=True)
    pipelines.poll(1010.0)
    assert math.isnan(lookahead.expected[3].predicted)
    assert len(warnings) == 1 and "usual job durations of project 40" in warnings[0]


def wait_until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30  # a hang detector, not a speed target
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_gitlab_that_hangs_never_holds_the_pools_loop(tmp_path: Path) -> None:
    answer = threading.Event()

    def hanging(project_id: int, pipeline_id: int) -> list[PipelineJob]:
        answer.wait()
        return [job(1, "running", "build"), job(2, "created", "test")]

    settings = parse_settings(
        {
            "state_dir": str(tmp_path),
            "pool": {"policy": "demand"},
            "gitlab": {"url": "https://gitlab.example.com", "token": TOKEN},
        }
    )
    job_dir = JobDir(tmp_path, 1)
    job_dir.create()
    job_dir.save(JobRecord(job_id=1, project_id=40, pipeline_id=7, machine="gmd-1"))
    service = PoolService(settings, list_jobs=hanging, usual_durations=lambda project: {})

    def three_ticks() -> None:
        for _ in range(3):
            service.tick(time.time())

    loop = threading.Thread(target=three_ticks)
    loop.start()
    loop.join(timeout=30)
    assert not loop.is_alive()  # three ticks while GitLab has not answered
    answer.set()
    wait_until(lambda: not service.polling.is_set())
    assert len(service.observe()[0].ahead.expected) == 1


def test_a_stage_behind_a_blocking_manual_job_is_not_announced() -> None:
    pipelines, lookahead, gitlab, _ = watch()
    gitlab.jobs[7] = [
        job(1, "running", "build"),
        PipelineJob(2, "manual", "approve", frozenset({"vm"}), "approve", None, False),
        job(3, "created", "deploy"),
    ]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    assert lookahead.expected == {}  # it waits for a person, maybe for ever
    # A manual job that may fail (GitLab's default for `when: manual`) blocks nothing.
    gitlab.jobs[7][1] = PipelineJob(
        2, "manual", "approve", frozenset({"vm"}), "approve", None, True
    )
    pipelines.job_arrived(40, 7, 1, now=200.0, hit=True)
    pipelines.poll(200.0)
    assert list(lookahead.expected) == [3]


def test_a_pipeline_gitlab_cannot_tell_about_for_hours_is_let_go() -> None:
    pipelines, lookahead, gitlab, _ = watch()
    gitlab.jobs[7] = [job(1, "running", "build"), job(2, "created", "test")]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    gitlab.down = True  # and stays down
    for now in range(130, 100 + int(WATCHED_AT_MOST), int(RECHECK)):
        pipelines.poll(float(now))
    assert list(lookahead.expected) == [2]  # still believed to come
    pipelines.poll(100.0 + WATCHED_AT_MOST + 1)
    assert lookahead.expected == {} and pipelines.pipelines == {}


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab(TOKEN) as fake:
        yield fake


def test_the_pipeline_jobs_are_read_from_gitlab(gitlab: FakeGitLab, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    gitlab.pipelines[(40, 7)] = [
        {"id": 1, "status": "running", "stage": "build", "tag_list": ["vm"]},
        {"id": 2, "status": "created", "stage": "test", "tag_list": [], "allow_failure": True},
    ]
    gitlab.pipelines[(40, 7)][0]["name"] = "compile"
    gitlab.pipelines[(40, 7)][0]["started_at"] = "2026-12-01T10:00:00.000Z"
    gitlab.finished[40] = [
        {"id": i, "name": "compile", "status": "success", "duration": seconds}
        for i, seconds in enumerate([280.0, 300.0, 900.0])
    ]
    reader = GitLabJobs(GitLabSettings(url=gitlab.url, token_file=token))
    assert sorted(reader.list_jobs(40, 7), key=lambda job: job.id) == [
        PipelineJob(
            1, "running", "build", frozenset({"vm"}), "compile", 1796119200.0, False, stage_index=0
        ),
        PipelineJob(2, "created", "test", frozenset(), "", None, True, stage_index=1),
    ]
    assert reader.usual_durations(40) == {"compile": 300.0}  # the median
    # The project's path (GraphQL names projects by path), the jobs, the durations.
    assert reader.calls.snapshot() == {"rest": 2, "graphql": 1}
    gitlab.graphql_errors = ["GraphQL is down"]  # and by REST: the same jobs, and bridges
    gitlab.bridges[(40, 7)] = [
        {
            "id": 3,
            "status": "running",
            "stage": "deploy",
            "name": "child",
            "downstream_pipeline": {"id": 8, "project_id": 41, "status": "running"},
        }
    ]
    reader = GitLabJobs(GitLabSettings(url=gitlab.url, token_file=token))
    assert reader.list_jobs(40, 7) == [
        PipelineJob(1, "running", "build", frozenset({"vm"}), "compile", 1796119200.0, False),
        PipelineJob(2, "created", "test", frozenset(), "", None, True),
        PipelineJob(3, "running", "deploy", frozenset(), "child", bridge=True, downstream=(41, 8)),
    ]


def test_a_long_pipeline_is_read_100_jobs_a_page(gitlab: FakeGitLab, tmp_path: Path) -> None:
    """GitLab pages its lists 20 items a page unless `per_page` asks for more, at most
    100 (REST API docs, "Pagination"): a 250-job pipeline in 3 requests, not 13."""
    gitlab.pipelines[(40, 7)] = [
        {"id": i, "status": "created", "stage": "test", "tag_list": []} for i in range(250)
    ]
    reader = GitLabJobs(GitLabSettings(url=gitlab.url, token=TOKEN))
    # GraphQL: 100 jobs a request (GitLab's largest page for a connection).
    assert sorted(job.id for job in reader.list_jobs(40, 7)) == list(range(250))
    assert reader.calls.snapshot() == {"rest": 1, "graphql": 3}
    assert all("first: 100" in query for query in gitlab.graphql_queries)
    gitlab.graphql_errors = ["GraphQL is down"]
    reader = GitLabJobs(GitLabSettings(url=gitlab.url, token=TOKEN))
    gitlab.requests.clear()
    assert [job.id for job in reader.list_jobs(40, 7)] == list(range(250))
    asked = [r for r in gitlab.requests if "/pipelines/7/jobs" in r]
    assert len(asked) == 3 and all("per_page=100" in r for r in asked), asked


def test_a_429_is_never_slept_on_and_says_how_long_to_wait(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    """GitLab answers 429 with Retry-After (seconds) when a rate limit is hit (docs,
    "Rate limits": response headers). python-gitlab would sleep that long inside the
    call, up to 10 times; the lookahead asks once and is told how long to keep quiet."""
    gitlab.pipelines[(40, 7)] = [{"id": 1, "status": "created", "stage": "test"}]
    gitlab.rate_limited, gitlab.retry_after = 5, "120"
    reader = GitLabJobs(GitLabSettings(url=gitlab.url, token=TOKEN))
    with pytest.raises(RateLimited) as limited:
        reader.list_jobs(40, 7)
    assert limited.value.seconds == 120.0
    assert len(gitlab.requests) == 1  # asked once, not retried
    assert reader.calls.snapshot() == {"rest": 1}


def test_a_rate_limit_quiets_the_lookahead_until_gitlab_allows_it() -> None:
    pipelines, lookahead, gitlab, warnings = watch()
    gitlab.jobs[7] = [job(1, "running", "build"), job(2, "created", "test")]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    answers = gitlab.jobs

    def limited(project_id: int, pipeline_id: int) -> list[PipelineJob]:
        gitlab.calls += 1
        raise RateLimited(120.0)

    pipelines.list_jobs = limited
    pipelines.job_arrived(40, 8, 3, now=130.0, hit=True)
    pipelines.poll(130.0)
    calls = gitlab.calls
    for now in (140.0, 170.0, 249.0):
        pipelines.poll(now)
    assert gitlab.calls == calls  # nothing asked within the 120 s GitLab asked for
    assert list(lookahead.expected) == [2]  # and nothing withdrawn for it
    assert len(warnings) == 1 and "rate limit" in warnings[0]
    pipelines.list_jobs = gitlab
    gitlab.jobs = answers | {8: [job(3, "running", "build")]}
    pipelines.poll(250.0)
    assert gitlab.calls > calls


@pytest.mark.parametrize(("pool", "kept"), [({"policy": "demand"}, 0), ({"idle_count": 1}, 1)])
def test_the_pool_service_wants_machines_for_the_next_stage_of_a_job_here(
    gitlab: FakeGitLab, tmp_path: Path, pool: dict[str, object], kept: int
) -> None:
    """With either policy: docker+machine's idle counts take the lookahead too."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    gitlab.pipelines[(40, 7)] = [
        {"id": 101, "status": "running", "stage": "build", "tag_list": ["vm"]},
        *(
            {"id": i, "status": "created", "stage": "test", "tag_list": ["vm"]}
            for i in range(102, 107)
        ),
    ]
    gitlab.finished[40] = []  # no history: announced, not predicted
    state = tmp_path / "state"
    settings = parse_settings(
        {
            "state_dir": str(state),
            "pool": pool,
            "gitlab": {"url": gitlab.url, "token_file": str(token)},
        }
    )
    job_dir = JobDir(state, 101)
    job_dir.create()
    job_dir.save(
        JobRecord(
            job_id=101, project_id=40, pipeline_id=7, machine="gmd-p0a1b2c3d", phase=JobPhase.READY
        )
    )
    service = PoolService(settings)
    service.observe()  # sees the job, and asks GitLab in a thread of its own
    wait_until(lambda: not service.polling.is_set())
    observation, _ = service.observe()
    assert len(observation.ahead.expected) == 5
    decision = service.controller.policy.wanted(time.time(), observation)
    assert decision >= 5 + kept
    # Without [gitlab] the service cannot know: nothing is expected.
    blind = PoolService(parse_settings({"state_dir": str(state), "pool": pool}))
    assert blind.observe()[0].ahead.expected == ()


def heard_watch() -> tuple[PipelineWatch, Lookahead, Pipelines]:
    """A watch hearing GitLab's pipeline events, that learned this runner's tags ("vm")
    from build job 1 of pipeline 7, which came here."""
    pipelines, lookahead, gitlab, _ = watch()
    pipelines.watch_heard = True  # [gitlab] watch_heard_pipelines
    gitlab.jobs[7] = [job(1, "success", "build")]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    assert pipelines.pipelines == {}  # nothing more of it to watch
    return pipelines, lookahead, gitlab


def test_a_pipeline_heard_of_announces_its_jobs_for_us_though_none_came_here() -> None:
    """Another runner manager took pipeline 9's build job: its test stage is still
    announced here, the jobs whose tags this runner has."""
    pipelines, lookahead, gitlab = heard_watch()
    gitlab.jobs[9] = [
        job(11, "running", "build"),  # on another runner manager
        job(12, "created", "test"),
        job(13, "created", "test", ("windows",)),  # not this runner's
    ]
    pipelines.heard(9, None, "running", 200.0, project_id=41)
    pipelines.poll(200.0)
    assert sorted(lookahead.expected) == [12]
    # Its jobs' events ask for looks as for any watched pipeline.
    gitlab.jobs[9][1] = job(12, "running", "test", started=200.0)
    pipelines.heard(9, 12, "running", 300.0)
    pipelines.poll(300.0)
    assert lookahead.expected == {}  # taken elsewhere
    # Done: let go, and a late event of a done pipeline starts nothing.
    gitlab.jobs[9] = [job(11, "success", "build"), job(12, "success", "test", started=200.0)]
    pipelines.heard(9, None, "success", 400.0, project_id=41)
    pipelines.poll(400.0)
    assert 9 not in pipelines.pipelines
    calls = gitlab.calls
    pipelines.heard(9, None, "success", 500.0, project_id=41)
    pipelines.poll(500.0)
    assert gitlab.calls == calls


def test_a_heard_pipeline_stays_watched_until_its_stage_for_us_can_be_announced() -> None:
    """Heard when it starts: its deploy job (ours) waits for tests another runner takes,
    not begun yet, so nothing is announced; no pipeline event comes while it runs. The
    events of its jobs bring the looks; a hook that sends pipeline events only still
    gets one every HEARD_RECHECK seconds."""
    pipelines, lookahead, gitlab = heard_watch()
    pipelines.recheck = HEARD_RECHECK  # as driver.pool.webhook.start sets it
    gitlab.jobs[9] = [
        job(11, "pending", "build"),
        job(12, "created", "test", ("windows",)),
        job(13, "created", "deploy"),
    ]
    pipelines.heard(9, None, "pending", 200.0, project_id=41)
    pipelines.poll(200.0)
    assert lookahead.expected == {}
    calls = gitlab.calls
    pipelines.poll(200.0 + HEARD_RECHECK - 1)  # no look before the timer's
    assert gitlab.calls == calls
    gitlab.jobs[9][:2] = [job(11, "success", "build"), job(12, "running", "test", ("windows",))]
    pipelines.heard(9, 12, "running", 400.0)  # a job event: looked at at once
    pipelines.poll(400.0)
    assert sorted(lookahead.expected) == [13]


def test_a_heard_pipeline_is_looked_at_again_without_job_events() -> None:
    """A hook that sends pipeline events only: nothing tells when the tests begin, the
    timer's look does, and the deploy job (ours) is announced then."""
    pipelines, lookahead, gitlab = heard_watch()
    pipelines.recheck = HEARD_RECHECK
    gitlab.jobs[9] = [
        job(11, "pending", "build", ("windows",)),
        job(12, "created", "test", ("windows",)),
        job(13, "created", "deploy"),
    ]
    pipelines.heard(9, None, "pending", 200.0, project_id=41)
    pipelines.poll(200.0)
    assert lookahead.expected == {}
    gitlab.jobs[9][:2] = [
        job(11, "success", "build", ("windows",)),
        job(12, "running", "test", ("windows",)),
    ]
    pipelines.poll(200.0 + HEARD_RECHECK)  # no event came: the timer's look
    assert sorted(lookahead.expected) == [13]


def test_a_heard_pipeline_with_nothing_for_us_is_looked_at_once() -> None:
    pipelines, lookahead, gitlab = heard_watch()
    gitlab.jobs[9] = [job(11, "running", "build", ("windows",))]
    gitlab.jobs[9] += [job(12, "created", "test", ("windows",))]
    calls = gitlab.calls
    pipelines.heard(9, None, "pending", 200.0, project_id=41)
    pipelines.poll(200.0)
    assert gitlab.calls == calls + 1
    for now in (210.0, 220.0, 230.0):  # its next events cost nothing
        pipelines.heard(9, None, "running", now, project_id=41)
        pipelines.heard(9, 11, "running", now)
        pipelines.poll(now)
    assert gitlab.calls == calls + 1 and lookahead.expected == {}
    # Remembered for as long as a pipeline is watched at most, then asked of again.
    later = 200.0 + WATCHED_AT_MOST + 1
    pipelines.heard(9, None, "running", later, project_id=41)
    pipelines.poll(later)
    assert gitlab.calls == calls + 2


def test_a_pipeline_heard_before_any_job_came_here_is_not_watched() -> None:
    """Without a job taken, this runner's tags are unknown: nothing is asked of GitLab."""
    pipelines, lookahead, gitlab, _ = watch()
    pipelines.watch_heard = True
    gitlab.jobs[9] = [job(11, "running", "build"), job(12, "created", "test")]
    pipelines.heard(9, None, "running", 100.0, project_id=41)
    pipelines.poll(100.0)
    assert gitlab.calls == 0 and pipelines.pipelines == {}
    # Once a job came here (its tags "vm"), the same event watches the pipeline.
    gitlab.jobs[7] = [job(1, "success", "build")]
    pipelines.job_arrived(40, 7, 1, now=150.0, hit=True)
    pipelines.poll(150.0)
    pipelines.heard(9, None, "running", 160.0, project_id=41)
    pipelines.poll(160.0)
    assert sorted(lookahead.expected) == [12]


def test_a_heard_pipeline_is_let_go_hours_after_it_was_last_heard() -> None:
    pipelines, lookahead, gitlab = heard_watch()
    gitlab.jobs[9] = [job(11, "running", "build"), job(12, "created", "test")]
    pipelines.heard(9, None, "running", 200.0, project_id=41)
    pipelines.poll(200.0)
    gitlab.down = True
    pipelines.heard(9, 11, "running", 1000.0)  # heard again: the hours count from here
    pipelines.poll(200.0 + WATCHED_AT_MOST + 1)
    assert list(lookahead.expected) == [12]
    pipelines.poll(1000.0 + WATCHED_AT_MOST + 1)
    assert lookahead.expected == {} and pipelines.pipelines == {}
