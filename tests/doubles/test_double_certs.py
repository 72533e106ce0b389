"""The docker-machine double's own tests.

Certificates: docker-machine's unlocked bootstrap, and creates once the certificates exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testing import docker_machine as dm
from testing.docker_machine.certs import verify_offline
from testing.docker_machine.store import Store
from tests.doubles.harness import (
    LAUNCHER,
    Machine,
    root_only,
)

pytestmark = pytest.mark.timeout(180)


def verified(machine: Machine, name: str) -> bool:
    return verify_offline(Store(machine.storage), name) is None


def chain_intact(storage: str) -> bool:
    """Is the store's client certificate signed by the store's CA?"""
    certs = Path(storage, "certs")
    check = ["openssl", "verify", "-CAfile", str(certs / "ca.pem"), str(certs / "cert.pem")]
    return subprocess.run(check, capture_output=True, check=False).returncode == 0


def racing_creates(machine: Machine, names: list[str], *driver: str) -> list[tuple[str, str, int]]:
    procs = [machine.popen("create", *driver, name) for name in names]
    return [(*p.communicate(timeout=120), p.returncode) for p in procs]


def test_four_first_creates_race_on_the_certificates_silently(storage: str) -> None:
    """Upstream's unlocked bootstrap: four creates on an empty store all make a CA, all exit
    0, and the store mostly ends with a client certificate its CA did not sign."""
    none = ("-d", "none", "--url", "tcp://10.0.0.9:2376")
    for attempt in range(5):  # a round leaves the chain intact about one time in ten
        machine = Machine(os.path.join(storage, str(attempt)))
        # RSA-sized key generation, long enough that all four start before any CA exists
        dm.set_faults(machine.storage, {"keygen_time": 0.8})
        for out, err, code in racing_creates(machine, ["a", "b", "c", "d"], *none):
            assert (code, err) == (0, "")
            assert out.startswith(f"Creating CA: {machine.storage}/certs/ca.pem\n"), out
            assert "\nCreating machine...\n" in out
        if not chain_intact(machine.storage):
            break
    else:
        pytest.fail("five rounds of racing first creates all ended with an intact chain")


@root_only
def test_vm_creates_racing_on_the_certificates_fail_at_their_connection_check(
    machine: Machine,
) -> None:
    """A cloud driver's create checks the engine's TLS at its end: the race shows there."""
    dm.set_faults(machine.storage, {"engine": "none", "keygen_time": 0.8, "fail_pause": 0})
    results = racing_creates(machine, ["a", "b", "c", "d"], "-d", "local")
    for out, err, code in results:
        assert out.startswith("Creating CA: "), out
        assert code == 0 or err.startswith(
            "Error creating machine: Error checking the host: Error checking and/or "
            "regenerating the certs: There was an error validating certificates for host "
        ), err
    if all(code == 0 for _, _, code in results):
        assert all(verified(machine, name) for name in "abcd")


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
