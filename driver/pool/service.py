"""The pool service: keeps the pool at its target, one thread per create or removal."""

from __future__ import annotations

import functools
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime

import structlog

from driver import engine, limits, log, metrics, provision, ssh, tools
from driver.docker_machine import DockerMachine
from driver.errors import DriverError
from driver.pool.schedule import current_target
from driver.pool.store import PoolMachine, PoolStore
from driver.settings import PoolSettings, Settings
from driver.state import write_private


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
            metrics.count(self.settings.state_dir, metrics.MACHINE_CREATIONS, {"by": "pool"})
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
