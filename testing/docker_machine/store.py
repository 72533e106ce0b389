"""docker-machine's storage directory and the double's own files in it.

<storage>/certs/, <storage>/machines/<NAME>/config.json as docker-machine keeps
them; the double adds <storage>/double.json (faults and settings, see faults.py),
<storage>/calls.log (every invocation), <storage>/orphans.log (machines whose
entry went while the "cloud" kept the VM), <machine>/vm.json and a few more files of
its simulated VM, and <storage>/vms/<NAME>/ (the VM's "disk": its engine's data; a
real machine dir holds no sockets or device files, so neither does the double's).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from .common import NAME_RE, MachineError, does_not_exist
from .gotext import go_json


class Store:
    """docker-machine's storage directory (-s / MACHINE_STORAGE_PATH)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.machines = os.path.join(self.root, "machines")
        self.certs = os.path.join(self.root, "certs")

    def machine_dir(self, name: str) -> str:
        return os.path.join(self.machines, name)

    def cert(self, file: str) -> str:
        return os.path.join(self.certs, file)

    def path(self, file: str) -> str:
        return os.path.join(self.root, file)


# --- files ---------------------------------------------------------------------------------------


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """The double's own files, which other invocations read at any moment: aside, then rename."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_plain(path: str, data: bytes, mode: int) -> None:
    """A non-atomic write, as docker-machine writes its certificates."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def vm_disk(mdir: str) -> str:
    """<storage>/vms/<NAME> for the machine dir <storage>/machines/<NAME>."""
    return os.path.join(os.path.dirname(os.path.dirname(mdir)), "vms", os.path.basename(mdir))


# --- machine entries -----------------------------------------------------------------------------


def machine_exists(store: Store, name: str) -> bool:
    # Upstream's filestore says a machine exists when its directory does. Invalid
    # names never exist here, so no command can reach outside the store.
    return bool(NAME_RE.match(name)) and os.path.isdir(store.machine_dir(name))


def machine_names(storage: str | Store) -> list[str]:
    """Filestore.List: every directory under machines/ not starting with a dot."""
    store = storage if isinstance(storage, Store) else Store(storage)
    try:
        return sorted(
            e
            for e in os.listdir(store.machines)
            if not e.startswith(".") and os.path.isdir(store.machine_dir(e))
        )
    except FileNotFoundError:
        return []


def load_host(store: Store, name: str) -> dict[str, Any]:
    """Filestore.Load: a reader racing a save or a removal may find config.json gone or empty."""
    if not machine_exists(store, name):
        raise MachineError(does_not_exist(name))
    path = os.path.join(store.machine_dir(name), "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise MachineError(f"open {path}: no such file or directory") from None
    try:
        host = json.loads(text)
    except ValueError as exc:
        raise MachineError(f"Error getting migrated host: {json_error(text, exc)}") from None
    if not isinstance(host, dict):
        raise MachineError("Error getting migrated host: json: cannot unmarshal into a host")
    return host


def json_error(text: str, exc: ValueError) -> str:
    """encoding/json's words for what Python's json refused."""
    pos = getattr(exc, "pos", 0)
    if pos >= len(text.rstrip()):
        return "unexpected end of JSON input"
    return f"invalid character {text[pos]!r} looking for beginning of value"


def save_host(store: Store, host: dict[str, Any]) -> None:
    """Filestore.Save, non-atomic as upstream's.

    The first save writes config.json in place (a reader may find it empty); later
    saves write a temp file, delete config.json, then rename the temp file into place
    (a reader may find it absent). double.json's "save_gap" widens both windows.
    """
    mdir = store.machine_dir(host["Name"])
    os.makedirs(mdir, mode=0o700, exist_ok=True)
    path = os.path.join(mdir, "config.json")
    data = go_json(host, indent=4).encode()
    gap = float(settings(store).get("save_gap", 0.0) or 0.0)
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            time.sleep(gap)
            os.write(fd, data)
        finally:
            os.close(fd)
        return
    fd, tmp = tempfile.mkstemp(prefix="config.json.tmp", dir=mdir)  # ioutil.TempFile's name
    try:
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.unlink(path)
        time.sleep(gap)
        os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def remove_entry(store: Store, name: str) -> None:
    """Filestore.Remove (os.RemoveAll): config.json goes before its directory does."""
    mdir = store.machine_dir(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(mdir, "config.json"))
        time.sleep(float(settings(store).get("save_gap", 0.0) or 0.0))
    shutil.rmtree(mdir, ignore_errors=True)


def read_vm(store: Store, name: str) -> dict[str, Any]:
    """The double's own record of a simulated VM (<machine>/vm.json)."""
    vm = read_json(os.path.join(store.machine_dir(name), "vm.json"))
    return vm if isinstance(vm, dict) else {}


def update_vm(store: Store, name: str, **fields: Any) -> dict[str, Any]:
    vm = read_vm(store, name)
    vm.update(fields)
    write_atomic(os.path.join(store.machine_dir(name), "vm.json"), json.dumps(vm).encode())
    return vm


# --- settings and the call log -------------------------------------------------------------------


def settings(store: Store) -> dict[str, Any]:
    """<storage>/double.json, read afresh by each invocation ({} when there is none)."""
    data = read_json(store.path("double.json"))
    return data if isinstance(data, dict) else {}


def log_call(store: Store, argv: list[str]) -> None:
    os.makedirs(store.root, exist_ok=True)
    line = f"{time.time():.6f} {' '.join(argv)}\n".encode()
    fd = os.open(store.path("calls.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write per line: O_APPEND keeps parallel writers apart
    finally:
        os.close(fd)
