"""The pool's lookahead end to end: a build job runs, GitLab lists the pipeline's
next stage as waiting, the pool service has machines ready for it, and the
next stage's jobs start on them."""

from __future__ import annotations

import json
import socket
import urllib.request

from testing.fake_gitlab import FakeGitLab
from testing.runner import Job
from testing.world import Env, stop_pool, wait_for

TOKEN = "glpat-lookahead-test"
POOL = {
    "policy": "demand",
    "check_interval": 0.5,
    "health_interval": 600,
    "idle_time": 600,
    "drain_on_stop": True,
}


# The world the env fixture (tests/integration/conftest.py) makes for each test.
WORLD = {"pool": POOL}


def test_the_next_stage_of_a_pipeline_finds_machines_made_for_it(env: Env) -> None:
    build = Job(name="build", stage="build", script=["echo built"])
    tests = [Job(name=f"test {n}", stage="test", script=["echo tested"]) for n in range(3)]
    token_file = env.base / "gitlab-token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    with FakeGitLab(TOKEN) as gitlab:
        gitlab.finished[build.project_id] = []
        gitlab.pipelines[(build.project_id, build.pipeline_id)] = [
            {
                "id": build.id,
                "status": "running",
                "stage": "build",
                "tag_list": [],
                "name": "build",
            },
            *(
                {"id": job.id, "status": "created", "stage": "test", "tag_list": [], "name": "t"}
                for job in tests
            ),
        ]
        env.configure(gitlab={"url": gitlab.url, "token_file": str(token_file)})
        service = env.start_pool()
        try:
            # The pool knows no job yet: the build job creates its own machine.
            result = env.run_job(build)
            assert result.outcome == "success", result.describe()
            assert "No ready machine in the warm pool" in result.job_log
            # GitLab says three test jobs wait for the build stage: three machines come.
            wait_for(lambda: int(env.pool_status()["counts"]["idle"]) >= 3, timeout=90)
            assert env.pool_status()["service"]["jobs_announced"] == 3
            listed = gitlab.pipelines[(build.project_id, build.pipeline_id)]
            listed[0]["status"] = "success"
            for job in tests:
                # GitLab lists a job it handed to the runner as running (and late, at times).
                listed[1 + tests.index(job)]["status"] = "running"
                result = env.run_job(job)
                assert result.outcome == "success", result.describe()
                assert "from the warm pool" in result.job_log
            wait_for(lambda: env.pool_status()["service"]["jobs_announced"] == 0)
            # Through GraphQL, which tells `when:` and `needs:` (the REST list does not).
            pipeline = f"Ci::Pipeline/{build.pipeline_id}"
            asked = [q for q in gitlab.graphql_queries if pipeline in q]
            assert asked, gitlab.requests
            # `pool status` counts the requests (and they are all GitLab saw).
            calls = env.pool_status()["service"]["gitlab_api_calls"]
            assert 1 <= calls["graphql"] <= len(gitlab.graphql_queries)  # (a look may be on)
        finally:
            print(stop_pool(service))  # shown if the test fails
    env.assert_nothing_left()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pipeline_event(port: int, secret: str, project_id: int, pipeline_id: int) -> int:
    """A group webhook's Pipeline Hook, as GitLab sends it (its docs' "Pipeline events")."""
    body = {
        "object_kind": "pipeline",
        "object_attributes": {"id": pipeline_id, "status": "running"},
        "project": {"id": project_id},
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/",
        data=json.dumps(body).encode(),
        headers={"X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": secret},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def test_a_pipeline_heard_of_whose_stage_ran_elsewhere_finds_machines_here(env: Env) -> None:
    """Two runner managers: another ran the build stage of pipeline 5151, so no job of it
    came here. The group webhook's pipeline event makes this service watch it, and the
    test stage's jobs, which this runner can take, find machines made for them."""
    ours = Job(name="build", stage="build", script=["echo built"])
    theirs = 5151
    tests = [
        Job(name=f"test {n}", stage="test", pipeline_id=theirs, script=["echo tested"])
        for n in range(2)
    ]
    token_file = env.base / "gitlab-token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    secret, secret_file = "hook-secret-0123456789", env.base / "webhook-secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    port = free_port()
    with FakeGitLab(TOKEN) as gitlab:
        gitlab.finished[ours.project_id] = []
        gitlab.pipelines[(ours.project_id, ours.pipeline_id)] = [
            {"id": ours.id, "status": "running", "stage": "build", "tag_list": [], "name": "build"}
        ]
        gitlab.pipelines[(ours.project_id, theirs)] = [
            # Running on the other runner manager.
            {"id": 990001, "status": "running", "stage": "build", "tag_list": [], "name": "build"},
            *(
                {"id": job.id, "status": "created", "stage": "test", "tag_list": [], "name": "t"}
                for job in tests
            ),
        ]
        env.configure(
            gitlab={
                "url": gitlab.url,
                "token_file": str(token_file),
                "webhook_listen": f"127.0.0.1:{port}",
                "webhook_secret_file": str(secret_file),
            }
        )
        service = env.start_pool()
        try:
            # A job of ours: the service learns the tags this runner takes (none).
            result = env.run_job(ours)
            assert result.outcome == "success", result.describe()
            wait_for(lambda: any(str(ours.pipeline_id) in q for q in gitlab.graphql_queries))
            wait_for(lambda: listening(port))
            assert pipeline_event(port, secret, ours.project_id, theirs) == 200
            wait_for(lambda: env.pool_status()["service"]["jobs_announced"] == 2, timeout=90)
            wait_for(lambda: int(env.pool_status()["counts"]["idle"]) >= 2, timeout=90)
            for job in tests:
                result = env.run_job(job)
                assert result.outcome == "success", result.describe()
                assert "from the warm pool" in result.job_log
        finally:
            print(stop_pool(service))  # shown if the test fails
    env.assert_nothing_left()


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
