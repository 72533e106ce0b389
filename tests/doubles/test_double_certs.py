"""The docker-machine double's own tests.

Certificates: docker-machine's unlocked bootstrap, and creates once the certificates exist.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.doubles import docker_machine as dm
from tests.doubles.docker_machine.certs import verify_offline
from tests.doubles.docker_machine.store import Store
from tests.doubles.harness import (
    LAUNCHER,
    Machine,
    root_only,
)

pytestmark = pytest.mark.timeout(180)


def verified(machine: Machine, name: str) -> bool:
    return verify_offline(Store(machine.storage), name) is None


@root_only
def test_first_creates_race_on_the_certificates(machine: Machine) -> None:
    """Two creates on an empty store at once: docker-machine's unlocked cert bootstrap."""
    dm.set_faults(machine.storage, {"engine": "none"})
    command = [sys.executable, str(LAUNCHER), "-s", machine.storage, "create", "-d", "local"]
    procs = [
        subprocess.Popen(
            [*command, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name in ("a", "b")
    ]
    results = [(*p.communicate(timeout=60), p.returncode) for p in procs]
    failed = [err for _, err, code in results if code != 0]
    broken = [
        n
        for n, (_, _, code) in zip("ab", results, strict=True)
        if code == 0 and not verified(machine, n)
    ]
    assert failed or broken, results
    for err in failed:
        assert err.startswith(("Error generating certificates: ", "Error creating machine: ")), err


@root_only
def test_creates_after_the_bootstrap_run_in_parallel(fast: Machine) -> None:
    command = [sys.executable, str(LAUNCHER), "-s", fast.storage, "create", "-d", "local"]
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [*command, f"p{i}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for i in range(8)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    elapsed = time.monotonic() - started
    assert [p.returncode for p in procs] == [0] * 8, errors
    ips = {fast.ok("ip", f"p{i}") for i in range(8)}
    assert len(ips) == 8
    assert all(verified(fast, f"p{i}") for i in range(8))
    assert elapsed < 30
    fast.ok("rm", "-y", *[f"p{i}" for i in range(8)])
    assert dm.leftover_namespaces(fast.storage) == []
