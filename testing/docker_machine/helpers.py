"""Helpers for tests: what happens to a machine behind docker-machine's back (a VM dies,
its sshd dies, its host key changes), and what is left of a storage."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import time

from .certs import ssh_keygen
from .common import NAME_RE
from .drivers import DRIVERS
from .faults import set_faults
from .gotext import go_json
from .machines import address
from .netns import (
    NETNS_DIR,
    claimed_indexes,
    cmdline,
    descendants,
    destroy_vm,
    init_pid,
    ip_cmd,
    kill_until_gone,
    machine_pids,
    netns_name,
    process_table,
    read_claims,
    release_netns,
    vm_markers,
)
from .store import Store, machine_names, read_vm, write_atomic

__all__ = [
    "kill_sshd",
    "kill_vm",
    "leftover_namespaces",
    "machine_names",
    "make_driver_missing",
    "rotate_host_key",
    "set_faults",
    "storage_pids",
    "teardown_all",
    "vm_pids",
]


def vm_pids(storage: str, name: str) -> list[int]:
    """Every live process of the machine's VM."""
    return machine_pids(Store(storage), name)


def kill_vm(storage: str, name: str) -> None:
    """The VM dies: all its processes are killed and its network link removed; the entry stays."""
    store = Store(storage)
    kill_until_gone(lambda: machine_pids(store, name))
    for index in claimed_indexes(store, name):
        ip_cmd("link", "del", f"dmdh{index}", check=False)


def _sshd_pid(store: Store, name: str) -> int | None:
    mdir = store.machine_dir(name)
    try:
        with open(os.path.join(mdir, "sshd.pid"), encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if vm_markers(mdir)["sshd"].search(cmdline(pid)) else None


def kill_sshd(storage: str, name: str) -> None:
    """Only the VM's SSH server dies: its listener and every session it serves."""
    store = Store(storage)

    def find() -> list[int]:
        pid = _sshd_pid(store, name)
        if pid is None:
            return []
        table = process_table()
        return sorted(
            p for p in {pid} | descendants({pid}, table) if table.get(p, (0, "Z"))[1] != "Z"
        )

    kill_until_gone(find)


def rotate_host_key(storage: str, name: str) -> None:
    """Give the VM a new SSH host key; its sshd restarts on the same address."""
    store = Store(storage)
    mdir = store.machine_dir(name)
    key = os.path.join(mdir, "ssh_host_ed25519_key")
    ssh_keygen(key + ".new", f"host {name}")
    os.replace(key + ".new.pub", key + ".pub")
    os.replace(key + ".new", key)
    old, pid = _sshd_pid(store, name), init_pid(store, name)
    if pid is None:
        return
    os.kill(pid, signal.SIGHUP)
    vm = read_vm(store, name)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        new = _sshd_pid(store, name)
        if new is not None and new != old:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((address(vm), vm["port"]), 1) as s,
            ):
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-"):
                    return
        time.sleep(0.02)
    raise RuntimeError(f"sshd of {name} did not come back after the host key changed")


def _names_in_processes(store: Store) -> set[str]:
    machines = re.escape(store.machines.encode())
    disks = re.escape(store.path("vms").encode())
    patterns = [
        re.compile(machines + rb"/([^/\0 ]+)(?:/sshd_config[\0 ]|\0)"),
        re.compile(disks + rb"/([^/\0 ]+)/docker/"),
    ]
    names = set()
    for pid in process_table():
        for pattern in patterns:
            for match in pattern.finditer(cmdline(pid)):
                names.add(match.group(1).decode(errors="replace"))
    return names


def _claimed_names(store: Store) -> set[str]:
    return {c.get("name", "") for c in read_claims().values() if c.get("storage") == store.root}


def teardown_all(storage: str) -> None:
    """Remove every machine of the storage: processes, namespaces, links, disks, entries.
    Idempotent."""
    store = Store(storage)
    names = set(machine_names(store)) | _names_in_processes(store) | _claimed_names(store)
    for name in sorted(n for n in names if n):
        destroy_vm(store, name)
        if NAME_RE.match(name):
            shutil.rmtree(store.machine_dir(name), ignore_errors=True)
    for index in claimed_indexes(store):  # claims whose machine name is unusable
        release_netns(index)
    shutil.rmtree(store.path("vms"), ignore_errors=True)  # disks of VMs no process names


def leftover_namespaces(storage: str) -> list[str]:
    """This storage's namespaces (or host-side links) that still exist."""
    store = Store(storage)
    left = []
    for index in claimed_indexes(store):
        if os.path.exists(os.path.join(NETNS_DIR, netns_name(index))):
            left.append(netns_name(index))
        if os.path.exists(f"/sys/class/net/dmdh{index}"):
            left.append(f"dmdh{index}")
    return left


def storage_pids(storage: str) -> list[int]:
    """Live processes of any machine of this storage, found by command line and namespace."""
    store = Store(storage)
    table = process_table()
    names = _names_in_processes(store) | set(machine_names(store)) | _claimed_names(store)
    return sorted({p for n in names if n for p in machine_pids(store, n, table)})


def make_driver_missing(storage: str, name: str, driver: str = "gone") -> None:
    """The entry's driver plugin is no longer installed: its DriverName becomes one the
    double does not know (as when docker-machine-driver-<driver> left the PATH)."""
    if driver in DRIVERS:
        raise ValueError(f"the double knows the driver {driver!r}")
    path = os.path.join(Store(storage).machine_dir(name), "config.json")
    with open(path, encoding="utf-8") as f:
        host = json.load(f)
    host["DriverName"] = driver
    write_atomic(path, go_json(host, indent=4).encode())
