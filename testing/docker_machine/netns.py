"""The host side of simulated VMs: finding their processes, and their network namespaces.

When running as root each VM gets a network namespace `dmd-<index>` and a veth
pair (host `dmdh<index>`, VM `dmdm<index>`) on a /30 of 10.213.0.0/16. Which
storage owns which index is recorded host-wide under /run/dmd/claims, so parallel
test runs never collide and a half-made VM can always be found again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable

from .common import MachineError
from .store import Store, locked, read_json, read_vm, vm_disk, write_atomic

REGISTRY = "/run/dmd"
CLAIMS = os.path.join(REGISTRY, "claims")
NETNS_DIR = "/run/netns"
MAX_INDEX = 16384  # 10.213.0.0/16 holds this many /30 networks


# --- processes -----------------------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process on the host."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        table[int(entry)] = (int(fields[1]), fields[0].decode())
    return table


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def ancestors(table: dict[int, tuple[int, str]]) -> set[int]:
    """This process and its parents: never ours to kill."""
    chain, pid = set(), os.getpid()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        pid = table.get(pid, (0, ""))[0]
    return chain


def vm_markers(mdir: str) -> dict[str, re.Pattern[bytes]]:
    """Command lines only the VM's own processes have (never a host-side ssh client).

    sshd rewrites its title to "sshd: /usr/sbin/sshd -D -e -f <config> [listener] ...".
    """
    path = re.escape(mdir.encode())
    return {
        "init": re.compile(rb"_vm-init\0" + path + rb"\0"),
        "sshd": re.compile(path + rb"/sshd_config[\0 ]"),
        "dockerd": re.compile(re.escape(vm_disk(mdir).encode()) + rb"/docker/"),
    }


def machine_pids(
    store: Store, name: str, table: dict[int, tuple[int, str]] | None = None
) -> list[int]:
    """Every live process of a VM: in its namespace, or its init, sshd or dockerd, or a child."""
    table = table if table is not None else process_table()
    markers = vm_markers(store.machine_dir(name))
    inodes = set()
    for index in claimed_indexes(store, name):
        with contextlib.suppress(OSError):
            inodes.add(os.stat(os.path.join(NETNS_DIR, netns_name(index))).st_ino)
    roots = set()
    for pid, (_, state) in table.items():
        if state == "Z":
            continue
        in_netns = bool(inodes) and netns_inode(pid) in inodes
        if in_netns or any(m.search(cmdline(pid)) for m in markers.values()):
            roots.add(pid)
    found = roots | descendants(roots, table)
    mine = ancestors(table)
    return sorted(p for p in found if p not in mine and table.get(p, (0, "Z"))[1] != "Z")


def kill_until_gone(find: Callable[[], list[int]], timeout: float = 15.0) -> list[int]:
    """SIGKILL whatever `find` returns until it returns nothing; what is left on timeout."""
    deadline = time.monotonic() + timeout
    while pids := find():
        if time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    return []


def init_pid(store: Store, name: str) -> int | None:
    """The VM's init when it is alive (checked by its command line, not just the pid)."""
    pid = read_vm(store, name).get("init_pid")
    if not isinstance(pid, int):
        return None
    if not vm_markers(store.machine_dir(name))["init"].search(cmdline(pid)):
        return None
    return pid


# --- network namespaces ------------------------------------------------------------------------


def netns_name(index: int) -> str:
    return f"dmd-{index}"


def vm_addresses(index: int) -> tuple[str, str]:
    """(host side, VM side) of the index's /30 in 10.213.0.0/16."""
    base = (10 << 24) | (213 << 16) | (index * 4)
    host, vm = (socket.inet_ntoa((base + n).to_bytes(4, "big")) for n in (1, 2))
    return host, vm


def ip_cmd(
    *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [shutil.which("ip") or "/usr/sbin/ip", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        command = " ".join(("ip", *args))
        raise MachineError(
            "Error creating machine: Error in driver during machine creation: "
            f"{command}: {result.stderr.strip()}"
        )
    return result


def read_claims() -> dict[int, dict[str, str]]:
    claims = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(CLAIMS):
            if entry.isdigit():
                claim = read_json(os.path.join(CLAIMS, entry))
                if isinstance(claim, dict):
                    claims[int(entry)] = claim
    return claims


def claimed_indexes(store: Store, name: str | None = None) -> list[int]:
    return sorted(
        i
        for i, claim in read_claims().items()
        if claim.get("storage") == store.root and (name is None or claim.get("name") == name)
    )


def allocate_netns(store: Store, name: str) -> int:
    """Claim the lowest free index host-wide; `ip netns add` succeeding makes it ours."""
    os.makedirs(CLAIMS, exist_ok=True)
    # The claim names storage and machine before the namespace exists, so that a
    # create killed half-way leaves something `rm -f` and teardown_all can find.
    with locked(os.path.join(REGISTRY, "alloc.lock")):
        claims = read_claims()
        for index in range(MAX_INDEX):
            ns = os.path.join(NETNS_DIR, netns_name(index))
            claim = claims.get(index)
            if claim is not None:
                owner = Store(claim.get("storage", "/")).machine_dir(claim.get("name", ""))
                if os.path.exists(ns) or os.path.isdir(owner):
                    continue
            if os.path.exists(ns):
                continue  # someone else's namespace that has no claim: leave it alone
            path = os.path.join(CLAIMS, str(index))
            write_atomic(path, json.dumps({"storage": store.root, "name": name}).encode(), 0o644)
            if ip_cmd("netns", "add", netns_name(index), check=False).returncode == 0:
                return index
            os.unlink(path)
    raise MachineError(
        "Error creating machine: Error in driver during machine creation: no free network namespace"
    )


def ensure_link(index: int, extra_ip: str | None = None, *, moved: bool = False) -> None:
    """The veth pair between host and VM; recreated by `start` after kill_vm removed it.

    `extra_ip` (a generic host's given address) is added in the VM and routed to it from
    the host; the route goes with the link. `moved`: a VM a start gave a new address
    (testing/docker_machine/power.py): `extra_ip` is its only address, the old one answers
    no more, as a cloud's released public address does not.
    """
    host_if, vm_if = f"dmdh{index}", f"dmdm{index}"
    if os.path.exists(f"/sys/class/net/{host_if}"):
        return
    ns = netns_name(index)
    host_ip, vm_ip = vm_addresses(index)
    ip_cmd("link", "add", host_if, "type", "veth", "peer", "name", vm_if, "netns", ns)
    ip_cmd("-batch", "-", stdin=f"addr add {host_ip}/30 dev {host_if}\nlink set {host_if} up\n")
    if moved and extra_ip:
        inside = f"addr add {extra_ip}/32 dev {vm_if}\nlink set {vm_if} up\nlink set lo up\n"
        inside += f"route add {host_ip}/32 dev {vm_if}\n"
        ip_cmd("-n", ns, "-batch", "-", stdin=inside + f"route add default via {host_ip}\n")
        ip_cmd("route", "add", f"{extra_ip}/32", "dev", host_if)
        return
    inside = f"addr add {vm_ip}/30 dev {vm_if}\nlink set {vm_if} up\nlink set lo up\n"
    if extra_ip:
        inside += f"addr add {extra_ip}/32 dev {vm_if}\n"
    ip_cmd("-n", ns, "-batch", "-", stdin=inside + f"route add default via {host_ip}\n")
    if extra_ip:
        ip_cmd("route", "add", f"{extra_ip}/32", "via", vm_ip, "dev", host_if)


def remove_cgroups(index: int) -> None:
    """Container cgroups dockerd made under --cgroup-parent; a killed dockerd leaves them."""
    roots = [os.path.join("/sys/fs/cgroup", f"dmd-vm-{index}")]
    with contextlib.suppress(OSError):
        roots += [
            os.path.join("/sys/fs/cgroup", h, f"dmd-vm-{index}")
            for h in os.listdir("/sys/fs/cgroup")
        ]
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, _, _ in os.walk(root, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def release_netns(index: int) -> None:
    remove_cgroups(index)
    ip_cmd("link", "del", f"dmdh{index}", check=False)
    ip_cmd("netns", "del", netns_name(index), check=False)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(CLAIMS, str(index)))


def destroy_vm(store: Store, name: str) -> None:
    """Kill every process of the VM, give back its network, drop its disk; the store entry
    stays."""
    kill_until_gone(lambda: machine_pids(store, name))
    for index in claimed_indexes(store, name):
        release_netns(index)
    shutil.rmtree(vm_disk(store.machine_dir(name)), ignore_errors=True)
