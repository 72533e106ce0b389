"""The docker-machine double's own tests.

create: drivers, their flags, and the injected cloud faults (and rm's).
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testing import docker_machine as dm
from testing.docker_machine.store import Store, read_vm, settings
from tests.doubles.harness import LAUNCHER, Machine, root_only, ssh, unused_test_address

pytestmark = pytest.mark.timeout(180)


def test_an_unknown_driver_is_refused_at_once(machine: Machine) -> None:
    result = machine("create", "-d", "amazonec2", "--amazonec2-region", "eu-west-1", "vm")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        'Driver "amazonec2" not found. Do you have the plugin binary '
        '"docker-machine-driver-amazonec2" accessible in your PATH?\n'
    )
    assert not os.path.exists(os.path.join(machine.storage, "certs"))  # nothing was made
    assert dm.machine_names(machine.storage) == []
    result = machine("create", "vm")  # no --driver: virtualbox, a plugin the double lacks
    assert result.stderr.startswith('Driver "virtualbox" not found.')
    env = dict(os.environ, MACHINE_DRIVER="none")
    assert machine("create", "--url", "tcp://10.0.0.9:2376", "vm", env=env).returncode == 0


def test_generic_driver_needs_an_address(fast: Machine) -> None:
    result = fast("create", "-d", "generic", "g")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "Error setting machine configuration from flags provided: "
        "generic driver requires the --generic-ip-address option\n"
    )
    assert dm.machine_names(fast.storage) == []


@root_only
def test_generic_driver_provisions_a_host_at_its_address_and_ports(
    fast: Machine, tmp_path: Path
) -> None:
    key = tmp_path / "deploy_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    address = unused_test_address()
    out = fast.ok(
        "create", "-d", "generic", "--generic-ip-address", address, "--generic-ssh-port",
        "2222", "--generic-ssh-key", str(key), "--generic-engine-port", "3376", "g",
    )  # fmt: skip
    assert "Creating machine...\nImporting SSH key...\n" in out
    mdir = Path(fast.storage, "machines", "g")
    driver = fast.config("g")["Driver"]
    expected = {  # drivers/generic's Driver, in its field order
        "IPAddress": address,
        "MachineName": "g",
        "SSHUser": "root",
        "SSHPort": 2222,
        "SSHKeyPath": str(mdir / "deploy_key"),
        "StorePath": fast.storage,
        "SwarmMaster": False,
        "SwarmHost": "tcp://0.0.0.0:3376",
        "SwarmDiscovery": "",
        "EnginePort": 3376,
        "SSHKey": str(key),
    }
    assert isinstance(driver, dict)
    assert (driver, list(driver)) == (expected, list(expected))
    assert fast.inspect("g", "{{.Driver.EnginePort}}") == "3376"
    assert (mdir / "deploy_key").read_bytes() == key.read_bytes()
    assert (mdir / "deploy_key.pub").exists()
    assert fast.ok("url", "g") == f"tcp://{address}:3376\n"
    assert fast.ok("ip", "g") == f"{address}\n"
    assert ssh(fast, "g", "hostname").stdout == "g\n"  # with the imported key, on port 2222
    assert fast.ok("ssh", "g", "echo", "via docker-machine") == "via docker-machine\n"
    row = fast.ok("ls", "--format", "{{.Name}} {{.DriverName}} {{.State}} {{.URL}}")
    assert row == f"g generic Running tcp://{address}:3376\n"
    fast.ok("rm", "-y", "g")
    route = subprocess.run(["ip", "route", "show", f"{address}/32"], capture_output=True)
    assert route.stdout == b""  # the route went with the VM's link


def test_generic_driver_without_namespaces_needs_a_loopback_address(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"vm_mode": "local"})
    result = fast("create", "-d", "generic", "--generic-ip-address", "198.18.0.1", "g")
    assert result.returncode == 1 and "need an address in 127.0.0.0/8" in result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user = pwd.getpwuid(os.getuid()).pw_name
    out = fast.ok(
        "create", "-d", "generic", "--generic-ip-address", "127.0.0.1", "--generic-ssh-port",
        str(port), "--generic-ssh-user", user, "h",
    )  # fmt: skip
    assert "No SSH key specified. Assuming an existing key at the default location." in out
    assert fast.inspect("h", "{{.Driver.SSHKeyPath}}") == os.path.join(
        fast.storage, "machines", "h", "id_rsa"
    )
    assert fast.ok("url", "h") == "tcp://127.0.0.1:2376\n"  # the default engine port
    assert ssh(fast, "h", "echo ok").stdout == "ok\n"


def test_local_driver_takes_an_engine_port(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"vm_mode": "local"})
    fast.ok("create", "-d", "local", "--local-engine-port", "12376", "vm")
    assert fast.inspect("vm", "{{.Driver.EnginePort}}") == "12376"
    assert fast.ok("url", "vm") == "tcp://127.0.0.1:12376\n"
    result = fast("create", "-d", "local", "--local-engine-port", "x", "bad")
    assert result.stderr.startswith('invalid value "x" for flag -local-engine-port')
    env = dict(os.environ, LOCAL_ENGINE_PORT="12377")  # the flag's environment variable
    fast.ok("create", "-d", "local", "vm2", env=env)
    assert fast.ok("url", "vm2") == "tcp://127.0.0.1:12377\n"


def test_a_failed_create_pauses_before_it_exits(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"fail_pause": 3.0, "create_fail": {"times": 1}})
    started = time.monotonic()
    result = fast("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "x")
    assert result.returncode == 1 and "InsufficientInstanceCapacity" in result.stderr
    assert time.monotonic() - started >= 3.0
    started = time.monotonic()  # refused before libmachine's Create: no pause
    result = fast("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "x")
    assert result.stderr == 'Docker machine "x" already exists\n'
    assert time.monotonic() - started < 2.5
    dm.set_faults(fast.storage, {"fail_pause": None, "create_rate_limit": {"times": 1}})
    started = time.monotonic()  # the default pause is upstream's 2 s
    assert fast("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "y").returncode == 1
    assert time.monotonic() - started >= 2.0


def test_a_failed_pre_create_check_exits_3(fast: Machine) -> None:
    message = 'Quota "CPUS" exceeded.'
    dm.set_faults(fast.storage, {"create_precheck_fail": {"times": 1, "message": message}})
    result = fast("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "x")
    assert (result.returncode, result.stdout) == (3, "Running pre-create checks...\n")
    assert result.stderr == 'Error with pre-create check: "Quota \\"CPUS\\" exceeded."\n'
    assert dm.machine_names(fast.storage) == []  # the check comes before the first save
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "x")
    result = fast(
        "create", "-d", "generic", "--generic-ip-address", "192.0.2.10",
        "--generic-ssh-key", "/nonexistent/key", "g",
    )  # fmt: skip
    assert result.returncode == 3
    assert result.stderr == (
        'Error with pre-create check: "SSH key does not exist: \\"/nonexistent/key\\""\n'
    )


def test_create_fail_counts_down(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"create_fail": {"times": 2, "message": "boom"}})
    for name in ("a", "b"):
        result = fast("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", name)
        assert result.returncode == 1
        assert result.stderr == (
            "Error creating machine: Error in driver during machine creation: boom\n"
        )
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "c")
    assert fast.ok("ls", "-q") == "a\nb\nc\n"
    assert settings(Store(fast.storage))["create_fail"]["times"] == 0
    dm.set_faults(fast.storage, {"create_fail": {"times": -1}})
    assert fast("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "d").returncode == 1
    dm.set_faults(fast.storage, {"create_fail": None})
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "e")


@root_only
def test_create_fail_leaves_error_none_or_vm(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"create_fail": {"times": 1}})
    result = fast("create", "-d", "local", "err")
    assert "InsufficientInstanceCapacity" in result.stderr
    assert fast.ok("status", "err") == "Error\n"
    assert dm.vm_pids(fast.storage, "err") == []
    dm.set_faults(fast.storage, {"create_fail": {"times": 1, "leave": "none"}})
    assert fast("create", "-d", "local", "gone").returncode == 1
    assert dm.machine_names(fast.storage) == ["err"]
    dm.set_faults(fast.storage, {"create_fail": {"times": 1, "leave": "vm"}})
    assert fast("create", "-d", "local", "half").returncode == 1
    assert dm.vm_pids(fast.storage, "half") != []
    assert dm.leftover_namespaces(fast.storage) != []
    result = fast("rm", "-f", "err", "half")
    assert result.returncode == 0 and result.stdout.count("Successfully removed") == 2
    assert dm.vm_pids(fast.storage, "half") == []
    assert dm.leftover_namespaces(fast.storage) == []


def test_create_rate_limit(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"create_rate_limit": {"times": -1}})
    for _ in range(2):
        result = fast("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "x")
        assert result.returncode == 1
        assert re.fullmatch(
            r"Error creating machine: Error in driver during machine creation: "
            r"RequestLimitExceeded: Request limit exceeded\.\n"
            r"\tstatus code: 503, request id: [0-9a-f-]{36}\n",
            result.stderr,
        )
        fast.ok("rm", "-f", "x")


@root_only
def test_create_hang_then_killed_leaves_an_entry_rm_f_clears(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"create_hang": {"times": 1}})
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), "-s", fast.storage, "create", "-d", "local", "vm"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = Path(fast.storage, "machines", "vm", "config.json")
    deadline = time.monotonic() + 30
    while not config.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None  # still hanging
    assert fast.ok("status", "vm") == "Error\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert fast.ok("rm", "-f", "vm").endswith("Successfully removed vm\n")


@root_only
def test_create_killed_while_booting_is_cleaned_by_rm_f(fast: Machine) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), "-s", fast.storage, "create", "-d", "local", "vm"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while "init_pid" not in read_vm(Store(fast.storage), "vm"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    time.sleep(0.5)
    assert dm.vm_pids(fast.storage, "vm") != []  # a half-made VM keeps running
    fast.ok("rm", "-f", "vm")
    assert dm.vm_pids(fast.storage, "vm") == []
    assert dm.leftover_namespaces(fast.storage) == []


@root_only
def test_create_delay(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"create_delay": 1.5})
    started = time.monotonic()
    fast.ok("create", "-d", "local", "slow")
    assert time.monotonic() - started >= 1.5


@root_only
def test_ssh_never_ready(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"ssh_never_ready": {"times": 1}})
    fast.ok("create", "-d", "local", "tarpit")
    ip, port, _ = fast.ssh_target("tarpit")
    with socket.create_connection((ip, int(port)), timeout=5) as s:
        s.settimeout(1)
        with pytest.raises(TimeoutError):
            s.recv(64)  # connected, but no SSH banner ever comes
    started = time.monotonic()
    assert ssh(fast, "tarpit", "true", timeout=2).returncode == 255
    assert time.monotonic() - started >= 2  # the client waited for its ConnectTimeout
    fast.ok("create", "-d", "local", "fine")  # only the next create was affected
    assert ssh(fast, "fine", "true").returncode == 0


@root_only
def test_rm_fail(fast: Machine) -> None:
    fast.ok("create", "-d", "local", "vm")
    dm.set_faults(fast.storage, {"rm_fail": {"times": 2}})
    result = fast("rm", "-y", "vm")
    assert result.returncode == 1
    assert result.stderr.startswith(
        'Error removing host "vm": unable to terminate instance: InternalError'
    )
    assert fast.ok("status", "vm") == "Running\n"
    assert dm.vm_pids(fast.storage, "vm") != []
    result = fast("rm", "-f", "vm")
    assert result.returncode == 0 and "Successfully removed vm" in result.stdout
    assert result.stderr.startswith('Error removing host "vm": ')
    assert dm.machine_names(fast.storage) == []
    assert dm.vm_pids(fast.storage, "vm") == []
    assert dm.leftover_namespaces(fast.storage) == []
    assert Path(fast.storage, "orphans.log").read_text() == "vm\n"
