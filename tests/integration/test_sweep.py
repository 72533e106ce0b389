"""The sweeper asks GitLab (a local server answering as GitLab does) whether each
machine's job is alive, removes the dead ones, and never guesses on a bad token."""

from __future__ import annotations

from tests.fake_gitlab import FakeGitLab
from tests.runner import Job
from tests.world import Env

TOKEN = "glpat-sweeper-read-api"


def test_the_sweeper_removes_machines_whose_jobs_are_over(env: Env) -> None:
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
    assert f"gmdt-{jobs['unknown'].id}: removing (its job is unknown to GitLab)" in out
    assert env.machines() == [f"gmdt-{jobs['running'].id}"]
    assert env.job_dirs() == [str(jobs["running"].id)]
    held["running"].cleanup()
    env.assert_nothing_left_but_runner_temp()


def test_a_refused_token_stops_the_sweep_without_removing_anything(env: Env) -> None:
    job = Job()
    held = env.runner().prepare_only(job)
    assert held.ok
    with FakeGitLab("the-right-token") as gitlab:
        env.configure(gitlab={"url": gitlab.url, "token": "a-wrong-token"})
        swept = env.driver("sweep")
    assert swept.returncode != 0
    assert "refused the token (401)" in swept.stderr
    assert "read_api" in swept.stderr
    assert env.machines() == [f"gmdt-{job.id}"]
    held.cleanup()
    env.assert_nothing_left()
