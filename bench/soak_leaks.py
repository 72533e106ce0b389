"""The soak's leak check: whatever is left of the world after every job and sweep."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver.state import StateDir
from testing import docker_machine as double
from testing.world import Env

SETTLE_SECONDS = 15.0  # for VM and driver processes to go after the last job


@dataclass
class Leaks:
    machines: list[str] = field(default_factory=list)
    job_dirs: list[str] = field(default_factory=list)
    vm_pids: list[int] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    driver_processes: list[str] = field(default_factory=list)
    runner_temp: list[str] = field(default_factory=list)
    pool_records: list[str] = field(default_factory=list)
    tombstones: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, list[Any]]]:
        return [
            ("machines leaked", self.machines),
            ("job state dirs left", self.job_dirs),
            ("VM processes leaked", self.vm_pids),
            ("namespaces leaked", self.namespaces),
            ("driver processes leaked", self.driver_processes),
            ("runner temp dirs left", self.runner_temp),
            ("pool records left", self.pool_records),
            ("tombstones left", self.tombstones),
        ]

    @property
    def total(self) -> int:
        return sum(len(items) for _, items in self.rows())


def world_processes(world: Env, exclude: set[int]) -> list[str]:
    """Processes naming this world on their command line, or `-m driver` ones with it in
    their environment (the VM processes of `exclude` and this process aside)."""
    mark = str(world.base)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        text = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
        ours = mark in text
        if not ours and "-m driver" in text:
            try:
                ours = mark.encode() in Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                ours = False
        if ours:
            found.append(f"{entry} {text[:160]}")
    return found


def find_leaks(world: Env) -> Leaks:
    storage = str(world.storage)
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        vm_pids = double.storage_pids(storage)
        if not vm_pids and not world_processes(world, set()):
            break
        time.sleep(0.5)
    vm_pids = double.storage_pids(storage)
    temp = sorted(p.name for p in world.runner_temp.iterdir()) if world.runner_temp.exists() else []
    state = StateDir(world.state_dir)
    return Leaks(
        machines=world.machines(),
        job_dirs=world.job_dirs(),
        vm_pids=vm_pids,
        namespaces=double.leftover_namespaces(storage),
        driver_processes=world_processes(world, set(vm_pids)),
        runner_temp=temp,
        pool_records=state.pool_names(),
        tombstones=[t.key for t in state.tombstones()],
    )
