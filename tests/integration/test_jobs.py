"""Whole CI jobs through the four entrypoints, as gitlab-runner runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testing import docker_machine as double
from testing.runner import CancelPlan, Job, Variable, output_lines
from testing.world import SYSTEM_FAILURE, Env, driver_argv


def test_a_multi_stage_job_succeeds_in_its_own_machine(env: Env) -> None:
    job = Job(
        script=['echo "build on $(hostname)"', "echo to-std'err' >&2", "uname -s"],
        after_script=['echo "after on $(hostname)"'],
        steps={"release": ["echo releasing"]},
    )
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    machine = f"gmdt-{job.id}"
    lines = result.lines()
    assert f"build on {machine}" in lines
    assert f"after on {machine}" in lines
    assert "releasing" in lines
    assert "Using Custom executor with driver gitlab-machine-driver" in result.job_log
    assert f"Creating machine {machine}" in result.job_log
    assert f"Machine {machine} is ready" in result.job_log
    # Each stream reaches the job log as itself.
    assert "to-stderr" in output_lines(result.stage("build_script").stderr)
    assert "to-stderr" not in output_lines(result.stage("build_script").stdout)
    assert result.stages_run[0] == "prepare_script"
    assert result.stages_run[-1] == "cleanup_file_variables"
    env.assert_nothing_left()


def test_the_script_exit_code_arrives_exactly(env: Env) -> None:
    result = env.run_job(Job(script=["echo before", "exit 42"], after_script=["echo after-ran"]))
    assert result.outcome == "failed", result.describe()
    assert result.exit_code == 42
    assert "after-ran" in result.lines()
    env.assert_nothing_left()


def test_a_script_exiting_255_is_a_build_failure_not_a_lost_vm(env: Env) -> None:
    result = env.run_job(Job(script=["exit 255"]))
    assert (result.outcome, result.exit_code) == ("failed", 255), result.describe()
    env.assert_nothing_left()


def test_a_command_reading_stdin_does_not_eat_the_script(env: Env) -> None:
    result = env.run_job(Job(script=["cat", "read line || echo stdin-is-empty", "echo still-here"]))
    assert result.outcome == "success", result.describe()
    assert "stdin-is-empty" in result.lines()
    assert "still-here" in result.lines()


def test_a_vm_lost_mid_stage_is_a_system_failure(env: Env) -> None:
    job = Job(script=["echo started", "sleep 60", "echo never"])
    run = env.runner().new_run(job)

    def kill_when_started() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(r.stage == "build_script" for r in run._records):
                time.sleep(1.5)
                double.kill_vm(str(env.storage), f"gmdt-{job.id}")
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    result = run.run()
    killer.join()
    assert result.outcome == "system_failure", result.describe()
    assert "lost the connection to machine" in result.job_log
    assert "never" not in result.stage("build_script").stdout
    # Later stages fail at once instead of each waiting out a connect timeout.
    assert result.stage("cleanup_file_variables").seconds < 5
    assert "was lost earlier (during stage build_script)" in result.job_log
    log = (env.state_dir / "driver.log").read_text()
    assert '"event": "failed"' in log and "lost the connection" in log
    env.assert_nothing_left()


LOOP = "while true; do date +%s%N >> /tmp/alive; sleep 0.1; done"
CHECK_STOPPED = (
    "a=$(wc -l < /tmp/alive); sleep 1.5; b=$(wc -l < /tmp/alive); "
    'if [ "$a" = "$b" ]; then echo BUILD-STOPPED; else echo BUILD-STILL-RUNNING; fi'
)


def test_cancel_stops_the_build_in_the_vm(env: Env) -> None:
    job = Job(script=["trap '' TERM", LOOP], after_script=[CHECK_STOPPED])
    result = env.run_job(job, cancel=CancelPlan("build_script", after=3.0))
    assert result.outcome == "cancelled", result.describe()
    assert "BUILD-STOPPED" in result.lines(), result.describe()
    build = result.stage("build_script")
    assert build.signals_sent[:1] == ["SIGTERM"]
    env.assert_nothing_left()


def test_a_sigkilled_run_still_stops_the_build_in_the_vm(env: Env) -> None:
    job = Job()
    prepared = env.runner().prepare_only(job)
    assert prepared.ok, prepared.job_log
    script = env.base / "loop.sh"
    script.write_text(f"{LOOP}\n")
    run = subprocess.Popen(
        [*driver_argv(), "--config", str(env.config_path), "run", str(script), "build_script"],
        env=prepared.env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(3)
    os.killpg(run.pid, signal.SIGKILL)  # the runner's last resort, to the whole group
    run.wait()
    check = env.driver("ssh", str(job.id), CHECK_STOPPED, env=prepared.env)
    assert "BUILD-STOPPED" in check.stdout, check.stdout + check.stderr
    prepared.cleanup()
    env.assert_nothing_left()


def test_create_failing_twice_then_succeeding(env: Env) -> None:
    env.faults(create_fail={"times": 2, "message": "VcpuLimitExceeded: try again later"})
    result = env.run_job(Job(script=["echo made-it"]))
    assert result.outcome == "success", result.describe()
    assert result.prepare_attempts == 1
    assert result.job_log.count("VcpuLimitExceeded") >= 2
    assert "(attempt 3/3)" in result.job_log
    env.assert_nothing_left()


def test_create_failing_always_leaves_no_machine(env: Env) -> None:
    env.configure(create={"attempts": 2})
    env.faults(create_fail={"times": -1, "message": "InsufficientInstanceCapacity"})
    result = env.run_job(Job())
    assert result.outcome == "system_failure", result.describe()
    assert result.prepare_attempts == 3  # the runner's own retries, cleanup in between
    assert "InsufficientInstanceCapacity" in result.job_log
    assert "could not create machine" in result.job_log
    env.assert_nothing_left()


def test_cleanup_twice_and_cleanup_without_prepare(env: Env) -> None:
    job = Job()
    prepared = env.runner().prepare_only(job)
    assert prepared.ok, prepared.job_log
    assert env.machines() == [f"gmdt-{job.id}"]
    first = env.driver("cleanup", env=prepared.env)
    second = env.driver("cleanup", env=prepared.env)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert env.machines() == []
    # A job whose prepare never ran: nothing to remove, and no error.
    other = Job()
    never = env.runner().prepare_only(other)  # creates a machine for another job...
    assert never.ok
    lone = env.driver("cleanup", env={**prepared.env})
    assert lone.returncode == 0
    assert env.machines() == [f"gmdt-{other.id}"]  # ...which this cleanup did not touch
    never.cleanup()
    prepared.cleanup()
    env.assert_nothing_left()


def test_a_spoofed_job_id_cannot_reach_another_jobs_machine(env: Env) -> None:
    victim = Job()
    held = env.runner().prepare_only(victim)
    assert held.ok
    attacker = Job(
        variables=[Variable("CI_JOB_ID", str(victim.id))],
        script=['echo "running on $(hostname)"'],
    )
    result = env.run_job(attacker)
    assert result.outcome == "success", result.describe()
    assert f"running on gmdt-{attacker.id}" in result.lines()
    assert f"gmdt-{victim.id}" not in result.job_log
    # The attacker's cleanup removed only its own machine.
    assert env.machines() == [f"gmdt-{victim.id}"]
    held.cleanup()
    env.assert_nothing_left()


def test_eight_jobs_at_once_on_a_fresh_storage(env: Env) -> None:
    """Also docker-machine's first-create certificate race: the driver serialises it."""
    jobs = [
        Job(script=[f'echo "job {i} on $(hostname)"', "exit $((RANDOM % 1))"]) for i in range(8)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(env.run_job, jobs))
    for job, result in zip(jobs, results, strict=True):
        assert result.outcome == "success", result.describe()
        assert any(line.endswith(f" on gmdt-{job.id}") for line in result.lines())
    env.assert_nothing_left()


def test_a_bad_config_file_is_a_system_failure_naming_the_problem(env: Env) -> None:
    env.config_path.write_text("[machine]\ndriver = 'local'\nname_prefx = 'typo'\n")
    result = env.run_job(Job())
    assert result.outcome == "system_failure", result.describe()
    assert result.execs("config")[0].returncode == SYSTEM_FAILURE
    assert "name_prefx: unknown setting; did you mean 'name_prefix'?" in result.job_log
    assert str(env.config_path) in result.job_log


@pytest.mark.skipif(not Path("/usr/sbin/dockerd").exists(), reason="needs docker.io")
def test_the_vms_own_docker_engine_is_checked_over_tls_and_usable(env: Env) -> None:
    env.configure(docker={"check": True})
    job = Job(script=["docker info --format 'engine of {{.Name}}'"])
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    assert "answers at tcp://" in result.job_log
    assert f"engine of gmdt-{job.id}" in result.job_log
    env.assert_nothing_left()


@pytest.mark.skipif(not Path("/usr/sbin/dockerd").exists(), reason="needs docker.io")
def test_the_engine_is_reached_where_docker_machine_says_not_on_an_assumed_port(
    env: Env,
) -> None:
    """The generic driver (and others) may put the engine on another port than 2376."""
    env.configure(docker={"check": True}, machine={"options": ["local-engine-port=2999"]})
    result = env.run_job(Job(script=["echo engine ok"]))
    assert result.outcome == "success", result.describe()
    assert "answers at tcp://" in result.job_log
    assert ":2999" in result.job_log
    env.assert_nothing_left()


def test_the_runner_hosts_gitlab_runner_is_uploaded_into_a_vm_that_lacks_it(env: Env) -> None:
    binary = env.base / "gitlab-runner"
    binary.write_text("#!/bin/sh\necho 'gitlab-runner fake 17.9.0'\n")
    binary.chmod(0o755)
    env.configure(gitlab_runner_binary=str(binary))
    result = env.run_job(Job(script=["gitlab-runner --version"], artifacts=True))
    assert result.outcome == "success", result.describe()
    assert "Uploaded gitlab-runner into the VM" in result.job_log
    assert "no gitlab-runner binary" not in result.job_log
    # The artifact stage found it, instead of skipping with the runner's warning.
    assert "gitlab-runner fake 17.9.0" in result.lines("build_script")
    assert "Missing gitlab-runner" not in result.job_log
    assert not Path("/usr/local/bin/gitlab-runner").exists()  # the VM's, not the host's
    env.assert_nothing_left()
