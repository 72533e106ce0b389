"""Fixtures of the double's own tests: a fresh storage each, torn down without leftovers."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from testing import docker_machine as dm
from tests.doubles.harness import Machine


@pytest.fixture
def storage() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="dmd", dir="/tmp")
    try:
        yield path
    finally:
        dm.teardown_all(path)
        assert dm.storage_pids(path) == []
        assert dm.leftover_namespaces(path) == []
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def machine(storage: str) -> Machine:
    return Machine(storage)


@pytest.fixture(scope="session")
def certs() -> Iterator[str]:
    """Certificates the double bootstrapped once, for stores that should start with them."""
    path = tempfile.mkdtemp(prefix="dmdcerts", dir="/tmp")
    try:
        Machine(path).ok("create", "-d", "none", "--url", "tcp://192.0.2.1:2376", "bootstrap")
        yield os.path.join(path, "certs")
    finally:
        shutil.rmtree(path)


@pytest.fixture
def fast(machine: Machine, certs: str) -> Machine:
    """A store whose certificates exist already, VMs without an engine, and failed creates
    that exit without docker-machine's 2-second pause: quick creates."""
    shutil.copytree(certs, os.path.join(machine.storage, "certs"))
    dm.set_faults(machine.storage, {"engine": "none", "fail_pause": 0})
    return machine
