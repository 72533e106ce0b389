"""The warm pool's records in the state dir (see driver.pool)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from driver import limits, ssh
from driver.settings import Settings
from driver.state import MachineDir, write_private


@dataclass
class PoolMachine:
    name: str
    host: str = ""
    port: int = 22
    user: str = ""
    key_path: str = ""
    engine_url: str = ""
    created: float = 0.0
    ready_at: float = 0.0
    creator_pid: int = 0

    def write_ssh_config(self, where: MachineDir, settings: Settings) -> None:
        """Its SSH config in `where`: the pool's own dir, or the claiming job's."""
        ssh.write_config(
            where,
            settings.ssh,
            machine=self.name,
            host=self.host,
            port=self.port,
            user=self.user,
            key_path=self.key_path,
        )


class PoolStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "pool"

    def machine_dir(self, name: str) -> MachineDir:
        return MachineDir(self.root / "machines" / name)

    def _marker(self, phase: str, name: str) -> Path:
        return self.root / phase / name

    def names(self) -> list[str]:
        machines = self.root / "machines"
        return sorted(p.name for p in machines.iterdir()) if machines.exists() else []

    def ready(self) -> list[str]:
        """Ready machines, the longest idle first."""
        ready = self.root / "ready"
        if not ready.exists():
            return []
        markers = []
        for path in ready.iterdir():
            with contextlib.suppress(FileNotFoundError):
                markers.append((path.stat().st_mtime, path.name))
        return [name for _, name in sorted(markers)]

    def phase(self, name: str) -> str:
        for phase in ("ready", "claimed"):
            if self._marker(phase, name).exists():
                return phase
        return "creating" if self.machine_dir(name).path.exists() else "gone"

    def held(self, name: str) -> bool:
        """Still the pool's: idle, being created by a live service, or just being claimed."""
        phase = self.phase(name)
        if phase == "ready":
            return True
        if phase == "claimed":
            with contextlib.suppress(FileNotFoundError):
                return time.time() - self._marker("claimed", name).stat().st_mtime < 120
            return False
        machine = self.load(name)
        return phase == "creating" and machine is not None and limits.pid_alive(machine.creator_pid)

    def save(self, machine: PoolMachine) -> None:
        mdir = self.machine_dir(machine.name).path
        mdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(mdir / "info.json", json.dumps(asdict(machine)))

    def load(self, name: str) -> PoolMachine | None:
        try:
            data = json.loads((self.machine_dir(name).path / "info.json").read_text())
            return PoolMachine(**data)
        except (OSError, ValueError, TypeError):
            return None

    def mark_ready(self, name: str) -> None:
        (self.root / "ready").mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self._marker("ready", name), "")

    def claim(self) -> PoolMachine | None:
        """Take a ready machine, or None. Atomic: a rename succeeds for one caller only."""
        (self.root / "claimed").mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in self.ready():
            try:
                os.rename(self._marker("ready", name), self._marker("claimed", name))
            except FileNotFoundError:
                continue  # another job (or the service removing it) was faster
            machine = self.load(name)
            if machine is not None:
                return machine
            self.forget(name)
        return None

    def unready(self, name: str) -> bool:
        """Withdraw a ready machine from claims (before removing it); False if just claimed."""
        try:
            os.unlink(self._marker("ready", name))
        except FileNotFoundError:
            return False
        return True

    def forget(self, name: str) -> None:
        for phase in ("ready", "claimed"):
            self._marker(phase, name).unlink(missing_ok=True)
        shutil.rmtree(self.machine_dir(name).path, ignore_errors=True)
