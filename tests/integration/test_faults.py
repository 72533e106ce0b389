"""The fault matrix: every way a job's machine can go wrong, through the runner
emulation. Each test checks the job's result, its exit code, what the job log
says, and that nothing is left behind."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

from testing import docker_machine as double
from testing.runner import CancelPlan, Job, Variable
from testing.world import SYSTEM_FAILURE, Env, driver_argv


def create_calls(env: Env) -> int:
    """Creates of machines (not the driver's one-off `none` create that makes the certs)."""
    log = env.storage / "calls.log"
    lines = log.read_text().splitlines()
    return sum(" create " in f" {line} " and "--driver none" not in line for line in lines)


def run_script(
    env: Env, prepared_env: dict[str, str], text: str
) -> subprocess.CompletedProcess[str]:
    script = env.base / f"stage-{time.monotonic_ns()}.sh"
    script.write_text(text)
    return subprocess.run(
        [*driver_argv(), "--config", str(env.config_path), "run", str(script), "build_script"],
        env=prepared_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_configuration_error_fails_at_once_without_burning_retries(env: Env) -> None:
    env.configure(machine={"options": ["amazonec2-region=eu-west-1"]})  # not this driver's
    result = env.run_job(Job())
    assert result.outcome == "system_failure", result.describe()
    assert "flag provided but not defined" in result.job_log
    assert "retrying cannot help" in result.job_log
    assert create_calls(env) == 3  # one per runner attempt, not 3 x create.attempts
    env.assert_nothing_left()


def test_create_hanging_past_its_timeout_is_killed_and_retried(env: Env) -> None:
    env.configure(create={"timeout": 4})
    env.faults(create_hang={"times": 1})
    result = env.run_job(Job(script=["echo second-try-worked"]))
    assert result.outcome == "success", result.describe()
    assert "did not finish within 4s and was stopped" in result.job_log
    assert "second-try-worked" in result.job_log
    env.assert_nothing_left()


def test_rate_limited_creates_back_off_and_succeed(env: Env) -> None:
    env.faults(create_rate_limit={"times": 2})
    result = env.run_job(Job())
    assert result.outcome == "success", result.describe()
    assert result.job_log.count("(rate limited)") == 2
    assert "RequestLimitExceeded" in result.job_log
    env.assert_nothing_left()


def test_an_error_entry_left_by_a_failed_create_is_removed(env: Env) -> None:
    env.faults(create_fail={"times": 1, "leave": "vm", "message": "provisioning broke"})
    result = env.run_job(Job())
    assert result.outcome == "success", result.describe()
    assert "provisioning broke" in result.job_log
    env.assert_nothing_left()


def test_ssh_that_never_becomes_ready_is_a_bounded_system_failure(env: Env) -> None:
    env.configure(ssh={"ready_timeout": 4})
    env.faults(ssh_never_ready={"times": 3})
    start = time.monotonic()
    result = env.run_job(Job())
    assert result.outcome == "system_failure", result.describe()
    assert "did not become ready within 4s" in result.job_log
    assert "Waiting for SSH on root@" in result.job_log
    assert time.monotonic() - start < 90
    env.assert_nothing_left()


def test_a_changed_host_key_is_refused_and_named(env: Env) -> None:
    job = Job()
    prepared = env.runner().prepare_only(job)
    assert prepared.ok, prepared.job_log
    assert run_script(env, prepared.env, "echo first\n").returncode == 0
    double.rotate_host_key(str(env.storage), f"gmdt-{job.id}")
    subprocess.run(
        [
            "ssh",
            "-F",
            f"{prepared.env['GITLAB_MACHINE_DRIVER_JOB_DIR']}/ssh_config",
            "-O",
            "exit",
            "machine",
        ],
        capture_output=True,
    )
    second = run_script(env, prepared.env, "echo second\n")
    assert second.returncode == SYSTEM_FAILURE, second.stderr
    assert "different SSH host key" in second.stderr
    assert "may be an attack" in second.stderr
    assert "second" not in second.stdout
    prepared.cleanup()
    env.assert_nothing_left()


def test_a_master_connection_lost_between_stages_is_reopened(env: Env) -> None:
    job = Job()
    prepared = env.runner().prepare_only(job)
    assert prepared.ok, prepared.job_log
    ssh_config = f"{prepared.env['GITLAB_MACHINE_DRIVER_JOB_DIR']}/ssh_config"
    assert run_script(env, prepared.env, "echo one\n").stdout == "one\n"
    subprocess.run(["ssh", "-F", ssh_config, "-O", "exit", "machine"], capture_output=True)
    again = run_script(env, prepared.env, "echo two\n")
    assert (again.returncode, again.stdout) == (0, "two\n"), again.stderr
    prepared.cleanup()
    env.assert_nothing_left()


def test_sshd_dying_between_stages_is_a_system_failure(env: Env) -> None:
    job = Job()
    prepared = env.runner().prepare_only(job)
    assert prepared.ok
    double.kill_sshd(str(env.storage), f"gmdt-{job.id}")
    result = run_script(env, prepared.env, "echo unreachable\n")
    assert result.returncode == SYSTEM_FAILURE, result.stderr
    assert "lost the connection to machine" in result.stderr
    prepared.cleanup()
    env.assert_nothing_left()


def test_cleanup_while_a_cancelled_run_is_still_alive(env: Env) -> None:
    env.configure(run={"kill_grace": 20})
    job = Job(script=["trap '' TERM", "sleep 120"])
    runner = env.runner(cancel_wait=1.0, graceful_kill_timeout=30.0)
    result = runner.run_job(job, cancel=CancelPlan("build_script", after=2.0, mode="abort"))
    assert result.outcome == "cancelled", result.describe()
    assert result.cleanup_overlapped_run
    env.assert_nothing_left()


def test_cleanup_whose_rm_always_fails_warns_of_an_orphan(env: Env) -> None:
    env.faults(rm_fail={"times": -1})
    job = Job()
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    machine = f"gmdt-{job.id}"
    assert f"machine {machine} could not be removed cleanly" in result.runner_log
    assert "MAY BE ORPHANED" in result.runner_log
    assert machine in (env.storage / "orphans.log").read_text()
    env.assert_nothing_left()  # the entry is dropped; the double tore the VM down


def test_a_corrupt_state_file_is_named_and_cleanup_still_removes_the_machine(env: Env) -> None:
    job = Job()
    prepared = env.runner().prepare_only(job)
    assert prepared.ok
    state = Path(prepared.env["GITLAB_MACHINE_DRIVER_JOB_DIR"]) / "state.json"
    state.write_text("{not json")
    result = run_script(env, prepared.env, "echo hi\n")
    assert result.returncode == SYSTEM_FAILURE
    assert f"the job's state file {state} is corrupt" in result.stderr
    cleanup = prepared.cleanup()
    assert cleanup is not None and cleanup.returncode == 0, cleanup
    assert "is corrupt" in cleanup.stderr
    env.assert_nothing_left()


def test_a_missing_state_dir_is_named_and_cleanup_still_removes_the_machine(env: Env) -> None:
    job = Job()
    prepared = env.runner().prepare_only(job)
    assert prepared.ok
    job_dir = Path(prepared.env["GITLAB_MACHINE_DRIVER_JOB_DIR"])
    subprocess.run(["ssh", "-F", str(job_dir / "ssh_config"), "-O", "exit", "machine"])
    subprocess.run(["rm", "-rf", str(job_dir)], check=True)
    result = run_script(env, prepared.env, "echo hi\n")
    assert result.returncode == SYSTEM_FAILURE
    assert "prepare did not finish, or cleanup already ran" in result.stderr
    cleanup = prepared.cleanup()
    assert cleanup is not None and cleanup.returncode == 0, cleanup
    env.assert_nothing_left()


HOSTILE = {
    "QUOTES": "it's \"quoted\" `and` 'more'",
    "SUBSHELL": "$(touch /tmp/gmd-pwned) ; rm -rf / ; `id`",
    "NEWLINES": "line one\nline two\n\nline four",
    "UNICODE": "grüße 🚀 ünïcödé \u202e",
    "BACKSLASHES": "\\n \\t \\\\ \\$HOME",
    "BIG": "0123456789abcdef" * 6400,  # 100 KiB; Linux caps one env string at 128 KiB
}


def test_hostile_variables_reach_the_job_exactly_and_nothing_interprets_them(env: Env) -> None:
    Path("/tmp/gmd-pwned").unlink(missing_ok=True)
    variables = [Variable(key, value) for key, value in HOSTILE.items()]
    variables.append(Variable("weird-name.with dots", "odd key"))
    lines = [f'printf %s "${key}" | sha256sum' for key in HOSTILE]
    result = env.run_job(Job(variables=variables, script=lines))
    assert result.outcome == "success", result.describe()
    for value in HOSTILE.values():
        assert hashlib.sha256(value.encode()).hexdigest() in result.job_log
    assert not Path("/tmp/gmd-pwned").exists()
    log = (env.state_dir / "driver.log").read_text()
    for value in HOSTILE.values():
        assert value not in log
    env.assert_nothing_left()


def test_a_one_megabyte_script_arrives_intact(env: Env) -> None:
    blob = "x" * (1 << 20)
    job = Job(script=[f"BLOB='{blob}'", 'printf %s "$BLOB" | sha256sum'])
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    assert hashlib.sha256(blob.encode()).hexdigest() in result.job_log
