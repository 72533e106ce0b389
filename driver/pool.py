"""A warm pool of ready, single-use machines.

The pool service (`gitlab-machine-driver pool`) keeps `idle_count` machines
created, SSH-ready with pinned host keys, Docker-ready and with images
pulled. Prepare claims one by an atomic rename of its marker file
(ready/NAME -> claimed/NAME): two jobs can never get the same machine, and
claiming needs no service, so jobs run whether it is up or not. A claimed
machine belongs to its job and is destroyed by the job's cleanup: it never
goes back to the pool.

    <state_dir>/pool/machines/NAME/   info.json, ssh_config, known_hosts
    <state_dir>/pool/ready/NAME       marker: idle and ready to claim
    <state_dir>/pool/claimed/NAME     marker: taken by a prepare, being handed over
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import structlog

from driver import engine, limits, log, metrics, provision, ssh, tools
from driver.errors import DriverError
from driver.machine import DockerMachine
from driver.settings import PoolSettings, Settings
from driver.state import MachineDir, write_private


def cron_fields(period: str) -> str:
    """docker+machine's cron (seconds first, year last, both optional) as 5 fields."""
    from croniter import croniter

    fields = period.split()
    if len(fields) == 7:
        fields = fields[1:6]
    elif len(fields) == 6:
        fields = fields[:5]
    five = " ".join(fields)
    if len(fields) != 5 or not croniter.is_valid(five):
        raise ValueError(f"{period!r} is not a cron expression like '* * 9-17 * * mon-fri *'")
    return five


@dataclass(frozen=True)
class Target:
    idle_count: int
    idle_count_min: int
    idle_scale_factor: float
    idle_time: float

    def idle_wanted(self, in_use: int) -> int:
        if self.idle_scale_factor <= 0:
            return self.idle_count
        scaled = math.ceil(in_use * self.idle_scale_factor)
        return max(self.idle_count_min, min(self.idle_count, scaled))


def current_target(pool: PoolSettings, now: datetime) -> Target:
    """The base settings, overridden by the last autoscaling period that matches now."""
    from croniter import croniter

    target = Target(pool.idle_count, pool.idle_count_min, pool.idle_scale_factor, pool.idle_time)
    for period in pool.autoscaling:
        local = now.astimezone(ZoneInfo(period.timezone)).replace(tzinfo=None)
        if any(croniter.match(cron_fields(p), local) for p in period.periods):
            target = Target(
                period.idle_count if period.idle_count is not None else target.idle_count,
                period.idle_count_min
                if period.idle_count_min is not None
                else target.idle_count_min,
                period.idle_scale_factor
                if period.idle_scale_factor is not None
                else target.idle_scale_factor,
                period.idle_time if period.idle_time is not None else target.idle_time,
            )
    return target


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


def pool_name(settings: Settings) -> str:
    return f"{settings.machine.name_prefix}-p{secrets.token_hex(4)}"


class PoolService:
    """Keeps the pool at its target; one thread per create or removal in flight."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = PoolStore(settings.state_dir)
        self.dm = DockerMachine(settings)
        self.log = log.get()
        self.creating: set[str] = set()
        self.removing: set[str] = set()
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.last_health = 0.0

    # --- lifecycle

    def adopt(self) -> None:
        """On start: keep what can be vouched for, remove the rest."""
        for name in self.store.names():
            phase = self.store.phase(name)
            machine = self.store.load(name)
            if phase == "ready" and machine and self._healthy(machine):
                self.log.info("pool_adopted", machine=name)
                continue
            if phase == "claimed":
                continue  # a prepare is taking it over; the sweeper handles a dead one
            if phase == "ready" and not self.store.unready(name):
                continue
            self._remove(name, f"cannot vouch for it after a restart (was {phase})")

    def run(self, stop: threading.Event) -> None:
        self.adopt()
        while not stop.is_set():
            self.tick(time.time())
            stop.wait(self.settings.pool.check_interval)
        self.shutdown()

    def shutdown(self) -> None:
        self.stopping.set()
        if self.settings.pool.drain_on_stop:
            for name in self.store.ready():
                if self.store.unready(name):
                    self._remove(name, "draining on stop")
        # A create in flight is let finish (it cannot be cut short cleanly), within bounds.
        deadline = time.monotonic() + self.settings.create.timeout + 60
        while (self.creating or self.removing) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = sorted(self.creating | self.removing)
        if left:
            log.warn(
                f"pool: stopped with {', '.join(left)} still being created or removed; "
                "`gitlab-machine-driver sweep` removes them (their creator is gone)"
            )
            self.log.error("pool_stopped_unfinished", machines=left)

    # --- the loop

    def tick(self, now: float) -> None:
        target = current_target(self.settings.pool, datetime.fromtimestamp(now).astimezone())
        in_use = self.in_use()
        wanted = target.idle_wanted(in_use)
        ready = self.store.ready()
        with self.lock:
            creating = len(self.creating)
        missing = wanted - len(ready) - creating
        growth = self.settings.pool.max_growth_rate
        if growth:
            missing = min(missing, growth - creating)
        cap = self.settings.limits.max_machines
        if cap:  # the host-wide cap holds for the pool too; jobs' own machines come first
            missing = min(missing, cap - limits.usage(self.settings.state_dir).machines)
        for _ in range(max(0, missing)):
            self._start(self._create_one)
        # Idle machines beyond the target go once they idled past idle_time.
        excess = len(ready) - wanted
        for name in ready:
            if excess <= 0:
                break
            machine = self.store.load(name)
            if machine and now - machine.ready_at > target.idle_time and self.store.unready(name):
                self._start(functools.partial(self._remove, name, "idle past idle_time"))
                excess -= 1
        if now - self.last_health >= self.settings.pool.health_interval:
            self.last_health = now
            for name in self.store.ready():
                machine = self.store.load(name)
                if machine and not self._healthy(machine) and self.store.unready(name):
                    self._start(functools.partial(self._remove, name, "failed its health check"))
        self.write_status(wanted, in_use)

    def in_use(self) -> int:
        jobs = self.settings.state_dir / "jobs"
        return sum(1 for _ in jobs.glob("*/state.json")) if jobs.exists() else 0

    def _start(self, work: Callable[[], None]) -> None:
        threading.Thread(target=work, daemon=True).start()

    # --- one machine

    def _create_one(self) -> None:
        name = pool_name(self.settings)
        structlog.contextvars.bind_contextvars(machine=name)  # this thread's log lines
        with self.lock:
            self.creating.add(name)
        timer = log.Timer()
        machine = PoolMachine(name=name, created=time.time(), creator_pid=os.getpid())
        try:
            self.store.save(machine)  # before the create: a crash leaves a name to remove
            labels = {
                "owner": self.settings.machine.name_prefix,
                "pool": "1",
                "created": str(int(machine.created)),
            }
            provision.create(self.dm, name, labels, self.settings, self._progress(name))
            metrics.count(self.settings.state_dir, "machine_creations_total", {"by": "pool"})
            self._make_ready(machine)
            machine.ready_at = time.time()
            self.store.save(machine)
            if self.stopping.is_set() and self.settings.pool.drain_on_stop:
                raise DriverError("the service is stopping")
            self.store.mark_ready(name)
            self.log.info("pool_machine_ready", machine=name, seconds=timer.seconds)
        except Exception as e:  # every failure: remove what was made, remember why
            self._error(f"{name}: {e}")
            self._remove(name, "its preparation failed")
        finally:
            with self.lock:
                self.creating.discard(name)

    def _make_ready(self, machine: PoolMachine) -> None:
        settings = self.settings
        info = self.dm.inspect(machine.name)
        if info is None:
            raise DriverError(f"docker-machine created {machine.name} but does not know it")
        machine.host, machine.port = info.host, info.ssh_port
        machine.user, machine.key_path = settings.ssh.user or info.ssh_user, info.ssh_key
        machine.engine_url = info.engine_url
        mdir = self.store.machine_dir(machine.name)
        machine.write_ssh_config(mdir, settings)
        ssh.wait_ready(
            mdir,
            target=f"{machine.user}@{machine.host}:{machine.port}",
            timeout=settings.ssh.ready_timeout,
            connect_timeout=settings.ssh.connect_timeout,
            progress=self._progress(machine.name),
        )
        tools.check(settings, mdir)
        ssh.stop_master(mdir)  # the job opens its own; an idle master would only linger
        if settings.docker.check or settings.pool.images:
            engine.wait_ready(info, timeout=settings.docker.ready_timeout, progress=lambda _: None)
        if settings.pool.images:
            engine.pull(info, settings.pool.images, _registry_auth(settings.pool))

    def _healthy(self, machine: PoolMachine) -> bool:
        mdir = self.store.machine_dir(machine.name)
        result = ssh.run(mdir, "true", timeout=self.settings.ssh.connect_timeout + 5, check=False)
        ssh.stop_master(mdir)
        return result.exit_code == 0

    def _remove(self, name: str, why: str) -> None:
        structlog.contextvars.bind_contextvars(machine=name)
        with self.lock:
            self.removing.add(name)
        try:
            self.log.info("pool_removing", machine=name, reason=why)
            ssh.stop_master(self.store.machine_dir(name))
            provision.destroy(
                self.dm, name, self.settings, self._progress(name), quiet_if_missing=True
            )
            self.store.forget(name)
        except Exception as e:
            self._error(f"{name}: removing failed: {e}")
        finally:
            with self.lock:
                self.removing.discard(name)

    def _progress(self, name: str) -> Callable[[str], None]:
        return lambda message: self.log.info("pool_progress", machine=name, message=message)

    def _error(self, message: str) -> None:
        self.log.error("pool_error", error=message)
        with self.lock:
            self.errors = [*self.errors[-9:], f"{time.strftime('%H:%M:%S')} {message}"]

    # --- status

    def write_status(self, wanted: int, in_use: int) -> None:
        with self.lock:
            status = {
                "pid": os.getpid(),
                "updated": time.time(),
                "idle_wanted": wanted,
                "in_use": in_use,
                "creating": sorted(self.creating),
                "removing": sorted(self.removing),
                "errors": list(self.errors),
            }
        self.store.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.store.root / "status.json", json.dumps(status))


def _registry_auth(pool: PoolSettings) -> dict[str, str] | None:
    if not pool.registry_username or pool.registry_password_file is None:
        return None
    password = pool.registry_password_file.read_text().strip()
    return {"username": pool.registry_username, "password": password}
