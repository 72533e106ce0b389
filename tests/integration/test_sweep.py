"""The sweeper asks GitLab (a local server answering as GitLab does) whether each
machine's job is alive. Only a finished status is proof: a 404 (a job the token
cannot see, not only a gone one) or a refused token keeps the machine, and a run
of such answers is reported as the configuration problem it is."""

from __future__ import annotations

from testing.fake_gitlab import FakeGitLab
from testing.runner import Job
from testing.world import Env

TOKEN = "glpat-sweeper-read-api"


def test_only_a_finished_job_at_gitlab_lets_the_sweeper_remove_its_machine(env: Env) -> None:
    jobs = {"running": Job(), "success": Job(), "canceled": Job(), "unknown": Job()}
    held = {kind: env.runner().prepare_only(job) for kind, job in jobs.items()}
    assert all(p.ok for p in held.values())
    token_file = env.base / "gitlab-token"
    token_file.write_text(TOKEN + "\n")
    with FakeGitLab(TOKEN) as gitlab:
        for kind in ("running", "success", "canceled"):
            gitlab.jobs[(jobs[kind].project_id, jobs[kind].id)] = kind
        env.configure(gitlab={"url": gitlab.url, "token_file": str(token_file)})
        dry = env.driver("sweep", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert len(env.machines()) == 4
        swept = env.driver("sweep")
    assert swept.returncode == 0, swept.stderr
    out = swept.stdout
    assert f"gmdt-{jobs['running'].id}: keeping (its job is running)" in out
    assert f"gmdt-{jobs['success'].id}: removing (its job is success)" in out
    assert f"gmdt-{jobs['canceled'].id}: removing (its job is canceled)" in out
    # A 404 is no proof: the job may be in a project the token cannot see.
    assert f"gmdt-{jobs['unknown'].id}: keeping (its job may still be running (unknown" in out
    assert "404" in out
    kept = sorted(f"gmdt-{jobs[k].id}" for k in ("running", "unknown"))
    assert env.machines() == kept
    assert env.job_dirs() == sorted(str(jobs[k].id) for k in ("running", "unknown"))
    held["running"].cleanup()
    held["unknown"].cleanup()
    env.assert_nothing_left_but_runner_temp()


def test_a_run_of_404s_is_reported_as_a_configuration_problem_and_removes_nothing(
    env: Env,
) -> None:
    jobs = [Job() for _ in range(3)]
    held = [env.runner().prepare_only(job) for job in jobs]
    assert all(p.ok for p in held)
    with FakeGitLab(TOKEN) as gitlab:  # knows none of them: a proxy rewriting the URL, say
        env.configure(gitlab={"url": gitlab.url, "token": TOKEN})
        swept = env.driver("sweep")
    assert swept.returncode != 0
    assert "GitLab could not tell the state of 3 machines' jobs" in swept.stderr
    assert "read_api" in swept.stderr
    assert len(env.machines()) == 3
    for prepared in held:
        prepared.cleanup()
    env.assert_nothing_left()


def test_a_refused_token_removes_nothing_and_says_so(env: Env) -> None:
    job = Job()
    held = env.runner().prepare_only(job)
    assert held.ok
    with FakeGitLab("the-right-token") as gitlab:
        env.configure(gitlab={"url": gitlab.url, "token": "a-wrong-token"})
        swept = env.driver("sweep")
    assert swept.returncode != 0
    assert "refused the token: 401" in swept.stderr
    assert "read_api" in swept.stderr
    assert env.machines() == [f"gmdt-{job.id}"]
    held.cleanup()
    env.assert_nothing_left()
