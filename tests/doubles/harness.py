"""What the double's own tests share: running the double as a driver would, ssh into its
machines, and finding the transcript of the genuine program."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testing.docker_machine.common import DOCKERD

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LAUNCHER = ROOT / "testing" / "bin" / "docker-machine"
TRANSCRIPT_NAME = "reference/docker-machine-none-driver.txt"
# The shared notes live beside the repository (../shared), or at /work/shared.
TRANSCRIPTS = tuple(
    dict.fromkeys(
        [ROOT.parent / "shared" / TRANSCRIPT_NAME, Path("/work/shared") / TRANSCRIPT_NAME]
    )
)

root_only = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nsenter") is None, reason="VMs in namespaces need root"
)
needs_dockerd = pytest.mark.skipif(not os.path.exists(DOCKERD), reason="dockerd is missing")


def unused_test_address() -> str:
    """An address of 198.18.0.0/15 (benchmarking, never routed) no other test uses now."""
    while True:
        address = f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"
        route = subprocess.run(["ip", "route", "show", f"{address}/32"], capture_output=True)
        if not route.stdout.strip():
            return address


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def find_transcript(candidates: tuple[Path, ...] = TRANSCRIPTS) -> Path:
    """The genuine program's transcript; a missing one skips the test, or fails it in CI."""
    for path in candidates:
        if path.is_file():
            return path
    message = "no reference transcript at " + " or ".join(str(p) for p in candidates)
    if in_ci():
        pytest.fail(message + " (CI=true: the check against the real program must run)")
    pytest.skip(message)


class Machine:
    """Runs the double against one storage, as a driver would (a separate process)."""

    def __init__(self, storage: str) -> None:
        self.storage = storage

    def __call__(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(LAUNCHER), "-s", self.storage, *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
        result = self(*args, stdin=stdin, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(LAUNCHER), "-s", self.storage, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def merged(self, *args: str) -> tuple[str, int]:
        """Output as a terminal shows it (stdout and stderr in order) and the exit code."""
        result = subprocess.run(
            [sys.executable, str(LAUNCHER), "-s", self.storage, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=False,
        )
        return result.stdout, result.returncode

    def inspect(self, name: str, template: str) -> str:
        return self.ok("inspect", "--format", template, name).strip()

    def ssh_target(self, name: str) -> tuple[str, str, str]:
        driver = self.inspect(name, "{{.Driver.IPAddress}} {{.Driver.SSHPort}}").split()
        key = self.inspect(name, "{{.Driver.SSHKeyPath}}")
        return driver[0], driver[1], key or os.path.join(self.storage, "machines", name, "id_rsa")

    def config(self, name: str) -> dict[str, object]:
        return json_of(Path(self.storage, "machines", name, "config.json").read_text())


def json_of(text: str) -> dict[str, object]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


def ssh(
    machine: Machine,
    name: str,
    command: str,
    known_hosts: str | None = None,
    strict: str = "yes",
    timeout: int = 5,
) -> subprocess.CompletedProcess[str]:
    """The system ssh as the driver runs it: the machine's key and a pinned host key."""
    ip, port, key = machine.ssh_target(name)
    user = machine.inspect(name, "{{.Driver.SSHUser}}") or "root"
    options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}"]
    options += ["-o", "IdentitiesOnly=yes"]
    if known_hosts is None:
        options += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    else:
        options += [
            "-o",
            f"StrictHostKeyChecking={strict}",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
        ]
    return subprocess.run(
        ["ssh", "-F", "/dev/null", *options, "-i", key, "-p", port, f"{user}@{ip}", command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
