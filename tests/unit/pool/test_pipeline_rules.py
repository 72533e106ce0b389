"""The lookahead follows GitLab's rules: what may run, and when, from `needs:`, stages
and `when:` (GitLab's docs: "CI/CD YAML syntax reference", keywords `when`, `needs`,
`start_in`, `resource_group`, `trigger:strategy`; its pipeline processing:
Ci::ProcessBuildService starts an on_success job after success or skipped, an
on_failure job after a failure, an always job after either)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.pool.gitlab_jobs import SMALLEST_PAGE, GitLabJobs, jobs_query
from driver.pool.pipelines import ELSEWHERE_AFTER, RECHECK, PipelineJob
from driver.settings import GitLabSettings
from testing import fake_gitlab_graphql
from testing.fake_gitlab import FakeGitLab
from tests.unit.pool.test_pipelines import TOKEN, job, watch


def test_a_manual_job_is_never_announced() -> None:
    """GitLab lists a `when: manual` job of a later stage as "created" until its stage
    comes, then "manual": it runs only if a person starts it."""
    pipelines, lookahead, gitlab, _ = watch()
    gitlab.jobs[7] = [
        job(1, "running", "build"),
        job(2, "created", "test"),
        job(3, "created", "test", when="manual", allow_failure=True),
    ]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    assert list(lookahead.expected) == [2]


def test_on_failure_jobs_wait_for_a_failure_and_on_success_ones_are_withdrawn_on_it() -> None:
    """`when: on_failure` runs only when a job before it failed; `on_success` (the
    default) is skipped then; `always` runs either way. A job allowed to fail fails
    nothing."""
    pipelines, lookahead, gitlab, _ = watch()
    build = [job(1, "running", "build"), job(4, "running", "build", allow_failure=True)]
    after = [
        job(2, "created", "test"),
        job(3, "created", "test", when="on_failure"),
        job(5, "created", "test", when="always"),
    ]
    gitlab.jobs[7] = build + after
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    assert sorted(lookahead.expected) == [2, 5]  # the pipeline succeeds so far
    gitlab.jobs[7] = [job(1, "running", "build"), job(4, "failed", "build", allow_failure=True)]
    gitlab.jobs[7] += after
    pipelines.poll(100.0 + RECHECK)
    assert sorted(lookahead.expected) == [2, 5]  # a failure allowed: still succeeding
    gitlab.jobs[7] = [job(1, "failed", "build"), job(4, "failed", "build", allow_failure=True)]
    gitlab.jobs[7] += after
    pipelines.poll(100.0 + 2 * RECHECK)
    assert sorted(lookahead.expected) == [3, 5]


def test_a_delayed_job_is_announced_for_the_time_gitlab_set() -> None:
    """A `when: delayed` job is "created" until its stage comes, then "scheduled" with
    `scheduledAt` (its stage's start plus `start_in`); only then is its time known."""
    pipelines, lookahead, gitlab, _ = watch({"build": 60.0})
    gitlab.jobs[7] = [
        job(1, "running", "build", name="build", started=100.0),
        job(2, "created", "deploy", when="delayed"),
    ]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    assert lookahead.expected == {}  # its start_in is not told yet
    gitlab.jobs[7] = [
        job(1, "success", "build", name="build", started=100.0),
        job(9, "running", "build", name="lint", started=170.0),
        job(2, "scheduled", "deploy", when="delayed", scheduled_at=1900.0),
    ]
    pipelines.job_arrived(40, 7, 9, now=170.0, hit=True)  # another job of it came: a look
    pipelines.poll(170.0)
    assert lookahead.expected[2].predicted == 1900.0


def test_a_job_waiting_for_a_resource_group_holds_no_machine() -> None:
    """ "waiting_for_resource": a job of a `resource_group` waits until another
    pipeline's job lets the resource go, which no one can predict."""
    pipelines, lookahead, gitlab, _ = watch()
    gitlab.jobs[7] = [job(1, "running", "build"), job(2, "created", "deploy")]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    assert list(lookahead.expected) == [2]
    gitlab.jobs[7] = [job(1, "success", "build"), job(2, "waiting_for_resource", "deploy")]
    pipelines.poll(100.0 + RECHECK)
    assert lookahead.expected == {}


def test_a_job_seen_running_elsewhere_teaches_the_share_that_comes_here() -> None:
    """GitLab marks a job "running" when a runner takes it; one announced here that
    runs and never came was taken by another runner manager with the same tags."""
    pipelines, lookahead, gitlab, _ = watch()
    gitlab.jobs[7] = [job(1, "running", "build"), job(2, "created", "test")]
    gitlab.jobs[7].append(job(3, "created", "test"))
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    later = 100.0 + RECHECK
    gitlab.jobs[7] = [
        job(1, "success", "build"),
        job(2, "running", "test", started=later - ELSEWHERE_AFTER),  # a while: elsewhere
        job(3, "running", "test", started=later - 1),  # just now: ours may yet show up
    ]
    pipelines.poll(later)
    assert list(lookahead.expected) == [3]
    assert lookahead.share(frozenset({"vm"})) < 1.0


def test_a_dag_job_is_predicted_from_the_jobs_it_needs() -> None:
    """A job with `needs:` starts when the jobs it names end, whatever their stage."""
    pipelines, lookahead, gitlab, _ = watch({"compile": 300.0, "docs": 900.0, "unit": 60.0})
    gitlab.jobs[7] = [
        job(1, "running", "build", name="compile", started=1000.0),
        job(2, "running", "build", name="docs", started=1000.0),
        job(3, "created", "test", name="unit", needs=("compile",)),
        job(4, "created", "test", name="lint"),  # no needs: the whole build stage
    ]
    pipelines.job_arrived(40, 7, 1, now=1010.0, hit=True)
    pipelines.poll(1010.0)
    assert lookahead.expected[3].predicted == 1300.0  # compile's end, not docs'
    assert lookahead.expected[4].predicted == 1900.0


def test_a_stageless_chain_is_predicted_link_by_link() -> None:
    """C needs B needs A, all in one stage: B starts when A ends, C when B ends."""
    pipelines, lookahead, gitlab, _ = watch({"a": 100.0, "b": 50.0, "c": 20.0})
    gitlab.jobs[7] = [
        job(1, "running", "test", name="a", started=1000.0, needs=()),
        job(2, "created", "test", name="b", needs=("a",)),
        job(3, "created", "test", name="c", needs=("b",)),
        job(4, "created", "test", name="d", needs=("c",)),
        job(5, "created", "test", name="e", needs=("a",)),  # never ran before: its end
        job(6, "created", "test", name="f", needs=("e",)),  # unknown, f not announced
    ]
    pipelines.job_arrived(40, 7, 1, now=1010.0, hit=True)
    pipelines.poll(1010.0)
    predicted = {i: e.predicted for i, e in lookahead.expected.items()}
    assert predicted == {2: 1100.0, 3: 1150.0, 4: 1170.0, 5: 1100.0}


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab(TOKEN) as fake:
        yield fake


def test_graphql_tells_what_the_rest_list_does_not(gitlab: FakeGitLab, tmp_path: Path) -> None:
    """GitLab's REST jobs list has no `when`, `needs` nor `scheduled_at`; GraphQL's
    `CiJob` has `needs`, `schedulingType`, `scheduledAt` and `kind`, and
    `Pipeline.jobs(whenExecuted:)` tells each job's `when` (CiJob has no `when`)."""
    gitlab.pipelines[(40, 7)] = [
        {"id": 1, "status": "running", "stage": "build", "tag_list": ["vm"], "name": "a"},
        {"id": 2, "status": "created", "stage": "test", "name": "b", "when": "on_failure"},
        {"id": 3, "status": "created", "stage": "test", "name": "c", "needs": ["a"]},
        {
            "id": 4,
            "status": "scheduled",
            "stage": "deploy",
            "name": "d",
            "when": "delayed",
            "scheduled_at": "2026-12-01T10:05:00.000Z",
        },
    ]
    gitlab.stages[(40, 7)] = ["build", "test", "deploy"]
    reader = GitLabJobs(GitLabSettings(url=gitlab.url, token=TOKEN))
    jobs = {j.id: j for j in reader.list_jobs(40, 7)}
    assert jobs[1] == PipelineJob(1, "running", "build", frozenset({"vm"}), "a", stage_index=0)
    assert (jobs[2].when, jobs[2].needs) == ("on_failure", None)
    assert (jobs[3].when, jobs[3].needs) == ("on_success", ("a",))
    assert (jobs[4].when, jobs[4].scheduled_at, jobs[4].stage_index) == (
        "delayed",
        1796119500.0,
        2,
    )
    # The project's path once (GraphQL names projects by path), then one query a look.
    assert reader.calls.snapshot() == {"rest": 1, "graphql": 1}
    reader.list_jobs(40, 7)
    assert reader.calls.snapshot() == {"rest": 1, "graphql": 2}


def test_without_graphql_the_rest_list_still_serves(gitlab: FakeGitLab, tmp_path: Path) -> None:
    """An older GitLab that refuses the query (GraphQL answers errors, HTTP 200): the
    REST list as before, `when` assumed on_success; GraphQL tried again later."""
    gitlab.pipelines[(40, 7)] = [
        {"id": 1, "status": "running", "stage": "build", "name": "a", "tag_list": []},
        {"id": 2, "status": "created", "stage": "test", "name": "b", "when": "on_failure"},
    ]
    gitlab.graphql_errors = ["Field 'jobs' doesn't accept argument 'whenExecuted'"]
    reader = GitLabJobs(GitLabSettings(url=gitlab.url, token=TOKEN))
    assert [(j.id, j.when) for j in reader.list_jobs(40, 7)] == [
        (1, "on_success"),
        (2, "on_success"),
    ]
    assert "whenExecuted" in reader.graphql_error
    calls = reader.calls.snapshot()
    reader.list_jobs(40, 7)
    assert reader.calls.snapshot()["graphql"] == calls["graphql"]  # not asked again yet


def test_gitlab_counts_a_query_as_its_source_does() -> None:
    """The fake's complexity is GitLab's (app/graphql/types/base_field.rb and
    resolvers/base_resolver.rb): a field 1 plus its selections; a connection its
    selections plus 1, times 1 + 1% per item it may return. By hand: nodes 1+1+1 = 3,
    jobs (3+1) x 2 = 8, pipeline 9, project 10."""
    jobs = "jobs(first: 100) { nodes { id name } }"
    query = f'{{ project(fullPath: "a") {{ pipeline(id: "x") {{ {jobs} }} }} }}'
    assert fake_gitlab_graphql.complexity(query) == 10
    assert fake_gitlab_graphql.complexity(query.replace("100", "50")) == 8  # (3+1) x 1.5


def test_the_lookahead_query_is_within_gitlabs_limit() -> None:
    """GitLab refuses a signed-in user's query over 250 (gitlab_schema.rb): the lookahead's
    pages, the first with its `when:` lists, stay well under it."""
    first, later = jobs_query("group/p", 7, None), jobs_query("group/p", 7, "100")
    assert fake_gitlab_graphql.complexity(first) <= fake_gitlab_graphql.MAX_COMPLEXITY // 2
    assert fake_gitlab_graphql.complexity(later) < fake_gitlab_graphql.complexity(first)


def test_a_query_gitlab_finds_too_complex_is_asked_with_smaller_pages(
    gitlab: FakeGitLab,
) -> None:
    """A GitLab that counts more strictly (another version, an admin's lower limit):
    refused with "Query has complexity of N, which exceeds max complexity of M", the
    query is asked again with half the page, and what GraphQL alone tells (needs) is kept;
    the smaller page is kept for later looks. Too complex even at the smallest page: REST."""
    gitlab.pipelines[(40, 7)] = [
        {"id": i, "status": "created", "stage": "test", "name": f"t{i}", "needs": ["a"]}
        for i in range(1, 31)
    ]
    gitlab.graphql_max_complexity = 55  # the first page fits at 25 jobs, not at 50
    reader = GitLabJobs(GitLabSettings(url=gitlab.url, token=TOKEN))
    jobs = reader.list_jobs(40, 7)
    assert sorted(j.id for j in jobs) == list(range(1, 31))
    assert {j.needs for j in jobs} == {("a",)}  # from GraphQL: REST has no needs
    assert reader.graphql_page == 25
    # 100 and 50 refused; 25 answered, then the second page (5 jobs) at 25.
    assert reader.calls.snapshot() == {"rest": 1, "graphql": 4}
    gitlab.graphql_queries.clear()
    reader.list_jobs(40, 7)
    assert all("first: 25" in query for query in gitlab.graphql_queries)
    assert len(gitlab.graphql_queries) == 2

    gitlab.graphql_max_complexity = 20
    reader = GitLabJobs(GitLabSettings(url=gitlab.url, token=TOKEN))
    jobs = reader.list_jobs(40, 7)
    assert sorted(j.id for j in jobs) == list(range(1, 31))
    assert {j.needs for j in jobs} == {None}  # the REST list
    assert reader.graphql_page == SMALLEST_PAGE
    assert "exceeds max complexity of 20" in reader.graphql_error


def test_no_prediction_is_made_of_nothing() -> None:
    """A created job whose wait is all done is due now (GitLab's list lags behind)."""
    pipelines, lookahead, gitlab, _ = watch()
    gitlab.jobs[7] = [job(1, "success", "build"), job(2, "created", "test")]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    assert lookahead.expected[2].predicted == 100.0
    assert not math.isnan(lookahead.expected[2].predicted)


def test_a_stage_after_a_depend_trigger_is_predicted_after_the_child_pipeline() -> None:
    """A trigger job (a bridge) of `strategy: depend` runs until its child pipeline
    ends; the stage after it waits for that. The child's jobs come like any others."""
    usual = {"integration": 600.0, "report": 60.0}
    pipelines, lookahead, gitlab, _ = watch(usual)
    gitlab.jobs[7] = [
        job(1, "success", "build", name="build"),
        job(2, "running", "child", tags=(), name="trigger", bridge=True, downstream=(40, 8)),
        job(3, "created", "deploy", name="deploy"),
    ]
    gitlab.jobs[8] = [
        job(81, "running", "test", name="integration", started=1000.0),
        job(82, "created", "after", name="report"),
        job(83, "created", "after", tags=("windows",), name="report"),  # not for us
    ]
    pipelines.job_arrived(40, 7, 1, now=1010.0, hit=True)
    pipelines.poll(1010.0)
    assert lookahead.expected[82].predicted == 1600.0  # integration's end
    pipelines.poll(1010.0 + RECHECK)
    assert lookahead.expected[3].predicted == 1660.0  # the child's end: report's
    # Report runs elsewhere: nothing of the child announced, still watched for job 3.
    gitlab.jobs[8][1] = job(82, "running", "after", name="report", started=1000.0)
    pipelines.poll(1010.0 + 2 * RECHECK)
    pipelines.poll(1010.0 + 3 * RECHECK)
    assert 82 not in lookahead.expected
    assert lookahead.expected[3].predicted == 1660.0  # job 83, another runner's, to run


def test_the_child_of_a_trigger_that_does_not_wait_is_watched_too() -> None:
    """Without `strategy: depend` the bridge succeeds once the child is made."""
    pipelines, lookahead, gitlab, _ = watch()
    gitlab.jobs[7] = [
        job(1, "running", "build"),
        job(2, "success", "build", tags=(), name="trigger", bridge=True, downstream=(41, 9)),
    ]
    gitlab.jobs[9] = [job(91, "running", "test"), job(92, "created", "deploy")]
    pipelines.job_arrived(40, 7, 1, now=100.0, hit=True)
    pipelines.poll(100.0)
    assert list(lookahead.expected) == [92]
    assert gitlab.calls == 2


def test_graphql_names_a_bridges_child(gitlab: FakeGitLab, tmp_path: Path) -> None:
    """GraphQL lists bridges among `Pipeline.jobs` (kind BRIDGE), with the child as
    `downstreamPipeline` (global ids: gid://gitlab/Ci::Pipeline/8)."""
    gitlab.pipelines[(40, 7)] = [{"id": 1, "status": "success", "stage": "build", "name": "a"}]
    gitlab.bridges[(40, 7)] = [
        {
            "id": 2,
            "status": "running",
            "stage": "child",
            "name": "trigger",
            "downstream_pipeline": {"id": 8, "project_id": 40, "status": "running"},
        }
    ]
    gitlab.pipelines[(40, 8)] = [{"id": 81, "status": "running", "stage": "test", "name": "t"}]
    reader = GitLabJobs(GitLabSettings(url=gitlab.url, token=TOKEN))
    jobs = {j.id: j for j in reader.list_jobs(40, 7)}
    assert (jobs[2].bridge, jobs[2].downstream, jobs[2].tags) == (True, (40, 8), frozenset())
    assert (jobs[1].bridge, jobs[1].downstream) == (False, None)
