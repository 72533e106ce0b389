"""The pool's lookahead end to end: a build job runs, GitLab lists the pipeline's
next stage as waiting, the pool service has machines ready for it, and the
next stage's jobs start on them."""

from __future__ import annotations

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
