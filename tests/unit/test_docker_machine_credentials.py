"""Cloud credentials reach docker-machine in its environment, never on its argv."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from driver import settings
from driver.docker_machine import DockerMachine
from driver.errors import ConfigError


def recording_program(tmp_path: Path) -> Path:
    """A docker-machine that writes down its argv and environment, NUL-separated."""
    program = tmp_path / "docker-machine"
    program.write_text(
        f'#!/bin/sh\nprintf "%s\\0" "$@" > {tmp_path}/argv\nenv -0 > {tmp_path}/env\n'
    )
    program.chmod(0o755)
    return program


def read_nul(path: Path) -> list[str]:
    return [item for item in path.read_text().split("\0") if item]


def config(tmp_path: Path, env_file: Path) -> settings.Settings:
    return settings.parse_settings(
        {
            "state_dir": str(tmp_path / "st"),
            "docker_machine": {
                "program": str(recording_program(tmp_path)),
                "storage_path": str(tmp_path / "dm"),
            },
            "machine": {
                "driver": "amazonec2",
                "options": ["amazonec2-region=eu-west-1"],
                "env": {"AWS_DEFAULT_REGION": "eu-west-1", "AWS_SECRET_ACCESS_KEY": "overridden"},
                "env_file": str(env_file),
            },
        }
    )


def test_env_file_values_go_into_docker_machines_environment_not_its_argv(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "aws.env"
    env_file.write_text(
        "# comment\n\nAWS_ACCESS_KEY_ID=AKIAEXAMPLE\nexport AWS_SECRET_ACCESS_KEY='s3cr=t'\n"
    )
    env_file.chmod(0o600)
    dm = DockerMachine(config(tmp_path, env_file))
    dm.create("gmd-1", {"job": "1"}, timeout=30)
    argv = read_nul(tmp_path / "argv")
    env = dict(item.split("=", 1) for item in read_nul(tmp_path / "env"))
    assert env["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE"
    assert env["AWS_SECRET_ACCESS_KEY"] == "s3cr=t"  # the file wins over [machine] env
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert "create" in argv and "--amazonec2-region=eu-west-1" in argv
    assert not any("AKIAEXAMPLE" in a or "s3cr=t" in a for a in argv)
    # Every call, not just create: rm needs the cloud too.
    os.unlink(tmp_path / "env")
    dm.remove("gmd-1", force=False, timeout=30)
    assert "AWS_SECRET_ACCESS_KEY=s3cr=t" in read_nul(tmp_path / "env")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_an_env_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    env_file = tmp_path / "aws.env"
    env_file.write_text("AWS_SECRET_ACCESS_KEY=x\n")
    env_file.chmod(mode)
    with pytest.raises(ConfigError) as refused:
        DockerMachine(config(tmp_path, env_file))
    assert f"is accessible to other users (mode {mode:o})" in str(refused.value)
    assert f"hint: chmod 600 {env_file}" in str(refused.value)


def test_a_bad_env_file_names_the_line_and_a_missing_one_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / "aws.env"
    env_file.write_text("AWS_ACCESS_KEY_ID=x\nthis is not a variable\n")
    env_file.chmod(0o600)
    with pytest.raises(ConfigError, match=r"aws\.env, line 2: not a KEY=VALUE line"):
        DockerMachine(config(tmp_path, env_file))
    with pytest.raises(ConfigError, match=r"cannot read \[machine\] env_file .*missing\.env"):
        DockerMachine(config(tmp_path, tmp_path / "missing.env"))


def test_env_names_are_checked_in_the_config() -> None:
    with pytest.raises(ConfigError, match="'AWS KEY' is not an environment variable name"):
        settings.parse_settings({"machine": {"env": {"AWS KEY": "x"}}})
