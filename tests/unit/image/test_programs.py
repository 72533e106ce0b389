"""Image mode's shell programs (driver/image/sh/), as they are sent to containers and VMs."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from driver.image import programs

ROOT = Path(__file__).resolve().parents[3]

# What each program runs under: `sh -c` in a container (any POSIX sh), `bash -c` in the VM.
SENT = [
    pytest.param("sh", programs.KEEPER, id="keeper"),
    pytest.param("sh", programs.HELPER_KEEPER, id="helper-keeper"),
    pytest.param("sh", programs.keeper("/tmp/channel"), id="keeper-elsewhere"),
    pytest.param("bash", programs.WAIT_PORTS, id="wait-ports"),
]


@pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="needs shellcheck (scripts/setup installs it; apt-get install shellcheck)",
)
@pytest.mark.parametrize(("shell", "text"), SENT)
def test_shellcheck_finds_nothing_in_what_is_sent(shell: str, text: str) -> None:
    checked = subprocess.run(
        ["shellcheck", "--norc", "--shell", shell, "--severity", "style", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_placeholder_is_filled() -> None:
    for text in (programs.KEEPER, programs.HELPER_KEEPER, programs.WAIT_PORTS):
        assert "@" not in text
    assert "d=/tmp/channel g=" in programs.keeper("/tmp/channel")
    assert programs.HELPER_KEEPER.endswith("umask 0000; " + programs.KEEPER)
    assert f'echo "{programs.KEEPER_MARK} $$"' in programs.KEEPER


def test_the_package_data_holds_every_program() -> None:
    """pip install (and so the Debian package) ships only what package-data names."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["driver"]
    package = ROOT / "driver"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    assert set(programs.SH.iterdir()) <= shipped
