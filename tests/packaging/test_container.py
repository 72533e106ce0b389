"""The container image: its recipe read instruction by instruction, its supervisor run
with stand-ins for gitlab-runner and the driver, and the image built where Docker and
the pinned base image are at hand (skipped, with the reason, elsewhere)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "packaging" / "container" / "Dockerfile"
SUPERVISE = ROOT / "packaging" / "container" / "supervise"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, continuations joined."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


RECIPE = instructions(DOCKERFILE.read_text())


def args_of(name: str) -> list[str]:
    return [rest for word, rest in RECIPE if word == name]


def build_args() -> dict[str, str | None]:
    """Every ARG with its default (None: none, the build must be given it)."""
    found: dict[str, str | None] = {}
    for rest in args_of("ARG"):
        key, eq, default = rest.partition("=")
        found.setdefault(key, default if eq else None)
    return found


def test_the_base_is_an_arg_with_no_default_checked_to_be_pinned_by_digest() -> None:
    assert args_of("FROM") == ["${BASE_IMAGE}"]
    assert build_args()["BASE_IMAGE"] is None  # no floating tag to fall back on
    # The ARG again after FROM, so a RUN can check its form before anything else.
    first_run = next(i for i, (word, _) in enumerate(RECIPE) if word == "RUN")
    assert ("ARG", "BASE_IMAGE") in RECIPE[1:first_run]
    check = RECIPE[first_run][1]
    assert '"${BASE_IMAGE}"' in check and "@sha256:" + "?" * 64 in check and "exit 1" in check
    # The documented form passes that pattern; a tag alone would not.
    pattern = "*@sha256:" + "?" * 64
    assert fnmatch.fnmatchcase("gitlab/gitlab-runner:ubuntu-v17.0.0@sha256:" + "a" * 64, pattern)
    assert not fnmatch.fnmatchcase("gitlab/gitlab-runner:ubuntu", pattern)


def test_docker_machine_is_checked_against_a_required_sha256() -> None:
    assert build_args()["DOCKER_MACHINE_SHA256"] is None
    assert "docker-machine-Linux-x86_64" in (build_args()["DOCKER_MACHINE_URL"] or "")
    assert re.fullmatch(r"v0\.16\.2-gitlab\.\d+", build_args()["DOCKER_MACHINE_VERSION"] or "")
    fetch = next(rest for rest in args_of("RUN") if "${DOCKER_MACHINE_URL}" in rest)
    steps = [step.strip() for step in fetch.split("&&")]
    checked = next(i for i, s in enumerate(steps) if "sha256sum -c" in s)
    assert '"${DOCKER_MACHINE_SHA256}  /tmp/docker-machine"' in steps[checked]
    downloaded = next(i for i, s in enumerate(steps) if s.startswith("curl "))
    installed = next(i for i, s in enumerate(steps) if "/usr/local/bin/docker-machine" in s)
    assert downloaded < checked < installed  # nothing unchecked reaches PATH
    assert steps[0].startswith('test -n "${DOCKER_MACHINE_SHA256}"')  # said, not a bad sum


def test_volumes_keep_the_state_dir_and_the_docker_machine_storage() -> None:
    volumes = {v for rest in args_of("VOLUME") for v in json.loads(rest)}
    assert volumes == {"/var/lib/gitlab-machine-driver", "/root/.docker/machine"}


def test_the_supervisor_runs_gitlab_runner_with_the_base_images_arguments() -> None:
    entrypoint = json.loads(args_of("ENTRYPOINT")[-1])
    assert entrypoint == [
        "/usr/bin/dumb-init",
        "--single-child",
        "/usr/local/bin/gitlab-machine-driver-supervise",
    ]
    assert json.loads(args_of("CMD")[-1])[0] == "run"
    assert any("packaging/container/supervise" in rest for rest in args_of("RUN"))


def test_no_git_or_build_output_can_reach_the_build_context() -> None:
    assert args_of("COPY") == [". /src/gitlab-machine-driver"]  # the checkout: filtered by
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(line.startswith("!") for line in ignored)  # nothing let back in
    for path in (
        ".git",
        ".venv",
        "build",
        "dist",
        "site",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
        "bench/results",
        "driver/__pycache__",
    ):
        assert any(
            fnmatch.fnmatch(path, p.removeprefix("**/"))
            or fnmatch.fnmatch(Path(path).name, p.removeprefix("**/"))
            for p in ignored
        ), path


def test_the_supervisor_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("needs shellcheck (apt install shellcheck)")
    checked = subprocess.run([shellcheck, str(SUPERVISE)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def stand_ins(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A gitlab-machine-driver and a gitlab-runner entrypoint that log what they are
    asked and how they end; the pool takes a moment to drain on SIGTERM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    driver = bin_dir / "gitlab-machine-driver"
    driver.write_text(
        "#!/bin/sh\n"
        f'echo "start $*" >> {log}\n'
        'case "$*" in\n'
        f'  *"pool run") trap \'sleep 0.5; echo "drained $2" >> {log}; exit 0\' TERM;'
        " while :; do sleep 0.1; done ;;\n"
        "esac\n"
    )
    runner = bin_dir / "runner"
    runner.write_text(
        "#!/bin/sh\n"
        f'echo "runner $*" >> {log}\n'
        f"trap 'echo \"runner TERM\" >> {log}; exit 0' TERM\n"
        f"trap 'echo \"runner QUIT\" >> {log}; exit 0' QUIT\n"
        "while :; do sleep 0.1; done\n"
    )
    driver.chmod(0o755)
    runner.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "GMD_CONFIG_DIR": "/etc/gmd-test",
        "GMD_RUNNER_ENTRYPOINT": str(runner),
        "GMD_SWEEP_INTERVAL": "0.2",
        "GMD_POOL_CONFIGS": "config",
    }
    return env, log


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGQUIT])
def test_the_supervisor_sweeps_runs_the_pool_and_stops_them_all(
    tmp_path: Path, stop: signal.Signals
) -> None:
    env, log = stand_ins(tmp_path)

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    proc = subprocess.Popen(["sh", str(SUPERVISE), "run", "--user=gitlab-runner"], env=env)
    try:
        sweeps = "start --config /etc/gmd-test/config.toml sweep"
        wait_for(lambda: lines().count(sweeps) >= 2)  # every interval
        wait_for(lambda: "runner run --user=gitlab-runner" in lines())
        assert "start --config /etc/gmd-test/config.toml pool run" in lines()
        proc.send_signal(stop)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    said = lines()
    assert f"runner {stop.name.removeprefix('SIG')}" in said
    assert "drained /etc/gmd-test/config.toml" in said  # waited for to its end
    time.sleep(0.5)
    assert lines().count(sweeps) == said.count(sweeps)  # no sweep after the stop


def test_when_gitlab_runner_exits_the_container_ends_with_its_code(tmp_path: Path) -> None:
    env, log = stand_ins(tmp_path)
    runner = Path(env["GMD_RUNNER_ENTRYPOINT"])
    runner.write_text("#!/bin/sh\nsleep 0.3\nexit 3\n")
    done = subprocess.run(["sh", str(SUPERVISE)], env=env, timeout=20, capture_output=True)
    assert done.returncode == 3
    assert "drained" in log.read_text()
    assert b"gitlab-runner exited with 3" in done.stderr


def test_the_image_builds_and_holds_runner_driver_and_docker_machine() -> None:
    """Needs Docker, the pinned base and the checksum: GMD_TEST_BASE_IMAGE and
    GMD_TEST_DOCKER_MACHINE_SHA256 (the registry and the download need the network)."""
    docker = shutil.which("docker")
    base = os.environ.get("GMD_TEST_BASE_IMAGE", "")
    checksum = os.environ.get("GMD_TEST_DOCKER_MACHINE_SHA256", "")
    if docker is None:
        pytest.skip("needs docker")
    if subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("needs a Docker daemon this user can reach (docker info fails)")
    if not base or not checksum:
        pytest.skip(
            "set GMD_TEST_BASE_IMAGE=gitlab/gitlab-runner:<tag>@sha256:<digest> and "
            "GMD_TEST_DOCKER_MACHINE_SHA256 (docs/install.md): the build pulls the base "
            "and downloads docker-machine"
        )
    if subprocess.run([docker, "pull", base], capture_output=True).returncode != 0:
        pytest.skip(f"cannot pull {base}: no registry reachable from here")
    tag = "gitlab-machine-driver:test"
    built = subprocess.run(
        [
            docker,
            "build",
            "-f",
            str(DOCKERFILE),
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            f"DOCKER_MACHINE_SHA256={checksum}",
            "-t",
            tag,
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    check = subprocess.run(
        [
            docker,
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            tag,
            "-c",
            "gitlab-machine-driver --version && docker-machine --version && "
            "gitlab-runner --version && test ! -e /src",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr
