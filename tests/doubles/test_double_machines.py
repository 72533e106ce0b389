"""The docker-machine double's own tests.

Simulated VMs: SSH, private dirs, the engine, power actions, and the test helpers.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from testing import docker_machine as dm
from testing.docker_machine.netns import claimed_indexes, cmdline, read_claims
from testing.docker_machine.store import Store
from tests.doubles.harness import (
    Machine,
    needs_dockerd,
    root_only,
    ssh,
    unused_test_address,
)

pytestmark = pytest.mark.timeout(180)


@root_only
def test_vm_create_ssh_and_stable_host_key(fast: Machine, tmp_path: Path) -> None:
    out = fast.ok("create", "-d", "local", "vm")
    assert out.startswith("Running pre-create checks...\nCreating machine...\n")
    assert out.endswith(
        "To see how to connect your Docker Client to the Docker Engine running on this "
        "virtual machine, run: docker-machine env vm\n"
    )
    ip, port, key = fast.ssh_target("vm")
    assert re.fullmatch(r"10\.213\.\d+\.\d+", ip) and port == "22"
    assert fast.inspect("vm", "{{.Driver.SSHUser}}|{{.Driver.SSHKeyPath}}") == f"|{key}"
    known = str(tmp_path / "known_hosts")
    first = subprocess.run(
        ["ssh", "-i", key, "-o", f"UserKnownHostsFile={known}", "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=accept-new", f"root@{ip}", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    for _ in range(2):  # the same host key on every connection
        assert ssh(fast, "vm", "true", known, strict="yes").returncode == 0
    assert fast.ok("status", "vm") == "Running\n"
    assert fast.ok("ip", "vm") == ip + "\n"
    assert fast.ok("url", "vm") == f"tcp://{ip}:2376\n"
    assert fast.ok("ssh", "vm", "echo", "hello") == "hello\n"
    result = fast("ssh", "vm", "exit 7")
    assert (result.returncode, result.stderr) == (1, "exit status 7\n")


@root_only
def test_vms_have_private_dirs_and_own_addresses(fast: Machine) -> None:
    for name in ("a", "b"):
        fast.ok("create", "-d", "local", name)
    assert fast.ok("ip", "a") != fast.ok("ip", "b")
    assert (
        ssh(fast, "a", "echo x > /tmp/f && echo y > /builds/f && test -d /run/sshd").returncode == 0
    )
    assert ssh(fast, "b", "test ! -e /tmp/f && test ! -e /builds/f").returncode == 0
    assert not os.path.exists("/builds/f")
    assert ssh(fast, "a", "cat /tmp/f /builds/f").stdout == "x\ny\n"


@root_only
@needs_dockerd
def test_the_engine_does_not_inherit_the_creators_environment(
    machine: Machine, tmp_path: Path
) -> None:
    """A real VM's services never see the environment of whoever ran `create` (a
    runner's TMPDIR, say, which is gone once its job ends)."""
    creator = {**os.environ, "TMPDIR": str(tmp_path), "GMD_CREATOR_ONLY": "1"}
    machine.ok("create", "-d", "local", "vm", env=creator)
    pid = Path(machine.storage, "vms", "vm", "docker", "pid").read_text().strip()
    names = {v.split(b"=")[0] for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")}
    assert b"PATH" in names
    assert b"GMD_CREATOR_ONLY" not in names and b"TMPDIR" not in names
    machine.ok("rm", "-y", "vm")


@root_only
@needs_dockerd
def test_engine_answers_inside_the_vm(machine: Machine) -> None:
    started = time.monotonic()
    machine.ok("create", "-d", "local", "--engine-label", "role=ci", "vm")
    created = time.monotonic() - started
    info = ssh(machine, "vm", "docker -H unix:///run/docker.sock info --format '{{.Labels}}'")
    assert info.returncode == 0, info.stderr
    assert "role=ci" in info.stdout
    ip = machine.ok("ip", "vm").strip()
    config = machine.ok("config", "vm")
    assert config.endswith(f"-H=tcp://{ip}:2376\n")
    mdir = os.path.join(machine.storage, "machines", "vm")
    env = machine.ok("env", "vm", env=dict(os.environ, SHELL="/bin/bash"))
    assert env == (
        f'export DOCKER_TLS_VERIFY="1"\nexport DOCKER_HOST="tcp://{ip}:2376"\n'
        f'export DOCKER_CERT_PATH="{mdir}"\nexport DOCKER_MACHINE_NAME="vm"\n'
        "# Run this command to configure your shell: \n"
        f"# eval $(docker-machine -s {machine.storage} env vm)\n"
    )
    no_shell = machine("env", "vm", env={k: v for k, v in os.environ.items() if k != "SHELL"})
    assert (no_shell.returncode, no_shell.stderr) == (1, "Error: Unknown shell\n")
    fish = machine.ok("env", "--shell", "fish", "vm")
    assert fish.startswith('set -gx DOCKER_TLS_VERIFY "1";\n')
    row = machine.ok("ls").splitlines()[1]
    assert re.search(r"Running +tcp://\S+:2376 +v\d+\.\d+", row), row
    assert created < 30
    # The engine's data lives on the VM's "disk", not in the machine dir: like a real one,
    # that holds regular files only (config, keys, certs), which a copy of it can take.
    assert [p for p in Path(mdir).rglob("*") if not (p.is_file() or p.is_dir())] == []
    assert Path(machine.storage, "vms", "vm", "docker", "data").is_dir()
    machine.ok("rm", "-y", "vm")
    assert not Path(machine.storage, "vms", "vm").exists()


@root_only
@needs_dockerd
def test_engines_listen_on_the_port_their_driver_was_given(machine: Machine) -> None:
    """--local-engine-port and --generic-engine-port: dockerd listens there, not on 2376."""
    machine.ok("create", "-d", "local", "--local-engine-port", "2377", "vm")
    ip = machine.ok("ip", "vm").strip()
    assert machine.ok("url", "vm") == f"tcp://{ip}:2377\n"
    assert machine.ok("config", "vm").endswith(f"-H=tcp://{ip}:2377\n")  # a real TLS check
    with pytest.raises(ConnectionRefusedError), socket.create_connection((ip, 2376), 5):
        pass
    key = os.path.join(machine.storage, "machines", "vm", "id_rsa")
    address = unused_test_address()  # routed to the generic host the double makes
    machine.ok(
        "create", "-d", "generic", "--generic-ip-address", address,
        "--generic-ssh-key", key, "--generic-engine-port", "3376", "g",
    )  # fmt: skip
    assert machine.ok("url", "g") == f"tcp://{address}:3376\n"
    rows = machine.ok("ls", "--format", "{{.Name}} {{.URL}} {{.DockerVersion}} {{.Error}}")
    assert re.fullmatch(
        rf"g tcp://{re.escape(address)}:3376 v\S+ \nvm tcp://{re.escape(ip)}:2377 v\S+ \n",
        rows,
    ), rows


def mini_image_files() -> list[str]:
    """A root file system for a container: dash, sleep and the libraries they need."""
    found = subprocess.run(["ldd", "/usr/bin/sleep"], capture_output=True, text=True, check=True)
    libraries = re.findall(r"(/\S+) \(0x", found.stdout)
    return [p.lstrip("/") for p in ["/bin/dash", "/usr/bin/sleep", *libraries]]


@root_only
@needs_dockerd
def test_containers_run_in_the_vm_and_go_with_it(machine: Machine) -> None:
    # A long name moves dockerd's exec root to the VM's /run: socket paths are short.
    name = "runner-abcdefgh-project-12345-concurrent-0-1700000000-0123abcd"
    machine.ok("create", "-d", "local", name)
    files = " ".join(mini_image_files())
    script = (
        "export DOCKER_HOST=unix:///run/docker.sock && "
        f"tar -C / -ch {files} 2>/dev/null | docker import - mini >/dev/null && "
        "docker run -d mini /usr/bin/sleep 1000 && "
        "docker run --rm mini /bin/dash -c 'echo from a container'"
    )
    result = ssh(machine, name, script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("from a container\n")
    index = claimed_indexes(Store(machine.storage), name)[0]
    assert os.path.isdir(f"/sys/fs/cgroup/pids/dmd-vm-{index}") or not os.path.isdir(
        "/sys/fs/cgroup/pids"
    )
    sleeper = [p for p in dm.vm_pids(machine.storage, name) if b"sleep\x001000" in cmdline(p)]
    assert len(sleeper) == 1
    machine.ok("rm", "-y", name)
    assert not os.path.exists(f"/proc/{sleeper[0]}/cmdline") or cmdline(sleeper[0]) == b""
    assert not [
        d
        for d in os.listdir("/sys/fs/cgroup")
        if os.path.isdir(os.path.join("/sys/fs/cgroup", d, f"dmd-vm-{index}"))
    ]


@root_only
@needs_dockerd
def test_engine_that_cannot_start_fails_the_create(machine: Machine) -> None:
    result = machine("create", "-d", "local", "--engine-opt", "no-such-flag=1", "vm")
    assert result.returncode == 1
    assert result.stderr == (
        "Error creating machine: Error running provisioning: Unable to verify the Docker "
        "daemon is listening: Maximum number of retries (10) exceeded\n"
    )
    assert machine.ok("status", "vm") == "Error\n"
    assert dm.vm_pids(machine.storage, "vm") == []


@root_only
def test_stop_start_restart_keep_address_and_host_key(fast: Machine, tmp_path: Path) -> None:
    fast.ok("create", "-d", "local", "vm")
    known = str(tmp_path / "known_hosts")
    assert ssh(fast, "vm", "true", known, strict="accept-new").returncode == 0
    ip = fast.ok("ip", "vm")
    assert fast.ok("stop", "vm") == 'Stopping "vm"...\nMachine "vm" was stopped.\n'
    assert fast.ok("status", "vm") == "Stopped\n"
    assert dm.vm_pids(fast.storage, "vm") == []
    result = fast("ssh", "vm", "true")
    assert result.stderr == 'Error: Cannot run SSH command: Host "vm" is not running\n'
    assert fast("url", "vm").stderr == "Host is not running\n"
    assert fast("stop", "vm").stderr == 'Machine "vm" is already stopped.\n'
    assert fast.ok("start", "vm").startswith('Starting "vm"...\nMachine "vm" was started.\n')
    assert fast("start", "vm").stderr == 'Machine "vm" is already running.\n'
    assert fast.ok("ip", "vm") == ip
    assert ssh(fast, "vm", "true", known).returncode == 0
    fast.ok("restart", "vm")
    fast.ok("kill", "vm")
    assert fast.ok("status", "vm") == "Stopped\n"
    fast.ok("start", "vm")
    assert ssh(fast, "vm", "true", known).returncode == 0


@root_only
def test_kill_vm_then_start(fast: Machine, tmp_path: Path) -> None:
    fast.ok("create", "-d", "local", "vm")
    known = str(tmp_path / "known_hosts")
    assert (
        ssh(fast, "vm", "sleep 300 >/dev/null 2>&1 &", known, strict="accept-new").returncode == 0
    )
    assert len(dm.vm_pids(fast.storage, "vm")) >= 3
    dm.kill_vm(fast.storage, "vm")
    assert dm.vm_pids(fast.storage, "vm") == []
    assert fast.ok("status", "vm") == "Stopped\n"
    assert dm.machine_names(fast.storage) == ["vm"]
    assert ssh(fast, "vm", "true", known, timeout=1).returncode == 255  # no route to it
    fast.ok("start", "vm")
    assert ssh(fast, "vm", "true", known).returncode == 0


@root_only
def test_kill_sshd_and_rotate_host_key(fast: Machine, tmp_path: Path) -> None:
    fast.ok("create", "-d", "local", "vm")
    known = str(tmp_path / "known_hosts")
    session = subprocess.Popen(
        ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-i", fast.ssh_target("vm")[2],
         f"root@{fast.ssh_target('vm')[0]}", "sleep 60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)
    dm.kill_sshd(fast.storage, "vm")
    assert session.wait(timeout=30) == 255  # the session died with the server
    assert fast.ok("status", "vm") == "Running\n"
    assert ssh(fast, "vm", "true").returncode == 255
    fast.ok("restart", "vm")
    assert ssh(fast, "vm", "true", known, strict="accept-new").returncode == 0
    dm.rotate_host_key(fast.storage, "vm")
    changed = ssh(fast, "vm", "true", known)
    assert changed.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in changed.stderr
    assert ssh(fast, "vm", "true").returncode == 0


@root_only
def test_local_mode_uses_a_port_on_localhost(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"vm_mode": "local"})
    fast.ok("create", "-d", "local", "vm")
    assert fast.inspect("vm", "{{.Driver.IPAddress}} {{.Driver.SSHUser}}") == "127.0.0.1 root"
    assert int(fast.inspect("vm", "{{.Driver.SSHPort}}")) > 1024
    assert ssh(fast, "vm", "echo ok").stdout == "ok\n"
    assert dm.leftover_namespaces(fast.storage) == []
    dm.kill_vm(fast.storage, "vm")
    assert fast.ok("status", "vm") == "Stopped\n"


@root_only
def test_teardown_all_leaves_nothing(machine: Machine) -> None:
    machine.ok("create", "-d", "local", "a")
    machine.ok("create", "-d", "local", "b")
    assert ssh(machine, "a", "nohup sleep 600 >/dev/null 2>&1 &").returncode == 0
    indexes = claimed_indexes(Store(machine.storage))
    assert len(indexes) == 2
    dm.teardown_all(machine.storage)
    dm.teardown_all(machine.storage)  # idempotent
    assert claimed_indexes(Store(machine.storage)) == []
    assert dm.storage_pids(machine.storage) == []
    assert dm.leftover_namespaces(machine.storage) == []
    assert dm.machine_names(machine.storage) == []
    for index in indexes:
        paths = [f"/run/netns/dmd-{index}", f"/sys/class/net/dmdh{index}"]
        paths.append(f"/sys/fs/cgroup/memory/dmd-vm-{index}")
        left = [path for path in paths if os.path.exists(path)]
        # Only if a test running beside this one made a VM with the freed index (its
        # claim comes before, and goes after, the namespace, link and cgroups).
        owner = read_claims().get(index, {}).get("storage")
        assert not left or owner not in (None, machine.storage), left
    dm.teardown_all("/tmp/dmd-does-not-exist")  # a missing storage is fine
