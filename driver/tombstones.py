"""Tombstones: machines whose docker-machine entry was force-removed while the VM may
still run in the cloud.

One per VM: ``<state_dir>/tombstones/<name>@<id>/`` holds a copy of the entry (its
regular files: config.json, keys, certificates) and ``tombstone.json``. The id is
the fingerprint of the entry's files, so a second VM of the same name that also
could not be removed gets a tombstone of its own, and burying the same VM twice
keeps one. A tombstone is made whole in a hidden dir and renamed into place: a copy
that fails leaves nothing. Each counts as a machine (the limits, the orphaned
gauge, `ls`) until the sweeper removes its VM properly, or an admin forgets it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

from driver.files import copy_file, rmtree, write_private

META_FILE = "tombstone.json"


class Tombstone(NamedTuple):  # not a dataclass: `run` imports this module, and must stay lean
    key: str  # its dir's name: <machine>@<fingerprint>; only <machine> if made by 0.1
    name: str  # the machine's name
    path: Path

    @property
    def entry(self) -> Path:
        return self.path / "entry"

    def meta(self) -> dict[str, object]:
        try:
            data = json.loads((self.path / META_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def same_vm(self, entry: Path) -> bool:
        """Whether ``entry`` (docker-machine's dir) is this tombstone's VM: the same files."""
        return entry.is_dir() and fingerprint(entry) == fingerprint(self.entry)


def fingerprint(entry: Path) -> str:
    """Of an entry's regular files, names and content ("" when it has none)."""
    import hashlib

    digest = hashlib.sha256()
    found = False
    with contextlib.suppress(OSError):
        for item in sorted(entry.iterdir()):
            if item.is_file() and not item.is_symlink():
                found = True
                digest.update(item.name.encode() + b"\0" + item.read_bytes() + b"\0")
    return digest.hexdigest()[:16] if found else ""


class Tombstones:
    def __init__(self, state_root: Path) -> None:
        self.root = state_root / "tombstones"

    def all(self) -> list[Tombstone]:
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith("."):
                continue  # one being made, or left by a bury that failed
            name = path.name.rpartition("@")[0] or path.name
            found.append(Tombstone(path.name, name, path))
        return found

    def of(self, name_or_key: str) -> list[Tombstone]:
        return [t for t in self.all() if name_or_key in (t.name, t.key)]

    def bury(self, name: str, entry: Path, why: str) -> Tombstone:
        """Keep a copy of ``entry`` to retry its VM's removal; the same VM keeps one
        tombstone. Raises OSError (or DriverError, disk full) and leaves nothing then."""
        fp = fingerprint(entry)
        key = f"{name}@{fp or os.urandom(8).hex()}"
        tombstone = Tombstone(key, name, self.root / key)
        if tombstone.path.is_dir():  # the same VM again: only its reason changes
            meta = {**tombstone.meta(), "why": why[-500:]}
            write_private(tombstone.path / META_FILE, json.dumps(meta) + "\n")
            return tombstone
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        making = self.root / f".{key}.{os.getpid()}"
        rmtree(making)
        try:
            making.mkdir(mode=0o700)
            if fp:
                (making / "entry").mkdir(mode=0o700)
                for item in entry.iterdir():
                    if item.is_file() and not item.is_symlink():
                        copy_file(item, making / "entry" / item.name)
            meta = {"name": name, "since": time.time(), "why": why[-500:]}
            write_private(making / META_FILE, json.dumps(meta) + "\n")
            os.rename(making, tombstone.path)
        except BaseException:
            rmtree(making)
            raise
        return tombstone

    def exhume(self, tombstone: Tombstone) -> None:
        """Drop it: hidden first (one rename), so a failed removal leaves no half of it."""
        gone = self.root / f".{tombstone.key}.gone.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(tombstone.path, gone)
        rmtree(gone)
