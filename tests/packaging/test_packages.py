"""Build what can be built here: the wheel and the Debian package.

The container image needs a registry to pull its base from, which this
machine cannot reach; its recipe is checked for what it must contain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
def test_the_debian_package_installs_the_command_config_and_units(tmp_path: Path) -> None:
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"
    built = subprocess.run(
        [str(ROOT / "packaging" / "deb" / "build"), str(tmp_path / "out")],
        env={**os.environ, "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    deb = Path(built.stdout.strip().splitlines()[-1])
    assert deb.name.startswith("gitlab-machine-driver_") and deb.suffix == ".deb"
    contents = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True).stdout
    for path in (
        "./usr/bin/gitlab-machine-driver -> /opt/gitlab-machine-driver/bin/gitlab-machine-driver",
        "./etc/gitlab-machine-driver/config.toml",
        "./lib/systemd/system/gitlab-machine-driver-sweep.timer",
        "./lib/systemd/system/gitlab-machine-driver-sweep.service",
        "./lib/systemd/system/gitlab-machine-driver-pool.service",
    ):
        assert path in contents
    conffiles = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Package", "Depends"], capture_output=True, text=True
    ).stdout
    assert "gitlab-machine-driver" in conffiles and "openssh-client" in conffiles
    root = tmp_path / "root"
    subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    version = subprocess.run(
        [str(root / "opt/gitlab-machine-driver/bin/python"), "-m", "driver", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.startswith("gitlab-machine-driver ")
    launcher = (root / "opt/gitlab-machine-driver/bin/gitlab-machine-driver").read_text()
    assert launcher.startswith("#!/opt/gitlab-machine-driver/bin/python")
    config = root / "etc/gitlab-machine-driver/config.toml"
    check = subprocess.run(
        [
            str(root / "opt/gitlab-machine-driver/bin/python"),
            "-c",
            "import sys; from driver import settings; settings.load_settings(sys.argv[1])",
            str(config),
        ],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_the_container_recipe_brings_runner_driver_and_docker_machine() -> None:
    recipe = (ROOT / "packaging" / "container" / "Dockerfile").read_text()
    assert "FROM ${RUNNER_IMAGE}" in recipe and "gitlab/gitlab-runner" in recipe
    assert "docker-machine --version" in recipe  # the fork is fetched at build time and checked
    assert "pip install" in recipe and "gitlab-machine-driver --version" in recipe
