"""Warm caches: images in [pool] images are pulled into each pooled machine's own
engine before it counts as ready, from a registry on another test host."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.images import forwarding
from testing.runner import Job
from testing.world import Env, stop_pool

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or not Path("/usr/sbin/dockerd").exists()
    or shutil.which("docker-registry") is None,
    reason="needs root, docker.io and docker-registry",
)
REGISTRY_CONFIG = """version: 0.1
storage:
  filesystem:
    rootdirectory: {root}/registry-data
http:
  addr: :5000
"""


def dm(env: Env, *args: str) -> str:
    out = subprocess.run(
        ["docker-machine", "--storage-path", str(env.storage), *args],
        env=env.process_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


@pytest.fixture
def registry(env: Env) -> Iterator[str]:
    """A registry on its own test host (a machine of the double), holding one image."""
    forwarding(True)  # machines reach each other through the host (shared with other tests)
    try:
        dm(env, "create", "--driver", "local", "registry-host")
        info = json.loads(dm(env, "inspect", "registry-host"))["Driver"]
        home = env.storage / "machines" / "registry-host"  # visible inside that machine
        (home / "registry.yml").write_text(REGISTRY_CONFIG.format(root=home))
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as tar:
            data = b"warm cache\n"
            entry = tarfile.TarInfo("hello.txt")
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
        (home / "rootfs.tar").write_bytes(layer.getvalue())
        ssh = [
            "ssh",
            "-i",
            info["SSHKeyPath"],
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            f"UserKnownHostsFile={env.base / 'registry_known_hosts'}",
            f"root@{info['IPAddress']}",
        ]
        start = (
            f"setsid nohup docker-registry serve {home}/registry.yml "
            f"> {home}/registry.log 2>&1 < /dev/null &"
        )
        subprocess.run([*ssh, start], check=True, timeout=30)
        publish = (
            "for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/5000) 2>/dev/null && break; "
            "sleep 0.2; done; "
            f"docker import {home}/rootfs.tar 127.0.0.1:5000/ci/tiny:1 && "
            "docker push 127.0.0.1:5000/ci/tiny:1"
        )
        pushed = subprocess.run([*ssh, publish], capture_output=True, text=True, timeout=120)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        yield f"{info['IPAddress']}:5000/ci/tiny:1"
    finally:
        forwarding(False)


def test_pool_machines_come_with_the_configured_images(env: Env, registry: str) -> None:
    env.configure(
        machine={"engine_insecure_registry": ["10.213.0.0/16"]},
        docker={"check": True},
        pool={"idle_count": 1, "check_interval": 0.5, "drain_on_stop": True, "images": [registry]},
    )
    service = env.start_pool()
    try:
        env.wait_ready(service=service, timeout=120)
        job = Job(script=["docker image ls --format 'image {{.Repository}}:{{.Tag}}'"])
        result = env.run_job(job)
        assert result.outcome == "success", result.describe()
        assert "from the warm pool" in result.job_log
        assert f"image {registry}" in result.job_log  # there before the job asked for it
    finally:
        stop_pool(service)
