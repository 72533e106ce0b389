"""`job init` / `job end` as an operator uses them: eval'ed in a shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def shell(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`script` in a bash whose `gmd` is the driver, with its config in the environment."""
    config = tmp_path / "c.toml"
    config.write_text(f'state_dir = "{tmp_path}/st"\n[machine]\ndriver = "amazonec2"\n')
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TMPDIR", "JOB_RESPONSE_FILE", "BUILD_EXIT_CODE_FILE")
    }
    env["GITLAB_MACHINE_DRIVER_CONFIG"] = str(config)
    env["PYTHONPATH"] = str(ROOT)
    prelude = f'gmd() {{ "{sys.executable}" -m driver "$@"; }}\n'
    return subprocess.run(
        ["bash", "-c", prelude + script], capture_output=True, text=True, env=env, timeout=60
    )


def test_init_then_end_leaves_the_shell_and_tmp_as_they_were(tmp_path: Path) -> None:
    out = shell(
        'eval "$(gmd job init --id 97531)"\n'
        'echo "TMPDIR=${TMPDIR-unset}"\n'
        'echo "RESPONSE=$JOB_RESPONSE_FILE"\n'
        'stat -c "%a" "$JOB_RESPONSE_FILE"\n'
        'eval "$(gmd job end)"\n'
        'echo "AFTER=${JOB_RESPONSE_FILE-unset} ${BUILD_EXIT_CODE_FILE-unset}"\n',
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "TMPDIR=unset" in lines  # the operator's shell keeps its own temp dir
    response = Path(next(x for x in lines if x.startswith("RESPONSE=")).split("=", 1)[1])
    assert response.name == "response.json" and response.parent.name.startswith("gmd-job-97531-")
    assert "600" in lines
    assert "AFTER=unset unset" in lines
    assert not response.parent.exists()
    assert list(Path("/tmp").glob("gmd-job-97531-*")) == []


def test_end_refuses_while_the_job_still_has_a_machine(tmp_path: Path) -> None:
    (tmp_path / "st" / "jobs" / "97532").mkdir(parents=True)
    out = shell(
        'eval "$(gmd job init --id 97532)"\n'
        'eval "$(gmd job end)"\n'
        'echo "STILL=$JOB_RESPONSE_FILE"\n'
        'test -f "$JOB_RESPONSE_FILE" && echo kept\n'
        'rm -r "$(dirname "$JOB_RESPONSE_FILE")"\n',
        tmp_path,
    )
    assert "job 97532 still has a machine or state" in out.stderr
    assert "hint: run `gitlab-machine-driver cleanup` first" in out.stderr
    assert "kept" in out.stdout.splitlines()


def test_end_without_init_says_what_to_do(tmp_path: Path) -> None:
    out = shell("gmd job end", tmp_path)
    assert out.returncode != 0
    assert "this shell has no job environment (JOB_RESPONSE_FILE is not set)" in out.stderr
    assert 'eval "$(gitlab-machine-driver job init)"' in out.stderr


@pytest.mark.parametrize("content", ["{}", "not json"])
def test_init_refuses_a_response_that_is_not_a_job_and_leaves_nothing(
    tmp_path: Path, content: str
) -> None:
    saved = tmp_path / "saved.json"
    saved.write_text(content)
    before = set(Path("/tmp").glob("gmd-job-4242-*"))
    out = shell(f'gmd job init --response "{saved}"', tmp_path)
    assert out.returncode != 0
    assert "is not a job payload" in out.stderr
    assert set(Path("/tmp").glob("gmd-job-4242-*")) == before
