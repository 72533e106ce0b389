"""Simulated VMs, seen from docker-machine: how a VM is made, booted, powered off, and
what state and URL it has.

A VM is a real OpenSSH server with its own host key, started by its own init
(vminit.py). As root (vm_mode "netns") it lives in its own network namespace
with its own address and private directories, with a real dockerd when one is
installed; otherwise (vm_mode "local") sshd listens on a free port of 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from . import drivers
from .certs import provision_certs, ssh_keygen, verify_offline
from .common import DOCKERD, LAUNCHER, MachineError, go_quote, info
from .engine import cert_check_error, engine_check, engine_ping_unix
from .faults import take_fault
from .netns import (
    NETNS_DIR,
    allocate_netns,
    destroy_vm,
    ensure_link,
    init_pid,
    ip_cmd,
    kill_until_gone,
    machine_pids,
    netns_name,
    vm_addresses,
)
from .store import Store, read_vm, save_host, settings, update_vm, vm_disk, write_atomic
from .vminit import PRIVATE_DIRS

BOOT_TIMEOUT = 60.0


def vm_mode(store: Store) -> str:
    """'netns' (root, with ip/nsenter/unshare) unless double.json says "vm_mode": "local"."""
    tools = all(shutil.which(t) for t in ("nsenter", "unshare")) and (
        shutil.which("ip") or os.path.exists("/usr/sbin/ip")
    )
    wanted = settings(store).get("vm_mode", "netns")
    return "netns" if wanted == "netns" and os.geteuid() == 0 and tools else "local"


def engine_wanted(store: Store, mode: str) -> bool:
    default = "dockerd" if mode == "netns" and os.path.exists(DOCKERD) else "none"
    return settings(store).get("engine", default) == "dockerd" and mode == "netns"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_sshd_config(mdir: str, listen: str) -> None:
    lines = [  # paths quoted: a store path may hold spaces
        f"ListenAddress {listen}",
        f'HostKey "{mdir}/ssh_host_ed25519_key"',
        f'AuthorizedKeysFile "{mdir}/authorized_keys"',
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "MaxSessions 100",
        "MaxStartups 100:30:200",
        f'PidFile "{mdir}/sshd.pid"',
        "PrintMotd no",
        "PrintLastLog no",
        "Subsystem sftp internal-sftp",
    ]
    write_atomic(os.path.join(mdir, "sshd_config"), ("\n".join(lines) + "\n").encode(), 0o644)


def engine_args(mdir: str, index: int, engine: dict[str, Any], port: int) -> list[str]:
    docker = os.path.join(vm_disk(mdir), "docker")
    exec_root = os.path.join(docker, "exec")
    if len(exec_root) + len("/containerd/containerd.sock.ttrpc") > 107:
        exec_root = "/run/docker-exec"  # unix socket paths hold 108 bytes; /run is the VM's own
    args = [
        "--data-root", f"{docker}/data", "--exec-root", exec_root, "--pidfile", f"{docker}/pid",
        "-H", "unix:///run/docker.sock", "-H", f"tcp://0.0.0.0:{port}",
        "--tlsverify", "--tlscacert", f"{mdir}/ca.pem",
        "--tlscert", f"{mdir}/server.pem", "--tlskey", f"{mdir}/server-key.pem",
        "--cgroup-parent", f"/dmd-vm-{index}",
    ]  # fmt: skip
    for flag, key in (
        ("--label", "Labels"),
        ("--registry-mirror", "RegistryMirror"),
        ("--insecure-registry", "InsecureRegistry"),
    ):
        for value in engine.get(key) or []:
            args += [flag, value]
    if engine.get("StorageDriver"):
        args += ["--storage-driver", engine["StorageDriver"]]
    args += [f"--{opt}" for opt in engine.get("ArbitraryFlags") or []]
    return args


def spawn_init(store: Store, name: str, vm: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start the VM's init detached, so that it outlives this docker-machine process."""
    mdir = store.machine_dir(name)
    command = [sys.executable, LAUNCHER, "_vm-init", mdir]
    if vm["mode"] == "netns":
        # nsenter + unshare, not `ip netns exec`: that remounts /sys, and dockerd then
        # fails with "Devices cgroup isn't mounted".
        ns = os.path.join(NETNS_DIR, netns_name(vm["index"]))
        # Its own mount table, and its own hostname (the machine's name, as a real VM has).
        unshare = ["unshare", "--mount", "--uts", "--propagation", "private"]
        command = ["nsenter", f"--net={ns}", *unshare, *command]
    with open(os.path.join(mdir, "vm.log"), "ab") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            start_new_session=True,
        )
    update_vm(store, name, init_pid=proc.pid)
    return proc


def wait_for_ssh(
    proc: subprocess.Popen[bytes], ip: str, port: int, banner: bool, timeout: float
) -> None:
    """Until the VM's port 22 accepts connections (and speaks SSH unless `banner` is False)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise TimeoutError("the VM stopped while booting")
        with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=1) as s:
            if not banner:
                return
            s.settimeout(2)
            if s.recv(64).startswith(b"SSH-"):
                return
        if time.monotonic() > deadline:
            raise TimeoutError("Maximum number of retries (60) exceeded")
        time.sleep(0.02)


def wait_for_engine(proc: subprocess.Popen[bytes], mdir: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None or os.path.exists(os.path.join(mdir, "engine.failed")):
            return False
        if engine_ping_unix(proc.pid):
            return True
        time.sleep(0.05)
    return False


def boot_vm(store: Store, name: str, vm: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start the VM's processes and wait for SSH and (when it has one) its engine."""
    if vm["mode"] == "netns":
        if not os.path.exists(os.path.join(NETNS_DIR, netns_name(vm["index"]))):
            ip_cmd("netns", "add", netns_name(vm["index"]))
        ensure_link(vm["index"], vm.get("extra_ip"), moved=bool(vm.get("moved_ip")))
    elif os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(store.machine_dir(name), "engine.failed"))
    proc = spawn_init(store, name, vm)
    timeout = float(settings(store).get("boot_timeout", BOOT_TIMEOUT))
    try:
        wait_for_ssh(proc, address(vm), vm["port"], vm.get("ssh") != "tarpit", timeout)
    except TimeoutError as exc:
        raise VmBootError(f"Error waiting for SSH: {exc}") from None
    if vm.get("engine") and not wait_for_engine(proc, store.machine_dir(name), timeout):
        raise VmBootError(
            "Error running provisioning: Unable to verify the Docker daemon is listening: "
            "Maximum number of retries (10) exceeded"
        )
    return proc


class VmBootError(Exception):
    pass


def address(vm: dict[str, Any]) -> str:
    """Where clients reach the VM: its own address, or the one a generic host was given."""
    return str(vm.get("extra_ip") or vm["ip"])


def mark_error(store: Store, name: str, host: dict[str, Any]) -> None:
    if host["DriverName"] != "none" and os.path.isdir(store.machine_dir(name)):
        update_vm(store, name, phase="error")


def create_vm(store: Store, name: str, host: dict[str, Any], quiet: bool = False) -> None:
    """Driver.Create and provisioning for a simulated VM (the `local` driver's VM, or the
    existing host a `generic` create provisions, which the double makes for it)."""
    say = (lambda _message: None) if quiet else info
    delay = float(settings(store).get("create_delay", 0) or 0)
    if delay > 0:
        time.sleep(delay)  # a slow cloud
    mdir = store.machine_dir(name)
    vm = place_vm(store, name, host, say)
    ssh_keygen(os.path.join(mdir, "ssh_host_ed25519_key"), f"host {name}")
    install_login_key(store, name, host, say)
    listen = f"0.0.0.0:{vm['port']}" if vm["mode"] == "netns" else f"{vm['ip']}:{vm['port']}"
    write_sshd_config(mdir, listen)
    save_host(store, host)  # performCreate's save after Driver.Create
    engine = host["HostOptions"]["EngineOptions"]
    port = drivers.engine_port(host)
    vm["engine"] = engine_wanted(store, vm["mode"])
    if vm["engine"]:
        os.makedirs(os.path.join(vm_disk(mdir), "docker"), mode=0o700, exist_ok=True)
        vm["engine_args"] = engine_args(mdir, vm["index"], engine, port)
        vm["engine_env"] = engine.get("Env") or []
    if vm["mode"] == "netns":
        for path, _ in PRIVATE_DIRS:
            os.makedirs(path, exist_ok=True)  # mount points of the VM's private dirs
    sans = host["HostOptions"]["AuthOptions"]["ServerCertSANs"] or []
    provision_certs(store, name, address(vm), sans)
    update_vm(store, name, **vm)
    say("Waiting for machine to be running, this may take a few minutes...")
    try:
        boot_vm(store, name, read_vm(store, name))
    except VmBootError as exc:
        destroy_vm(store, name)
        update_vm(store, name, phase="error")
        raise MachineError(f"Error creating machine: {exc}") from None
    update_vm(store, name, phase="created")
    for line in PROVISIONING:
        say(line)
    if not quiet:
        check_connection(store, name, host, vm, f"{address(vm)}:{port}")
        say("Docker is up and running!")


PROVISIONING = (
    "Detecting operating system of created instance...",
    "Waiting for SSH to be available...",
    "Detecting the provisioner...",
    "Provisioning with debian...",
    "Copying certs to the local machine directory...",
    "Copying certs to the remote machine...",
    "Setting Docker configuration on the remote daemon...",
    "Checking connection to Docker...",
)


def place_vm(
    store: Store, name: str, host: dict[str, Any], say: Callable[[str], None]
) -> dict[str, Any]:
    """Where the VM lives and listens; a local VM's address goes into the driver section."""
    driver = host["Driver"]
    generic = host["DriverName"] == "generic"
    mode = vm_mode(store)
    tarpit = bool(take_fault(store, "ssh_never_ready"))
    vm: dict[str, Any] = {"phase": "creating", "mode": mode, "ssh": "tarpit" if tarpit else "sshd"}
    if mode == "netns":
        index = allocate_netns(store, name)
        vm.update(index=index, ip=vm_addresses(index)[1], port=22)
        if generic:  # the given address, routed to the VM from this host
            vm.update(extra_ip=driver["IPAddress"], port=driver["SSHPort"] or 22)
        else:
            say(f"({name}) Creating VM {netns_name(index)} at {vm['ip']}...")
    elif generic:
        if not ipaddress.ip_address(driver["IPAddress"]).is_loopback:
            raise MachineError(
                "Error creating machine: Error in driver during machine creation: without "
                "namespaces the double's generic hosts need an address in 127.0.0.0/8"
            )
        vm.update(ip=driver["IPAddress"], port=driver["SSHPort"] or 22)
    else:
        vm.update(ip="127.0.0.1", port=free_port())
        say(f"({name}) Creating VM at 127.0.0.1:{vm['port']}...")
    if not generic:
        driver.update(IPAddress=vm["ip"], SSHPort=vm["port"])
        # sshd not running as root lets only its own user in
        driver["SSHUser"] = "" if mode == "netns" else pwd.getpwuid(os.getuid()).pw_name
    return vm


def install_login_key(
    store: Store, name: str, host: dict[str, Any], say: Callable[[str], None]
) -> None:
    """The key docker-machine logs in with, and the VM's sshd accepting it."""
    mdir = store.machine_dir(name)
    driver = host["Driver"]
    given = driver.get("SSHKey") or ""
    if host["DriverName"] == "generic" and given:
        say("Importing SSH key...")
        driver["SSHKeyPath"] = os.path.join(mdir, os.path.basename(given))
        shutil.copyfile(given, driver["SSHKeyPath"])
        os.chmod(driver["SSHKeyPath"], 0o600)
        try:
            shutil.copyfile(given + ".pub", driver["SSHKeyPath"] + ".pub")
        except FileNotFoundError:
            say(f"Couldn't copy SSH public key : open {given}.pub: no such file or directory")
        public = subprocess.run(
            ["ssh-keygen", "-y", "-f", driver["SSHKeyPath"]],
            capture_output=True,
            check=False,
        ).stdout
    else:
        if host["DriverName"] == "generic":
            say("No SSH key specified. Assuming an existing key at the default location.")
        driver["SSHKeyPath"] = os.path.join(mdir, "id_rsa")
        ssh_keygen(driver["SSHKeyPath"], f"docker-machine {name}")
        with open(driver["SSHKeyPath"] + ".pub", "rb") as f:
            public = f.read()
    write_atomic(os.path.join(mdir, "authorized_keys"), public, 0o600)


def check_connection(
    store: Store, name: str, host: dict[str, Any], vm: dict[str, Any], engine: str
) -> None:
    """check.DefaultConnChecker at the end of a create: the engine's TLS, or (without an
    engine) whether its certificates would verify."""
    if vm["engine"]:
        try:
            engine_check(host, engine)
        except MachineError as exc:
            raise MachineError(
                f"Error creating machine: Error checking the host: {exc.message}"
            ) from None
    elif problem := verify_offline(store, name):
        raise MachineError(
            "Error creating machine: Error checking the host: " + cert_check_error(engine, problem)
        )


def machine_state(store: Store, name: str, host: dict[str, Any]) -> str:
    if host.get("DriverName") == "none":
        return "Running"
    if init_pid(store, name) is not None:
        return "Running"
    return "Stopped" if read_vm(store, name).get("phase") == "created" else "Error"


def current_ip(store: Store, name: str, host: dict[str, Any]) -> str:
    """Driver.GetIP: the cloud's answer now. After a start that moved the VM (power.py) it
    differs from the IPAddress config.json kept from the create, as amazonec2's does."""
    ip = str(host["Driver"].get("IPAddress", ""))
    if host.get("DriverName") == "local" and os.path.isdir(store.machine_dir(name)):
        return str(read_vm(store, name).get("moved_ip") or ip)
    return ip


def machine_url(store: Store, name: str, host: dict[str, Any]) -> str:
    """Driver.GetURL: tcp://IP:PORT while running (the driver's EnginePort, else 2376), else
    'Host is not running'."""
    driver = host["Driver"]
    if host.get("DriverName") == "none":
        return str(driver.get("URL", ""))
    if machine_state(store, name, host) != "Running":
        raise MachineError("Host is not running")
    ip = current_ip(store, name, host)
    host_part = f"[{ip}]" if ":" in ip else ip  # net.JoinHostPort
    return f"tcp://{host_part}:{drivers.engine_port(host)}" if ip else ""


def power_on(store: Store, name: str) -> None:
    vm = read_vm(store, name)
    if vm.get("phase") == "error" or "ip" not in vm:
        raise MachineError(f"Error starting {go_quote(name)}: the instance does not exist")
    kill_until_gone(lambda: machine_pids(store, name))  # strays, e.g. sshd of a killed init
    try:
        boot_vm(store, name, vm)
    except VmBootError as exc:
        kill_until_gone(lambda: machine_pids(store, name))
        raise MachineError(str(exc)) from None
    update_vm(store, name, phase="created")


def power_off(store: Store, name: str) -> None:
    """A clean shutdown: the init stops dockerd (and its containers), then everything else."""
    pid = init_pid(store, name)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while init_pid(store, name) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    kill_until_gone(lambda: machine_pids(store, name))
