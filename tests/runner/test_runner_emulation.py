"""Tests of the runner emulation itself, against a tiny local fake driver.

The fake driver (written to tmp_path) runs each stage script with local bash,
logs every call with what it saw (argv, environment, script file mode) and can
be told to misbehave through FAKE_* variables in the runner's environment.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testing.runner import (
    CancelPlan,
    CustomExecutorConfig,
    Job,
    JobResult,
    RunnerEmulator,
    Variable,
    shell_quote,
)

BUILD_FAILURE = 33
SYSTEM_FAILURE = 34

FAKE_DRIVER = r"""
import json, os, signal, subprocess, sys, time

env = os.environ
BUILD, SYSTEM = int(env["BUILD_FAILURE_EXIT_CODE"]), int(env["SYSTEM_FAILURE_EXIT_CODE"])
JOB_ID = json.load(open(env["JOB_RESPONSE_FILE"]))["id"]  # trusted, unlike CUSTOM_ENV_*
STATE = env["FAKE_STATE"]
WATCHED = ["TMPDIR", "BUILD_FAILURE_EXIT_CODE", "SYSTEM_FAILURE_EXIT_CODE", "BUILD_EXIT_CODE_FILE",
           "JOB_RESPONSE_FILE", "FAKE_JOB_ENV", "CUSTOM_ENV_CI_JOB_ID", "CUSTOM_ENV_CI_JOB_TOKEN",
           "CUSTOM_ENV_CI_PROJECT_DIR", "CUSTOM_ENV_HOSTILE", "CUSTOM_ENV_CI_JOB_SERVICES"]

def log(entry):
    entry.update(pid=os.getpid(), pgid=os.getpgrp(), cwd=os.getcwd(), stdin=sys.stdin.read(),
                 env={**{k: env.get(k) for k in WATCHED},
                      **{k: v for k, v in env.items() if k.startswith("CUSTOM_ENV_")}},
                 response_mode=os.stat(env["JOB_RESPONSE_FILE"]).st_mode & 0o7777,
                 tmpdir_mode=os.stat(env["TMPDIR"]).st_mode & 0o7777)
    with open(os.path.join(STATE, f"calls-{JOB_ID}.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")

def count(name):
    path = os.path.join(STATE, f"count-{name}-{JOB_ID}")
    n = int(open(path).read()) + 1 if os.path.exists(path) else 1
    open(path, "w").write(str(n))
    return n

def main():
    cmd = sys.argv[1]
    entry = {"cmd": cmd, "argv": sys.argv[1:]}
    if cmd == "config":
        log(entry)
        sys.stderr.write("config: a note on stderr\n")
        if env.get("FAKE_CONFIG") == "invalid":
            print("this is not json")
            return 0
        print(json.dumps({
            "builds_dir": os.path.join(STATE, "builds", str(JOB_ID)),
            "cache_dir": os.path.join(STATE, "cache"),
            "hostname": "fake-host",
            "driver": {"name": "fake", "version": "0.1"},
            "job_env": {"FAKE_JOB_ENV": "from-config"},
        }))
        return 0
    if cmd == "prepare":
        n = count("prepare")
        log(entry)
        print("prepare: creating VM")
        print("prepare: a note on stderr", file=sys.stderr)
        if env.get("FAKE_LEAK_PIPE") == "prepare":
            subprocess.Popen(["sleep", "30"])  # inherits our stdout/stderr
        if env.get("FAKE_PREPARE_HANG"):
            time.sleep(60)
        if n <= int(env.get("FAKE_PREPARE_SYSTEM_FAILS", "0")):
            return SYSTEM
        if env.get("FAKE_PREPARE_BUILD_FAIL"):
            return BUILD
        return 0
    if cmd == "run":
        script, stage = sys.argv[-2], sys.argv[-1]
        st = os.stat(script)
        entry.update(stage=stage, script=script, mode=st.st_mode & 0o7777,
                     text=open(script, encoding="utf-8", errors="surrogateescape").read())
        log(entry)
        if stage == env.get("FAKE_SYSTEM_FAIL_STAGE"):
            return SYSTEM
        if stage == env.get("FAKE_WEIRD_EXIT_STAGE"):
            return 7
        if stage == env.get("FAKE_SELF_KILL_STAGE"):
            os.kill(os.getpid(), signal.SIGKILL)
        if env.get("FAKE_IGNORE_TERM"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by bash and its children
        rc = subprocess.run(["bash", script]).returncode
        if rc != 0:
            with open(env["BUILD_EXIT_CODE_FILE"], "w") as f:
                f.write(env.get("FAKE_EXIT_CODE_TEXT", str(rc)) + "\n")
            return BUILD
        return 0
    if cmd == "cleanup":
        log(entry)
        print("cleanup: removing VM")
        print("cleanup: a note on stderr", file=sys.stderr)
        return int(env.get("FAKE_CLEANUP_EXIT", "0"))
    return SYSTEM

sys.exit(main())
"""


@dataclass
class FakeDriver:
    path: Path
    state: Path

    def config(self, **overrides: Any) -> CustomExecutorConfig:
        def argv(cmd: str) -> list[str]:
            return [str(self.path), cmd]

        values: dict[str, Any] = dict(
            run_exec=sys.executable,
            run_args=[*argv("run"), "--extra-run-arg"],
            config_exec=sys.executable,
            config_args=argv("config"),
            prepare_exec=sys.executable,
            prepare_args=argv("prepare"),
            cleanup_exec=sys.executable,
            cleanup_args=argv("cleanup"),
            graceful_kill_timeout=3.0,
            force_kill_timeout=3.0,
            build_failure_exit_code=BUILD_FAILURE,
            system_failure_exit_code=SYSTEM_FAILURE,
            preparation_retry_delay=0.1,
            pipe_close_timeout=2.0,
        )
        values.update(overrides)
        return CustomExecutorConfig(**values)

    def emulator(self, env: dict[str, str] | None = None, **overrides: Any) -> RunnerEmulator:
        return RunnerEmulator(self.config(**overrides), env=self.env(**(env or {})))

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "FAKE_STATE": str(self.state), **extra}

    def calls(self, job: Job, cmd: str | None = None) -> list[dict[str, Any]]:
        path = self.state / f"calls-{job.id}.jsonl"
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        return [e for e in entries if cmd is None or e["cmd"] == cmd]

    def project_dir(self, job: Job) -> Path:
        return self.state / "builds" / str(job.id) / job.namespace / job.project_name


@pytest.fixture
def driver(tmp_path: Path) -> FakeDriver:
    path = tmp_path / "fake_driver.py"
    path.write_text(FAKE_DRIVER)
    state = tmp_path / "state"
    state.mkdir()
    return FakeDriver(path, state)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------ the happy path


def test_successful_job_goes_through_all_entrypoints_in_order(driver: FakeDriver) -> None:
    job = Job(script=["echo building", "echo to-stderr >&2"], after_script=["echo after"])
    result = driver.emulator().run_job(job)

    assert result.outcome == "success", result.describe()
    assert [r.name for r in result.records] == [
        "config",
        "prepare",
        "run:prepare_script",
        "run:get_sources",
        "run:build_script",
        "run:after_script",
        "run:cleanup_file_variables",
        "cleanup",
    ]
    log = result.job_log
    assert "Using Custom executor with driver fake 0.1..." in log
    assert "Running on " in log and " via fake-host..." in log
    assert 'Executing "step_script" stage of the job script' in log
    assert "$ echo building" in log and "building\n" in log and "after\n" in log
    assert log.rstrip().endswith("Job succeeded")
    # config's stderr reaches the job log, its stdout (the JSON) does not.
    assert "config: a note on stderr" in log and '"builds_dir"' not in log
    assert "prepare: creating VM" in log and "prepare: a note on stderr" in log
    # cleanup talks to the runner's log only.
    assert "cleanup: removing VM" not in log and "cleanup: removing VM" in result.runner_log
    assert "cleanup: a note on stderr" in result.runner_log
    assert result.temp_dir_removed and result.prepare_attempts == 1


def test_environment_and_argv_are_the_runners(driver: FakeDriver) -> None:
    job = Job(services=["postgres:16"])
    result = driver.emulator().run_job(job)
    assert result.succeeded, result.describe()

    calls = driver.calls(job)
    tmp = result.temp_dirs[0]
    for call in calls:
        env = call["env"]
        assert env["TMPDIR"] == tmp == call["cwd"]
        assert env["BUILD_FAILURE_EXIT_CODE"] == str(BUILD_FAILURE)
        assert env["SYSTEM_FAILURE_EXIT_CODE"] == str(SYSTEM_FAILURE)
        assert env["BUILD_EXIT_CODE_FILE"] == f"{tmp}/build_exit_code"
        assert env["JOB_RESPONSE_FILE"] == f"{tmp}/response.json"
        assert env["CUSTOM_ENV_CI_JOB_ID"] == str(job.id)
        assert env["CUSTOM_ENV_CI_JOB_TOKEN"] == job.token
        assert json.loads(env["CUSTOM_ENV_CI_JOB_SERVICES"])[0]["name"] == "postgres:16"
        assert call["stdin"] == ""
        assert call["response_mode"] == 0o600 and call["tmpdir_mode"] == 0o700
        assert call["pgid"] == call["pid"], "each executable leads its own process group"
        # job_env reaches every executable after config, never config itself.
        assert env["FAKE_JOB_ENV"] == (None if call["cmd"] == "config" else "from-config")
    run = driver.calls(job, "run")[0]
    assert run["argv"][:2] == ["run", "--extra-run-arg"], "run_args come before script and stage"
    assert run["argv"][3] == "prepare_script"
    # The project dir follows the builds_dir that config_exec returned.
    assert driver.calls(job, "run")[-1]["env"]["CUSTOM_ENV_CI_PROJECT_DIR"] == str(
        driver.project_dir(job)
    )


def test_response_file_is_the_job_payload(driver: FakeDriver) -> None:
    job = Job(variables=[Variable("MINE", "x", masked=True)])
    emulator = driver.emulator()
    prepared = emulator.prepare_only(job)
    assert prepared.ok and prepared.temp_dir is not None
    response = Path(prepared.temp_dir) / "response.json"
    assert stat.S_IMODE(response.stat().st_mode) == 0o600
    payload = json.loads(response.read_text())
    assert payload["id"] == job.id and payload["token"] == job.token
    assert payload["job_info"]["project_id"] == job.project_id
    assert payload["steps"][0] == {
        "name": "script",
        "script": job.script,
        "timeout": 3600,
        "when": "on_success",
        "allow_failure": False,
    }
    variables = {v["key"]: v for v in payload["variables"]}
    assert variables["CI_JOB_TOKEN"]["masked"] is True
    assert variables["MINE"] == {
        "key": "MINE",
        "value": "x",
        "public": True,
        "masked": True,
        "file": False,
        "raw": False,
    }
    for key in ("CI_JOB_ID", "CI_PROJECT_ID", "CI_PIPELINE_ID", "CI_SERVER_URL", "GITLAB_CI", "CI"):
        assert key in variables
    assert prepared.cleanup() is not None
    assert not Path(prepared.temp_dir).exists()


# What gitlab-runner adds itself (its version, `[[runners]] environment`, the project
# dir, ...) reaches a driver only as CUSTOM_ENV_*: the response file is the job exactly
# as GitLab sent it (shared/custom-executor.md, "What is in JOB_RESPONSE_FILE";
# executors/custom/custom.go createJobResponseFile, common/build.go GetAllVariables).
RUNNER_ADDED = (
    "CI_RUNNER_VERSION",
    "CI_RUNNER_REVISION",
    "CI_RUNNER_EXECUTABLE_ARCH",
    "CI_RUNNER_SHORT_TOKEN",
    "CI_PROJECT_DIR",
    "CI_BUILDS_DIR",
    "CI_CONCURRENT_ID",
    "CI_CONCURRENT_PROJECT_ID",
    "CI_SERVER",
    "CI_SHARED_ENVIRONMENT",
    "CI_JOB_IMAGE",
    "FF_NETWORK_PER_BUILD",
    "FROM_RUNNER_ENVIRONMENT",
)


def test_runner_added_variables_reach_the_environment_never_the_payload(
    driver: FakeDriver,
) -> None:
    job = Job(image="ruby:3.2", variables=[Variable("FROM_JOB", "job")])
    emulator = driver.emulator(environment=["FROM_RUNNER_ENVIRONMENT=admin", "FROM_JOB=runner"])
    prepared = emulator.prepare_only(job)
    assert prepared.ok and prepared.temp_dir is not None
    payload = json.loads((Path(prepared.temp_dir) / "response.json").read_text())
    in_payload = {v["key"] for v in payload["variables"]}
    assert not in_payload & set(RUNNER_ADDED), "the runner writes GitLab's payload unchanged"
    assert {"CI_JOB_ID", "CI_RUNNER_ID", "CI_RUNNER_DESCRIPTION", "FROM_JOB"} <= in_payload
    prepare = driver.calls(job, "prepare")[0]["env"]
    for key in RUNNER_ADDED:
        assert prepare.get("CUSTOM_ENV_" + key), key
    assert prepare["CUSTOM_ENV_CI_RUNNER_VERSION"] == "17.9.0"
    assert prepare["CUSTOM_ENV_FROM_RUNNER_ENVIRONMENT"] == "admin"
    assert prepare["CUSTOM_ENV_CI_JOB_IMAGE"] == "ruby:3.2"
    # A job variable wins over `[[runners]] environment` of the same name.
    assert prepare["CUSTOM_ENV_FROM_JOB"] == "job"
    assert prepared.cleanup() is not None


def test_stdout_and_stderr_are_kept_apart_per_stage(driver: FakeDriver) -> None:
    job = Job(script=["echo on-out", "echo on-err >&2"])
    result = driver.emulator().run_job(job)
    record = result.stage("build_script")
    assert "on-out\n" in record.stdout.splitlines(keepends=True)
    assert record.stderr.splitlines() == ["on-err"]
    assert record.seconds > 0 and record.returncode == 0 and record.ended == "exited"


def test_script_file_is_new_0700_and_holds_the_exports(driver: FakeDriver) -> None:
    job = Job(after_script=["true"])
    result = driver.emulator().run_job(job)
    runs = driver.calls(job, "run")
    paths = [r["script"] for r in runs]
    assert len(set(paths)) == len(paths) == len(result.stages_run)
    for run in runs:
        assert run["mode"] == 0o700
        assert re.fullmatch(re.escape(result.temp_dirs[0]) + r"/script\d+/script", run["script"])
        assert run["text"].startswith("#!/usr/bin/env bash\ntrap 'exit 1' TERM\n")
        assert "export CI_JOB_TOKEN=" + job.token in run["text"], "every script holds secrets"
    assert not any(os.path.exists(p) for p in paths), "the temp dir goes with the job"


# ------------------------------------------------------------- failures


def test_build_failure_reports_the_scripts_own_exit_code(driver: FakeDriver) -> None:
    job = Job(
        script=["echo before", "exit 42", "echo never"],
        steps={"release": ["echo release"]},
        after_script=["echo after-ran"],
        artifacts=True,
        cache=True,
    )
    result = driver.emulator().run_job(job)

    assert result.outcome == "failed", result.describe()
    assert result.exit_code == 42
    assert "ERROR: Job failed: exit code 42" in result.job_log
    assert "never" not in result.stage("build_script").stdout
    assert result.stages_run == [
        "prepare_script",
        "get_sources",
        "restore_cache",
        "build_script",
        "after_script",
        "archive_cache_on_failure",
        "upload_artifacts_on_failure",
        "cleanup_file_variables",
    ]
    assert "after-ran" in result.job_log
    assert result.execs("cleanup") and result.temp_dir_removed


def test_allowed_failure_is_a_warning(driver: FakeDriver) -> None:
    result = driver.emulator().run_job(Job(script=["exit 3"], allow_failure=[3]))
    assert result.outcome == "failed" and result.exit_code == 3 and result.allowed_failure
    assert "WARNING: Job failed: exit code 3" in result.job_log


def test_non_integer_exit_code_file_is_a_system_failure(driver: FakeDriver) -> None:
    emulator = driver.emulator(env={"FAKE_EXIT_CODE_TEXT": "forty-two"})
    result = emulator.run_job(Job(script=["exit 42"]))
    assert result.outcome == "system_failure" and result.exit_code is None
    assert "ERROR: Job failed (system failure)" in result.job_log


@pytest.mark.parametrize(
    ("variable", "needle"),
    [
        ("FAKE_SYSTEM_FAIL_STAGE", f"exit status {SYSTEM_FAILURE}"),
        ("FAKE_WEIRD_EXIT_STAGE", "unknown Custom executor executable exit code 7"),
        (
            "FAKE_SELF_KILL_STAGE",
            "exit code -1; executable execution terminated with: signal: SIGKILL",
        ),
    ],
)
def test_system_failures_in_a_stage(driver: FakeDriver, variable: str, needle: str) -> None:
    result = driver.emulator(env={variable: "build_script"}).run_job(
        Job(after_script=["echo after"])
    )
    assert result.outcome == "system_failure", result.describe()
    assert needle in result.failure_message  # type: ignore[operator]
    assert "after_script" in result.stages_run and "cleanup_file_variables" in result.stages_run


def test_after_script_failure_does_not_fail_the_job(driver: FakeDriver) -> None:
    result = driver.emulator().run_job(Job(after_script=["exit 9"]))
    assert result.outcome == "success", result.describe()
    assert (
        "WARNING: after_script failed, but job will continue unaffected: exit code 9"
        in result.job_log
    )


def test_prepare_is_tried_three_times_with_cleanup_between(driver: FakeDriver) -> None:
    job = Job()
    result = driver.emulator(env={"FAKE_PREPARE_SYSTEM_FAILS": "5"}).run_job(job)

    assert result.outcome == "system_failure" and result.prepare_attempts == 3
    assert [r.name for r in result.records] == ["config", "prepare", "cleanup"] * 3
    assert [c["cmd"] for c in driver.calls(job)] == ["config", "prepare", "cleanup"] * 3
    assert result.job_log.count("ERROR: Preparation failed: exit status 34") == 3
    assert result.job_log.count("Will be retried in 0.1s ...") == 2
    assert len(set(result.temp_dirs)) == 3 and result.temp_dir_removed


def test_prepare_succeeding_on_the_last_attempt_runs_the_job(driver: FakeDriver) -> None:
    result = driver.emulator(env={"FAKE_PREPARE_SYSTEM_FAILS": "2"}).run_job(Job())
    assert result.outcome == "success", result.describe()
    assert result.prepare_attempts == 3
    assert [r.kind for r in result.records].count("cleanup") == 3


def test_prepare_exec_timeout_kills_it_and_retries(driver: FakeDriver) -> None:
    emulator = driver.emulator(
        env={"FAKE_PREPARE_HANG": "1"}, prepare_exec_timeout=0.3, graceful_kill_timeout=1.0
    )
    result = emulator.run_job(Job())
    assert result.outcome == "system_failure" and result.prepare_attempts == 3
    for prepare in result.execs("prepare"):
        assert prepare.killed_for == "exec_timeout" and prepare.signals_sent == ["SIGTERM"]
        assert prepare.signal == signal.SIGTERM
    assert "prepare: context deadline exceeded" in result.job_log


def test_build_failure_in_prepare_is_not_retried(driver: FakeDriver) -> None:
    result = driver.emulator(env={"FAKE_PREPARE_BUILD_FAIL": "1"}).run_job(Job())
    assert result.outcome == "failed" and result.exit_code == BUILD_FAILURE
    assert result.prepare_attempts == 1
    assert [r.name for r in result.records] == ["config", "prepare", "cleanup"]


def test_invalid_config_json_fails_the_attempt(driver: FakeDriver) -> None:
    result = driver.emulator(env={"FAKE_CONFIG": "invalid"}).run_job(Job())
    assert result.outcome == "system_failure" and result.prepare_attempts == 3
    assert "error while parsing JSON output" in result.job_log
    assert not result.execs("prepare")


def test_failing_cleanup_is_only_a_warning(driver: FakeDriver) -> None:
    result = driver.emulator(env={"FAKE_CLEANUP_EXIT": str(SYSTEM_FAILURE)}).run_job(Job())
    assert result.outcome == "success"
    assert "WARNING: Cleanup script failed: exit status 34" in result.runner_log


# -------------------------------------------------------------- secrets


def test_masked_values_never_reach_the_job_log(driver: FakeDriver) -> None:
    secret = "s3cr3t-VALUE-xyz"
    job = Job(
        variables=[Variable("SECRET", secret, masked=True)],
        # Printed in two pieces with a pause between, so it spans two reads.
        script=[
            'printf "%s" "${SECRET:0:8}"; sleep 0.3; printf "%s\\n" "${SECRET:8}"',
            'echo "$CI_JOB_TOKEN"',
        ],
    )
    result = driver.emulator().run_job(job)
    assert result.succeeded, result.describe()
    assert secret in result.stage("build_script").stdout, "the raw stream did carry it"
    assert secret not in result.job_log and job.token not in result.job_log
    assert result.job_log.count("[MASKED]") >= 2


# ------------------------------------------------------ hostile variables


def test_hostile_variables_round_trip_exactly(driver: FakeDriver) -> None:
    hostile = (
        'it\'s "quoted" $(touch /tmp/pwned) `id` \\ \n new line \t tab ü ✓ \x01\x7f $HOME ${X}'
    )
    big = "x" * 100_000 + "'\"$"
    job = Job(
        variables=[
            Variable("HOSTILE", hostile),
            Variable("BIG", big),
            Variable("CI_JOB_ID", "1; rm -rf /"),  # spoofs the predefined one
            Variable("not an identifier", "env only"),
        ],
        script=[
            'printf "%s" "$HOSTILE" > hostile.out',
            'printf "%s" "$BIG" > big.out',
            'printf "%s" "$CI_JOB_ID" > id.out',
        ],
    )
    result = driver.emulator().run_job(job)
    assert result.succeeded, result.describe()

    project = driver.project_dir(job)
    assert (project / "hostile.out").read_text() == hostile
    assert (project / "big.out").read_text() == big
    assert (project / "id.out").read_text() == "1; rm -rf /"
    config = driver.calls(job, "config")[0]
    assert config["env"]["CUSTOM_ENV_CI_JOB_ID"] == "1; rm -rf /"
    assert config["env"]["CUSTOM_ENV_HOSTILE"] == hostile
    assert result.records[0].env["CUSTOM_ENV_not an identifier"] == "env only"


def test_megabyte_variable_cannot_pass_through_the_environment(driver: FakeDriver) -> None:
    # Linux caps one environment string at 128 KiB, so the runner cannot even
    # start config_exec: the same system failure the real runner would report.
    job = Job(variables=[Variable("HUGE", "y" * 1_000_000)])
    result = driver.emulator().run_job(job)
    assert result.outcome == "system_failure"
    assert "failed to start command" in result.job_log
    assert result.records[0].ended == "start_failed"


EVERY_BYTE = bytes(range(1, 256)).decode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain",
        "a b",
        "'",
        '"',
        "\\",
        "$(x)",
        "`x`",
        "\n",
        "ü✓",
        "-n",
        "~",
        "*",
        "\x1b[0m",
        EVERY_BYTE,
    ],
)
def test_shell_quote_round_trips_through_bash(value: str) -> None:
    out = subprocess.run(
        ["bash", "-c", "printf '%s' " + shell_quote(value)], capture_output=True, check=True
    )
    assert out.stdout == value.encode("utf-8", "surrogateescape")


def test_file_variables_are_written_to_files_and_cleaned_up(driver: FakeDriver) -> None:
    job = Job(
        variables=[Variable("MY_FILE", "file-content\n", file=True)],
        script=['cat "$MY_FILE"', 'echo "$MY_FILE"'],
    )
    result = driver.emulator().run_job(job)
    assert result.succeeded, result.describe()
    out = result.stage("build_script").stdout
    assert "file-content" in out and f"{driver.project_dir(job)}.tmp/MY_FILE" in out
    assert not (Path(f"{driver.project_dir(job)}.tmp") / "MY_FILE").exists()


# ------------------------------------------------- cache, artifacts, sources


def test_cache_and_artifact_stages_warn_without_gitlab_runner(
    driver: FakeDriver, tmp_path: Path
) -> None:
    job = Job(cache=True, artifacts=True, dependencies=[77])
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "gitlab-runner").exists()
    )
    result = driver.emulator(env={"PATH": path}).run_job(job)
    assert result.succeeded, result.describe()
    assert result.stages_run == [
        "prepare_script",
        "get_sources",
        "restore_cache",
        "download_artifacts",
        "build_script",
        "archive_cache",
        "upload_artifacts_on_success",
        "cleanup_file_variables",
    ]
    assert "Missing gitlab-runner. Uploading artifacts is disabled." in result.job_log
    assert "Missing gitlab-runner. Extracting cache is disabled." in result.job_log

    # With a gitlab-runner in the "VM" the uploader is called, token masked in the log.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gitlab-runner"
    fake.write_text('#!/bin/sh\necho "gitlab-runner $*"\n')
    fake.chmod(0o755)
    job2 = Job(artifacts=True)
    result = driver.emulator(env={"PATH": f"{bin_dir}{os.pathsep}{path}"}).run_job(job2)
    assert (
        "gitlab-runner artifacts-uploader --url https://gitlab.example.com --token [MASKED]"
        in result.job_log
    )
    assert f"--id {job2.id} --path out/" in result.job_log


def test_get_sources_clones_a_local_repository(driver: FakeDriver, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README").write_text("from the repo\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    job = Job(repo_url=str(repo), script=["cat README", "git log --oneline | wc -l"])
    result = driver.emulator().run_job(job)
    assert result.succeeded, result.describe()
    assert "from the repo" in result.stage("build_script").stdout


# ------------------------------------------------------- cancel and timeouts


def test_cancel_sends_sigterm_then_sigkill_to_the_whole_group(driver: FakeDriver) -> None:
    pid_file = driver.state / "sleeper.pid"
    job = Job(
        script=[f"sh -c 'echo $$ > {pid_file}; exec sleep 60'"],
        after_script=["echo after-cancel"],
        artifacts=True,
    )
    emulator = driver.emulator(
        env={"FAKE_IGNORE_TERM": "1"}, graceful_kill_timeout=1.0, force_kill_timeout=2.0
    )
    started = time.monotonic()
    result = emulator.run_job(job, cancel=CancelPlan("build_script", after=0.5))
    elapsed = time.monotonic() - started

    build = result.stage("build_script")
    assert build.signals_sent == ["SIGTERM", "SIGKILL"], result.describe()
    assert build.signal == signal.SIGKILL and build.ended == "signalled"
    assert build.killed_for == "cancel"
    assert 1.0 <= build.seconds < 5.0
    assert build.group_left_running == []
    assert not _alive(int(pid_file.read_text())), "the grandchild died with its group"
    assert result.outcome == "cancelled" and result.cancel_reason == "cancel"
    assert result.job_log.rstrip().endswith("ERROR: Job failed: canceled")
    assert result.stages_run[-3:] == [
        "after_script",
        "upload_artifacts_on_failure",
        "cleanup_file_variables",
    ]
    assert "after-cancel" in result.job_log
    assert result.execs("cleanup") and elapsed < 15


def test_cancel_of_a_well_behaved_driver_needs_only_sigterm(driver: FakeDriver) -> None:
    result = driver.emulator().run_job(Job(script=["sleep 60"]), cancel=CancelPlan(after=0.3))
    build = result.stage("build_script")
    assert build.signals_sent == ["SIGTERM"], result.describe()
    assert build.seconds < 4.0 and result.outcome == "cancelled"


def test_abort_runs_no_further_stages(driver: FakeDriver) -> None:
    job = Job(script=["sleep 60"], after_script=["echo after"], steps={"release": ["true"]})
    result = driver.emulator().run_job(job, cancel=CancelPlan(after=0.3, mode="abort"))
    assert result.outcome == "cancelled" and result.cancel_reason == "abort"
    assert result.stages_run == ["prepare_script", "get_sources", "build_script"]
    assert result.execs("cleanup"), "cleanup still runs after an abort"


def test_cancel_from_another_thread(driver: FakeDriver) -> None:
    run = driver.emulator().new_run(Job(script=["sleep 60"]))
    threading.Timer(1.5, run.cancel).start()
    result = run.run()
    assert result.outcome == "cancelled" and result.stage("build_script").signals_sent == [
        "SIGTERM"
    ]


def test_cleanup_can_start_while_the_cancelled_stage_still_runs(driver: FakeDriver) -> None:
    emulator = driver.emulator(
        env={"FAKE_IGNORE_TERM": "1"},
        graceful_kill_timeout=2.0,
        force_kill_timeout=2.0,
        cancel_wait=0.3,
    )
    job = Job(script=["sleep 60"], after_script=["echo after"])
    result = emulator.run_job(job, cancel=CancelPlan(after=0.3))
    build, cleanup = result.stage("build_script"), result.execs("cleanup")[0]
    assert result.cleanup_overlapped_run
    assert cleanup.started < build.started + build.seconds, "cleanup began before run_exec ended"
    assert build.signals_sent == ["SIGTERM", "SIGKILL"]
    assert "after_script" not in result.stages_run, "no stage starts once cleanup has begun"
    assert result.outcome == "cancelled"


def test_cancel_during_prepare_stops_preparation(driver: FakeDriver) -> None:
    job = Job()
    emulator = driver.emulator()
    # prepare is quick, so cancel at once: whatever is running is stopped, nothing retried.
    result = emulator.run_job(job, cancel=CancelPlan("prepare", after=0.0))
    assert result.outcome == "cancelled"
    assert not result.execs("run") and result.prepare_attempts == 1
    assert result.execs("cleanup")


def test_job_timeout_cancels_and_says_so(driver: FakeDriver) -> None:
    job = Job(script=["sleep 60"], after_script=["echo after-timeout"], timeout=2)
    result = driver.emulator().run_job(job)
    assert result.outcome == "cancelled" and result.cancel_reason == "timeout"
    assert "ERROR: Job failed: execution took longer than 2s seconds" in result.job_log
    assert result.stage("build_script").killed_for == "timeout"
    assert "after-timeout" in result.job_log


def test_a_child_holding_the_pipes_is_reported(driver: FakeDriver) -> None:
    result = driver.emulator(env={"FAKE_LEAK_PIPE": "prepare"}, pipe_close_timeout=0.5).run_job(
        Job()
    )
    prepare = result.execs("prepare")[0]
    try:
        assert prepare.pipes_held_open and prepare.group_left_running
        assert result.outcome == "system_failure"
        assert "still hold its stdout/stderr" in result.job_log
    finally:
        for record in result.execs("prepare"):
            for pid in record.group_left_running:
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------- streaming


def test_output_without_newline_streams_before_the_stage_ends(driver: FakeDriver) -> None:
    seen: list[tuple[float, str]] = []
    # The outputs ("partial-7", "done-2") differ from the echoed command line.
    job = Job(script=["printf 'partial-%s' 7; sleep 1; echo done-$((1+1))"])
    result = driver.emulator().run_job(
        job, on_log=lambda text: seen.append((time.monotonic(), text))
    )
    assert result.succeeded
    first = next(t for t, text in seen if "partial-7" in text)
    done = next(t for t, text in seen if "done-2" in text)
    assert done - first >= 0.8, "partial output arrived before the stage finished"
    assert "".join(text for _, text in seen) == result.job_log


def test_runner_host_restart_leaves_the_prepared_job(driver: FakeDriver) -> None:
    job = Job()
    prepared = driver.emulator().prepare_only(job)
    assert prepared.ok and prepared.temp_dir and os.path.isdir(prepared.temp_dir)
    assert prepared.env["FAKE_JOB_ENV"] == "from-config"
    assert [c["cmd"] for c in driver.calls(job)] == ["config", "prepare"]
    record = prepared.run_stage("prepare_script")
    assert record.returncode == 0 and "Running on" in record.stdout
    assert prepared.run_stage("get_sources").returncode == 0
    assert prepared.run_stage("stage_from_a_future_runner").returncode == 0
    prepared.cleanup()
    assert not os.path.exists(prepared.temp_dir)


# ------------------------------------------------------------ concurrency


def test_many_jobs_in_parallel_threads(driver: FakeDriver) -> None:
    emulator = driver.emulator()
    jobs = [Job(script=['echo "job=$CI_JOB_ID"', "sleep 0.2"]) for _ in range(16)]
    results: dict[int, JobResult] = {}

    def run(job: Job) -> None:
        results[job.id] = emulator.run_job(job)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == len(jobs)
    for job in jobs:
        result = results[job.id]
        assert result.succeeded, result.describe()
        assert re.findall(r"^job=(\d+)$", result.job_log, re.M) == [str(job.id)]
        assert result.temp_dir_removed


# ------------------------------------------------------------------- CLI


def _cli(driver: FakeDriver, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    wrapper = tmp_path / "driver-cli"
    # Like the real CLI: `driver-cli --config PATH <subcommand> [args]`.
    wrapper.write_text(
        '#!/bin/sh\n[ "$1" = --config ] || exit 99\nshift 2\n'
        f'exec {sys.executable} {driver.path} "$@"\n'
    )
    wrapper.chmod(0o755)
    bin_dir = tmp_path / "vm-bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\necho 'Server Version: fake'\n")
    docker.chmod(0o755)
    (tmp_path / "driver.toml").write_text("")
    argv = [sys.executable, "-m", "testing.runner", "--config", str(tmp_path / "driver.toml")]
    argv += ["--driver-command", str(wrapper), "--job-id", "4711", "--stages-demo"]
    return subprocess.run(
        argv,
        cwd=Path(__file__).resolve().parents[2],
        env=driver.env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_streams_the_demo_job_and_exits_0(driver: FakeDriver, tmp_path: Path) -> None:
    done = _cli(driver, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for stage in ("step_script", "step_release"):
        assert f'Executing "{stage}" stage of the job script' in out
    assert "Server Version: fake" in out and "after_script on " in out
    assert "masked in the log: [MASKED]" in out and "demo-secret-value-123" not in out
    assert out.rstrip().endswith("Job succeeded")
    assert "cleanup: removing VM" in done.stderr and "cleanup: removing VM" not in out
    assert [c["argv"][0] for c in driver.calls(Job(id=4711))][:2] == ["config", "prepare"]


def test_cli_exits_1_when_the_job_fails(driver: FakeDriver, tmp_path: Path) -> None:
    done = _cli(driver, tmp_path, FAKE_SYSTEM_FAIL_STAGE="build_script")
    assert done.returncode == 1
    assert "ERROR: Job failed (system failure)" in done.stdout
