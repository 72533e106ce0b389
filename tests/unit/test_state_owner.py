"""Two configs with different machine settings never share a state dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from driver import settings, state_owner
from driver.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, state_dir: Path, driver: str, prefix: str, program: str) -> Path:
    path.write_text(
        f'state_dir = "{state_dir}"\n'
        f'[docker_machine]\nprogram = "{program}"\nstorage_path = "{state_dir}/machines"\n'
        f'[machine]\ndriver = "{driver}"\nname_prefix = "{prefix}"\n'
        "[pool]\nidle_count = 1\n"
    )
    return path


def recording_program(tmp_path: Path) -> Path:
    """A docker-machine that notes each call: a refused config must make none."""
    program = tmp_path / "docker-machine"
    program.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n')
    program.chmod(0o755)
    return program


@pytest.fixture
def configs(tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / "shared-state"
    program = str(recording_program(tmp_path))
    aws = write_config(tmp_path / "aws.toml", state, "amazonec2", "aws", program)
    gcp = write_config(tmp_path / "gcp.toml", state, "google", "gcp", program)
    return aws, gcp


def test_the_first_config_owns_the_state_dir_and_another_is_refused(
    configs: tuple[Path, Path],
) -> None:
    aws, gcp = configs
    aws_settings, gcp_settings = settings.load_settings(aws), settings.load_settings(gcp)
    state_owner.claim(aws_settings, aws)
    owner_file = aws_settings.state_dir / "owner.json"
    assert json.loads(owner_file.read_text())["config"] == str(aws)
    assert owner_file.stat().st_mode & 0o777 == 0o600
    state_owner.claim(aws_settings, aws)  # again: fine
    with pytest.raises(ConfigError) as refused:
        state_owner.claim(gcp_settings, gcp)
    message = str(refused.value)
    assert f"state dir {aws_settings.state_dir} is used by {aws} (driver amazonec2" in message
    assert f"differ from those of {gcp} (driver google" in message
    assert f"give {gcp} a state_dir (and [docker_machine] storage_path) of its own" in message
    assert f"remove {owner_file}" in message
    assert json.loads(owner_file.read_text())["config"] == str(aws)


def test_same_machine_settings_under_another_name_and_credentials_are_no_conflict(
    configs: tuple[Path, Path], tmp_path: Path
) -> None:
    aws, _ = configs
    copy = tmp_path / "aws-copy.toml"
    copy.write_text(aws.read_text() + "[run]\nkill_grace = 3\n")
    base = settings.load_settings(aws)
    state_owner.claim(base, aws)
    state_owner.claim(settings.load_settings(copy), copy)
    # Rotating credentials changes nothing about which machines the config makes.
    rotated = base.model_copy(
        update={
            "machine": base.machine.model_copy(update={"env": {"AWS_SECRET_ACCESS_KEY": "new"}})
        }
    )
    state_owner.claim(rotated, copy)


def test_the_owner_changing_its_own_settings_stays_the_owner(
    configs: tuple[Path, Path],
) -> None:
    aws, _ = configs
    state_owner.claim(settings.load_settings(aws), aws)
    aws.write_text(aws.read_text().replace('name_prefix = "aws"', 'name_prefix = "aws2"'))
    changed = settings.load_settings(aws)
    state_owner.claim(changed, aws)
    recorded = state_owner.read_owner(changed.state_dir)
    assert recorded is not None and recorded.name_prefix == "aws2"


def driver(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driver", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_prepare_and_the_pool_refuse_before_touching_any_machine(
    configs: tuple[Path, Path], tmp_path: Path
) -> None:
    aws, gcp = configs
    state_owner.claim(settings.load_settings(aws), aws)
    pool = driver("pool", "run", "--config", str(gcp))
    assert pool.returncode != 0
    assert "whose [machine] settings differ" in pool.stderr
    response = tmp_path / "response.json"
    response.write_text(json.dumps({"id": 77, "token": "t", "job_info": {"project_id": 1}}))
    prepare = driver(
        "--config",
        str(gcp),
        "prepare",
        env={"JOB_RESPONSE_FILE": str(response), "SYSTEM_FAILURE_EXIT_CODE": "34"},
    )
    assert prepare.returncode == 34
    assert "whose [machine] settings differ" in prepare.stderr
    assert not (tmp_path / "calls").exists()  # docker-machine never ran
    assert not (tmp_path / "shared-state" / "jobs" / "77").exists()
