"""Every `run` ends with one line in the admin's log: stage, outcome, exit code, duration.

The stage's ssh is a stand-in that runs the remote command (the driver's wrapper)
on this host, so the real `run` entrypoint runs end to end without a VM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from driver.state import JobDir, JobPhase, JobRecord

ROOT = Path(__file__).resolve().parents[3]
LOCAL_SSH = """#!/bin/bash
# ssh -F CONFIG [options] HOST COMMAND: run COMMAND here. A "lost" file makes it fail as
# ssh does when the machine is gone.
if [ -e "$(dirname "$0")/lost" ]; then echo "ssh: connect to host: No route" >&2; exit 255; fi
exec bash -c "${@: -1}"
"""


@pytest.fixture
def job(tmp_path: Path) -> JobDir:
    job_dir = JobDir(tmp_path / "st", 4711)
    job_dir.create()
    job_dir.save(
        JobRecord(
            job_id=4711,
            project_id=3,
            machine="gmd-4711",
            phase=JobPhase.READY,
            kill_grace=1.0,
            log_path=str(tmp_path / "driver.log"),
        )
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(LOCAL_SSH)
    (bin_dir / "ssh").chmod(0o755)
    return job_dir


def run_stage(
    tmp_path: Path, job: JobDir, script: str, stage: str = "build_script"
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "script.sh"
    path.write_text(script)
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "GITLAB_MACHINE_DRIVER_JOB_DIR": str(job.path),
        "BUILD_FAILURE_EXIT_CODE": "33",
        "SYSTEM_FAILURE_EXIT_CODE": "34",
        "BUILD_EXIT_CODE_FILE": str(tmp_path / "exit_code"),
        "TMPDIR": str(tmp_path),
    }
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "driver", "run", str(path), stage],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def outcomes(tmp_path: Path) -> list[dict[str, object]]:
    lines = (tmp_path / "driver.log").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "stage_finished"]


def test_success_is_logged_without_importing_structlog(tmp_path: Path, job: JobDir) -> None:
    result = run_stage(tmp_path, job, "echo hello\n")
    assert result.returncode == 0, result.stderr
    assert "hello" in result.stdout
    [line] = outcomes(tmp_path)
    assert {k: line[k] for k in ("job_id", "machine", "stage", "outcome", "exit_code")} == {
        "job_id": 4711,
        "machine": "gmd-4711",
        "stage": "build_script",
        "outcome": "success",
        "exit_code": 0,
    }
    assert isinstance(line["seconds"], float) and str(line["timestamp"]).endswith("Z")
    assert (tmp_path / "driver.log").stat().st_mode & 0o777 == 0o600
    # The success path stays lean: `-X importtime` lists every module `run` imported.
    imported = {row.split("|")[-1].strip() for row in result.stderr.splitlines() if "|" in row}
    heavy = {"structlog", "pydantic", "dataclasses", "subprocess", "shutil", "argparse", "docker"}
    assert imported & heavy == set()


def test_a_failing_script_is_logged_with_its_exit_code(tmp_path: Path, job: JobDir) -> None:
    result = run_stage(tmp_path, job, "exit 7\n", stage="step_release")
    assert result.returncode == 33
    [line] = outcomes(tmp_path)
    assert (line["stage"], line["outcome"], line["exit_code"]) == (
        "step_release",
        "build_failure",
        7,
    )


def test_a_lost_machine_is_logged_as_the_kind_of_failure_it_is(tmp_path: Path, job: JobDir) -> None:
    (tmp_path / "bin" / "lost").touch()
    result = run_stage(tmp_path, job, "echo never\n")
    assert result.returncode == 34
    assert "lost the connection to machine gmd-4711" in result.stderr
    result = run_stage(tmp_path, job, "echo never\n", stage="after_script")
    assert result.returncode == 34
    first, second = outcomes(tmp_path)
    assert (first["outcome"], first["exit_code"], first["level"]) == (
        "machine_lost",
        None,
        "warning",
    )
    assert (second["stage"], second["outcome"]) == ("after_script", "machine_lost")
