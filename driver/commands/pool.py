"""pool: the warm-pool service (`pool run`), what it holds (`pool status`),
removing its ready machines by hand (`pool drain`), and replaying jobs through
its policies (`pool replay`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import FrameType

from driver import log, metrics, state_owner
from driver.commands import pool_replay
from driver.commands.sweep import run_sweep
from driver.docker_machine import DockerMachine
from driver.errors import ConfigError, DriverError
from driver.parsed import integer, items, table
from driver.pool import served
from driver.pool.schedule import current_target
from driver.pool.service import PoolService
from driver.settings import Settings, config_path, load_settings
from driver.state import PoolPhase, StateDir, machine_counts
from driver.sweeper import Sweep


def main(args: argparse.Namespace) -> int:
    if args.action == "replay":  # the admin's jobs through the pool's policies: no config
        return pool_replay.main(args)
    settings = load_settings(args.config_path)
    if args.action == "status":
        return status(settings, as_json=args.json)
    if args.action == "drain":
        state_owner.claim(settings, config_path(args.config_path))
        log.setup(settings.log_path, stage="pool-drain")
        return drain(settings, progress=log.say)
    # Another config with other [machine] settings on this state dir: no pool for either.
    state_owner.claim(settings, config_path(args.config_path))
    return serve(settings, config_path(args.config_path))


def serve(settings: Settings, config_file: Path | None = None) -> int:
    if not settings.pool.enabled:
        raise ConfigError(
            "the warm pool is off: [pool] idle_count and stopped_count are 0 and no "
            "autoscaling period sets one",
            hint="set [pool] idle_count (machines kept ready) in the config file",
        )
    log.setup(settings.log_path, stage="pool")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service = PoolService(settings, config_file=config_file)
    # The single-instance lock first: a second service must neither sweep nor take the
    # metrics port before it is told another one serves this state dir.
    with service.only_instance():
        if settings.pool.metrics_address:
            _serve_metrics(settings, service)
        # Machines a dead runner left behind are reclaimed before the pool grows; a sweep
        # that cannot finish (GitLab unreachable, say) must not keep the pool down.
        try:
            _sweep_once(settings)
        except DriverError as e:
            log.warn(f"pool: the start-up sweep failed, going on without it: {e}")
        if settings.pool.policy == "demand":
            target = settings.pool.hit_rate_target
            keeping = f"ready machines for {target:.1%} of jobs (policy demand)"
        else:
            keeping = f"{settings.pool.idle_count} machine(s) ready"
        if settings.pool.lookahead and settings.gitlab.configured:
            keeping += ", and one for each job GitLab says is coming"
        elif settings.pool.learn_shapes:
            keeping += ", and for the next stages the pipeline shapes learned here foretell"
        if settings.pool.stopped_count:
            keeping += f", and {settings.pool.stopped_count} made ready then stopped"
        log.say(f"pool: keeping {keeping} (Ctrl-C or SIGTERM stops)")
        service.run(stop, holding_lock=True)
    log.say("pool: stopped")
    return 0


def drain(
    settings: Settings,
    *,
    progress: Callable[[str], None],
    workers: int = 8,
    dm: DockerMachine | None = None,
) -> int:
    """Remove every ready (or stopped) machine of the pool now, several at once: for a
    pool turned off, or a service stopped without its drain. Refused while a service runs
    (it would make new ones); machines being claimed or worked on are left alone."""
    state = StateDir(settings.state_dir)
    if served.service_running(state):
        raise DriverError(
            "a pool service is running on this state dir: it would make new machines",
            hint="stop it first (systemctl stop gitlab-machine-driver-pool@NAME); with "
            "[pool] drain_on_stop it drains itself",
        )
    look = Sweep(dm or DockerMachine(settings), settings, job_status=None)

    def one(name: str) -> bool:
        with look.holding(name) as held:
            if not held or not state.withdraw(name):
                progress(f"{name}: kept (a job claimed it, or someone works on it)")
                return False
            progress(f"{name}: removing (draining the warm pool)")
            return look.remove(look.facts(name, locked=True), progress)

    names = state.ready() + state.ready("stopped")
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(names)))) as pool:
        results = list(pool.map(one, names))
    progress(f"pool: {sum(results)} of {len(names)} ready or stopped machine(s) removed")
    log.get().info("pool_drained", removed=sum(results), ready=len(names))
    return 0 if all(results) else 1


def _sweep_once(settings: Settings) -> None:
    problem = run_sweep(settings, dry_run=False, progress=log.say).configuration_problem
    if problem:
        log.warn(f"pool: {problem}")


def _serve_metrics(settings: Settings, service: PoolService) -> None:
    from prometheus_client import start_http_server

    registry = metrics.registry(settings.state_dir)
    host, _, port = settings.pool.metrics_address.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    log.say(f"pool: Prometheus metrics on http://{host or '127.0.0.1'}:{port}/metrics")


def status(settings: Settings, *, as_json: bool) -> int:
    state = StateDir(settings.state_dir)
    now = time.time()
    machines = []
    for name in state.pool_names():
        info = state.load_pool(name)
        phase = state.pool_phase(name)
        created = info.created if info else 0.0
        machines.append(
            {
                "name": name,
                "state": "idle" if phase == PoolPhase.READY else str(phase),
                "age_seconds": round(now - created) if created else None,
                "idle_seconds": round(now - info.ready_at) if info and info.ready_at else None,
            }
        )
    try:
        service = table(json.loads(state.pool_status_file.read_text()))
    except (OSError, ValueError):
        service = {}
    target = current_target(settings.pool, datetime.now().astimezone()).idle_count
    if settings.pool.policy == "demand":  # the service's own figure: it follows the jobs
        target = integer(service.get("idle_wanted", 0))
    running = flock_held(state.lock("pool-service").path)
    counts = machine_counts(state)
    report: dict[str, object] = {
        # By its lock, held while it lives: a status file's age says nothing of a service
        # that is busy (a slow create) or of one that died a moment ago.
        "service": {**service, "running": running},
        "target_idle": target,
        "counts": counts,
        "machines": machines,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"service: {'running, pid ' + str(service.get('pid')) if running else 'not running'}")
    print("machines: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"target idle now: {target}")
    if service.get("jobs_announced"):
        print(
            "jobs announced by GitLab (still to come in pipelines here): "
            f"{service['jobs_announced']}"
        )
    calls = service.get("gitlab_api_calls")
    if isinstance(calls, dict) and calls:  # since the service started
        print("GitLab API requests: " + ", ".join(f"{k} {v}" for k, v in sorted(calls.items())))
    for m in machines:
        idle = f", idle {m['idle_seconds']}s" if m["idle_seconds"] is not None else ""
        print(f"  {m['name']}  {m['state']}  age {m['age_seconds']}s{idle}")
    for error in items(service.get("errors")):
        print(f"last error: {error}")
    return 0


def flock_held(path: Path) -> bool:
    """Whether a process holds an flock on ``path``, read from /proc/locks: taking the lock
    to find out would, for that moment, make a starting service think another one runs."""
    try:
        st = path.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return False
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; "1: -> FLOCK ..." waits for it.
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        major, minor, inode = [*fields[5].split(":"), "", "", ""][:3]
        try:
            if (int(major, 16), int(minor, 16), int(inode)) == (
                os.major(st.st_dev),
                os.minor(st.st_dev),
                st.st_ino,
            ):
                return True
        except ValueError:
            continue
    return False
