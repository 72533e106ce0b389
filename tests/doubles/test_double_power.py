"""The double's start of a stopped VM: what a cloud's start may change (a new address,
an engine certificate that no longer matches it), and `regenerate-certs`
(testing/docker_machine/power.py cites docker-machine's source for each)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from testing import docker_machine as dm
from tests.doubles.harness import Machine, needs_dockerd, root_only, ssh, unused_test_address

pytestmark = pytest.mark.timeout(180)


@root_only
@needs_dockerd
def test_a_start_at_a_new_address_needs_new_engine_certs(machine: Machine, tmp_path: Path) -> None:
    machine.ok("create", "-d", "local", "vm")
    known = str(tmp_path / "known_hosts")
    old = machine.ok("ip", "vm").strip()
    assert ssh(machine, "vm", "true", known, strict="accept-new").returncode == 0
    machine.ok("stop", "vm")
    dm.set_faults(machine.storage, {"start_new_address": {"times": 1}})
    out = machine.ok("start", "vm")
    assert out.endswith(
        "Started machines may have new IP addresses. You may need to re-run the "
        "`docker-machine env` command.\n"
    )
    new = machine.ok("ip", "vm").strip()
    assert new != old
    assert machine.ok("url", "vm") == f"tcp://{new}:2376\n"
    # inspect reads the store: the create's address, as amazonec2's config.json keeps it.
    assert machine.inspect("vm", "{{.Driver.IPAddress}}") == old
    with pytest.raises(OSError):  # the old address answers no more
        socket.create_connection((old, 22), 2).close()
    assert machine.ok("ssh", "vm", "echo", "moved") == "moved\n"
    refused = machine("config", "vm")
    assert refused.returncode == 1
    assert f"x509: certificate is valid for {old}, not {new}" in refused.stderr
    assert machine.ok("regenerate-certs", "-f", "vm").startswith("Regenerating TLS certificates\n")
    assert machine.ok("config", "vm").endswith(f"-H=tcp://{new}:2376\n")  # a real TLS check


@root_only
def test_a_start_the_cloud_refuses_or_that_hangs(fast: Machine) -> None:
    fast.ok("create", "-d", "local", "vm")
    fast.ok("stop", "vm")
    dm.set_faults(fast.storage, {"start_fail": {"times": 1}})
    failed = fast("start", "vm")
    assert failed.returncode == 1
    assert failed.stderr.startswith("InsufficientInstanceCapacity: ")
    assert fast.ok("status", "vm") == "Stopped\n"
    dm.set_faults(fast.storage, {"start_hang": {"times": 1}})
    hung = fast.popen("start", "vm")
    with pytest.raises(Exception, match="timed out"):
        hung.wait(timeout=3)
    hung.kill()
    hung.wait()
    assert fast.ok("status", "vm") == "Stopped\n"


@root_only
def test_a_stop_the_cloud_refuses(fast: Machine) -> None:
    fast.ok("create", "-d", "local", "vm")
    dm.set_faults(fast.storage, {"stop_fail": {"times": 1}})
    failed = fast("stop", "vm")
    assert failed.returncode == 1
    assert failed.stderr.startswith("InternalError: ")
    assert fast.ok("status", "vm") == "Running\n"
    fast.ok("stop", "vm")
    assert fast.ok("status", "vm") == "Stopped\n"


@root_only
def test_a_stopped_machine_has_no_address(fast: Machine) -> None:
    """Driver.GetIP of a stopped VM fails (virtualbox: ErrHostIsNotRunning; amazonec2: its
    public address is released), so `ip` cannot hand out a stale address."""
    fast.ok("create", "-d", "local", "vm")
    fast.ok("stop", "vm")
    stopped = fast("ip", "vm")
    assert (stopped.returncode, stopped.stderr) == (
        1,
        "Error getting IP address: Host is not running\n",
    )
    fast.ok("start", "vm")
    assert fast.ok("ip", "vm") == fast.inspect("vm", "{{.Driver.IPAddress}}") + "\n"


@root_only
def test_a_generic_host_is_neither_stopped_nor_started(fast: Machine) -> None:
    """drivers/generic/generic.go: Start and Stop return an error: it did not make the host."""
    fast.ok("create", "-d", "local", "vm")
    key = os.path.join(fast.storage, "machines", "vm", "id_rsa")
    address = unused_test_address()
    fast.ok(
        "create", "-d", "generic", "--generic-ip-address", address,
        "--generic-ssh-key", key, "g",
    )  # fmt: skip
    stopped = fast("stop", "g")
    assert (stopped.returncode, stopped.stderr) == (1, "generic driver does not support stop\n")
    assert fast.ok("status", "g") == "Running\n"
