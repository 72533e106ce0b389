"""What a `start` of a stopped machine may change, as docker-machine v0.16 and its cloud
drivers do it, and `regenerate-certs`.

docker/machine libmachine/host/host.go: Host.Start runs the driver's Start and waits
(mcnutils.WaitFor, 60 x 3 s) for the Running state; nothing else. commands/start.go
then says "Started machines may have new IP addresses. You may need to re-run the
`docker-machine env` command." drivers/amazonec2/amazonec2.go: Start is StartInstances
and a wait; GetIP asks the cloud each time (a stopped instance's public address is
released: it comes back with another one), while Driver.IPAddress in config.json keeps
the address of the create. So after such a start `ip`, `url` and `ssh` name the new
address, `inspect` (the store only) the old one, and the engine's server certificate,
made at create for the old address, fails TLS until `regenerate-certs` makes a new one
(commands/regeneratecerts.go: configureAuth, which restarts dockerd).

"start_delay": SECONDS in double.json is a slow cloud's start (as "create_delay").
Faults (double.json), each {"times": N}:
  "start_new_address"   the VM comes back at a new address
  "start_fail"          the cloud refuses the start ({"message"} optional)
  "start_hang"          the start never returns
  "stop_fail"           the cloud refuses the stop ({"message"} optional)
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

from .certs import provision_certs
from .common import MachineError, go_quote, info
from .engine import engine_ping_unix
from .faults import request_id, take_fault
from .flags import HelpFlag, parse_command
from .machines import BOOT_TIMEOUT, current_ip, machine_state, write_sshd_config
from .netns import init_pid, ip_cmd
from .store import Store, load_host, read_vm, settings, update_vm, vm_disk

START_CLOUD_ERROR = (
    "InsufficientInstanceCapacity: Insufficient capacity to start the instance in the "
    "Availability Zone you requested."
)

STOP_CLOUD_ERROR = "InternalError: An internal error has occurred"


def start_faults(store: Store, name: str) -> None:
    """Before the VM boots: a cloud that refuses or hangs, or a new address."""
    fault = take_fault(store, "start_fail")
    if fault:
        message = str(fault.get("message") or START_CLOUD_ERROR)
        raise MachineError(f"{message}\n\tstatus code: 500, request id: {request_id()}")
    if take_fault(store, "start_hang"):
        while True:
            time.sleep(3600)
    if take_fault(store, "start_new_address"):
        move(store, name)
    delay = float(settings(store).get("start_delay", 0) or 0)
    if delay > 0:
        time.sleep(delay)  # a slow cloud


def stop_faults(store: Store) -> None:
    """Before the VM stops: a cloud that refuses (the VM keeps running)."""
    fault = take_fault(store, "stop_fail")
    if fault:
        message = str(fault.get("message") or STOP_CLOUD_ERROR)
        raise MachineError(f"{message}\n\tstatus code: 500, request id: {request_id()}")


def move(store: Store, name: str) -> None:
    """The stopped VM's next boot is at another address; its old one answers no more."""
    vm = read_vm(store, name)
    moves = int(vm.get("moves", 0)) + 1
    if vm["mode"] == "netns":
        base = (10 << 24) | ((213 + moves) << 16) | (int(vm["index"]) * 4 + 2)
        new = socket.inet_ntoa(base.to_bytes(4, "big"))
        ip_cmd("link", "del", f"dmdh{vm['index']}", check=False)  # remade with the new one
        update_vm(store, name, moves=moves, extra_ip=new, moved_ip=new)
    else:
        new = f"127.{moves}.0.1"
        write_sshd_config(store.machine_dir(name), f"{new}:{vm['port']}")
        update_vm(store, name, moves=moves, ip=new, moved_ip=new)


REGENERATE_FLAGS = [
    HelpFlag("force, f", "bool", "Force rebuild and do not prompt"),
    HelpFlag("client-certs", "bool", "Also regenerate client certificates and CA."),
]


def cmd_regenerate_certs(store: Store, args: list[str]) -> int:
    """A new server certificate for the machine's current address; dockerd restarts."""
    usage = "Regenerate TLS Certificates for a machine"
    values, names = parse_command(args, "regenerate-certs", usage, REGENERATE_FLAGS)
    if not names:
        raise MachineError("Error: Expected one machine name as an argument")
    if values.get("client-certs"):
        raise MachineError("Error: --client-certs is not supported by the docker-machine double")
    if not values.get("force"):
        raise MachineError("Error: the docker-machine double needs -f (it does not prompt)")
    info("Regenerating TLS certificates")
    for name in names:
        host = load_host(store, name)
        if machine_state(store, name, host) != "Running":
            raise MachineError(f"Error: Host {go_quote(name)} is not running")
        info("Waiting for SSH to be available...")
        info("Detecting the provisioner...")
        info("Copying certs to the local machine directory...")
        sans = host["HostOptions"]["AuthOptions"]["ServerCertSANs"] or []
        provision_certs(store, name, current_ip(store, name, host), sans)
        info("Copying certs to the remote machine...")
        info("Setting Docker configuration on the remote daemon...")
        restart_engine(store, name)
    return 0


def restart_engine(store: Store, name: str) -> None:
    vm: dict[str, Any] = read_vm(store, name)
    pid = init_pid(store, name)
    if not vm.get("engine") or pid is None:
        return
    pidfile = os.path.join(vm_disk(store.machine_dir(name)), "docker", "pid")
    old = dockerd_pid(pidfile)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + float(settings(store).get("boot_timeout", BOOT_TIMEOUT))
    # Until a new dockerd answers: the old one's socket may answer a moment more.
    while dockerd_pid(pidfile) in (None, old) or not engine_ping_unix(pid):
        if time.monotonic() > deadline:
            raise MachineError(
                "Error running provisioning: Unable to verify the Docker daemon is listening: "
                "Maximum number of retries (10) exceeded"
            )
        time.sleep(0.1)


def dockerd_pid(pidfile: str) -> str | None:
    try:
        with open(pidfile, encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None
