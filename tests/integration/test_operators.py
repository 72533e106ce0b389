"""What an operator does from a shell: doctor, ls, ssh, a stage by hand, and
keeping a failed job's machine for inspection."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from testing.runner import Job
from testing.world import Env


def job_environment(env: Env, job_id: int) -> dict[str, str]:
    """What `eval "$(gitlab-machine-driver job init ...)"` puts in an operator's shell."""
    out = env.driver("job", "init", "--id", str(job_id))
    assert out.returncode == 0, out.stderr
    exported = {}
    for line in out.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            exported[key] = shlex.split(value)[0]
    return exported


def end_job_environment(env: Env, shell: dict[str, str]) -> list[str]:
    """`eval "$(gitlab-machine-driver job end)"`: the names it unsets."""
    out = env.driver("job", "end", env=shell)
    assert out.returncode == 0, out.stderr
    unset = [line for line in out.stdout.splitlines() if line.startswith("unset ")]
    return unset[0].split()[1:]


def test_the_readme_walk_through_of_a_stage_by_hand(env: Env) -> None:
    shell = job_environment(env, 4242)
    assert set(shell) >= {"JOB_RESPONSE_FILE", "BUILD_EXIT_CODE_FILE", "SYSTEM_FAILURE_EXIT_CODE"}
    assert "TMPDIR" not in shell  # the operator's shell keeps its own temp dir
    work = Path(shell["JOB_RESPONSE_FILE"]).parent
    config = env.driver("config", env=shell)
    assert json.loads(config.stdout)["hostname"] == "gmdt-4242"
    prepare = env.driver("prepare", env=shell)
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    assert "Machine gmdt-4242 is ready" in prepare.stdout
    # No job_env from the runner here: run finds the job from the config file.
    stage = env.base / "stage.sh"
    stage.write_text('echo "by hand on $(hostname)"\nexit 7\n')
    run = env.driver("run", str(stage), "build_script", env=shell)
    assert "by hand on gmdt-4242" in run.stdout
    assert run.returncode == int(shell["BUILD_FAILURE_EXIT_CODE"])
    with open(shell["BUILD_EXIT_CODE_FILE"]) as f:
        assert f.read().strip() == "7"
    ssh = env.driver("ssh", "gmdt-4242", "uname", "-s", env=shell)
    assert (ssh.returncode, ssh.stdout.strip()) == (0, "Linux")
    # The admin's log has the stage's outcome and the operator's session.
    logged = [json.loads(line) for line in (env.state_dir / "driver.log").read_text().splitlines()]
    [stage_line] = [e for e in logged if e["event"] == "stage_finished"]
    assert (stage_line["job_id"], stage_line["outcome"], stage_line["exit_code"]) == (
        4242,
        "build_failure",
        7,
    )
    [session] = [e for e in logged if e["event"] == "operator_ssh"]
    assert (session["job_id"], session["machine"], session["command"]) == (
        4242,
        "gmdt-4242",
        "uname -s",
    )
    listed = json.loads(env.driver("ls", "--json").stdout)
    assert [(m["name"], m["job"], m["phase"]) for m in listed] == [("gmdt-4242", 4242, "ready")]
    table = env.driver("ls").stdout
    assert table.splitlines()[0].split() == [
        "NAME",
        "STATE",
        "PHASE",
        "JOB",
        "PROJECT",
        "AGE",
        "ADDRESS",
    ]
    assert env.driver("cleanup", env=shell).returncode == 0
    env.assert_nothing_left()
    assert set(end_job_environment(env, shell)) == set(shell)
    assert not work.exists()  # the /tmp/gmd-job-4242-* dir job init made


def test_doctor_checks_everything_and_does_a_round_trip(env: Env) -> None:
    out = env.driver("doctor", "--create", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for check in ("config file", "ssh client", "state dir", "state dir owner", "GitLab API"):
        assert f"ok    {check}:" in out.stdout
    # The double answers as upstream docker-machine does; no gitlab_runner_binary is set.
    assert "WARN  docker-machine: " in out.stdout and "is upstream docker-machine" in out.stdout
    assert "WARN  gitlab-runner binary: gitlab_runner_binary is not set" in out.stdout
    trip = next(line for line in out.stdout.splitlines() if "machine round trip:" in line)
    machine = trip.split("machine round trip: machine ", 1)[1].split(",", 1)[0]
    assert machine.startswith("gmdt-") and int(machine.removeprefix("gmdt-")) >= 2**62
    assert "prepare" in trip and "in the VM: Linux" in trip
    assert out.stdout.splitlines()[-1] == "everything works; 2 warning(s)"
    env.assert_nothing_left()


def test_doctor_names_a_problem_and_its_fix(env: Env) -> None:
    env.state_dir.mkdir(mode=0o755, exist_ok=True)
    env.state_dir.chmod(0o755)
    out = env.driver("doctor")
    assert out.returncode == 1
    assert "FAIL  state dir" in out.stdout
    assert f"hint: chmod 700 {env.state_dir}" in out.stdout
    env.configure(docker_machine={"program": "no-such-docker-machine"})
    out = env.driver("doctor")
    assert (
        "FAIL  docker-machine: docker-machine program 'no-such-docker-machine' is not found"
        in out.stdout
    )


def test_a_failed_jobs_machine_is_kept_for_inspection_then_swept(env: Env) -> None:
    env.configure(debug={"keep_failed_machines": True, "keep_max_age": 20})
    job = Job(script=["echo broke > /tmp/evidence", "exit 3"])
    result = env.run_job(job)
    assert (result.outcome, result.exit_code) == ("failed", 3), result.describe()
    machine = f"gmdt-{job.id}"
    assert f"keeping machine {machine} of failed job {job.id} for inspection" in result.runner_log
    assert env.machines() == [machine]
    look = env.driver("ssh", str(job.id), "cat", "/tmp/evidence")
    assert look.stdout.strip() == "broke", look.stderr
    assert "kept for inspection after its job failed" in env.driver("sweep").stdout
    state = json.loads((env.state_dir / "jobs" / str(job.id) / "state.json").read_text())
    time.sleep(max(0.0, state["kept_until"] - time.time()) + 0.5)
    swept = env.driver("sweep")
    assert "kept for inspection, and its time is up" in swept.stdout
    env.assert_nothing_left()
    # Every sweeper line about the machine names its job, the removal's own lines too.
    logged = [json.loads(line) for line in (env.state_dir / "driver.log").read_text().splitlines()]
    sweeps = [e for e in logged if e.get("stage") == "sweep" and e.get("machine") == machine]
    assert {e["event"] for e in sweeps} >= {"sweep_verdict", "machine_removed"}
    assert all(e.get("job_id") == job.id for e in sweeps), sweeps


def test_a_succeeding_job_is_never_kept(env: Env) -> None:
    env.configure(debug={"keep_failed_machines": True})
    assert env.run_job(Job()).outcome == "success"
    env.assert_nothing_left()
