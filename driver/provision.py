"""Making and destroying machines: retried, bounded, and never leaving one behind.

The same steps serve a job's prepare and the warm pool: `create`, then
`locate` (the address docker-machine reports), then `make_ready` (SSH with a
fresh pin, the tools the scripts need, the Docker engine, images); `destroy`
at the end, which keeps a tombstone of any machine it could only force-remove.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

from driver import engine, log, metrics, ssh, tools
from driver.docker_machine import DockerMachine, classify_failure
from driver.errors import CommandError, DriverError
from driver.settings import Settings
from driver.state import Address, Lock, MachineDir, StateDir, write_private

Progress = Callable[[str], None]


def ensure_certs(dm: DockerMachine, settings: Settings, progress: Progress) -> None:
    """Make docker-machine's shared CA and client certificates once, before any create.

    docker-machine makes them at the start of the first create, without locking:
    two first creates at once corrupt them. So the first caller, under a lock,
    has them made by a create with the `none` driver (no VM, instant) and removes
    that entry; every real create then runs in parallel.
    """
    if dm.certs_exist():
        return
    dm.storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = Lock(dm.storage / ".gitlab-machine-driver-certs.lock")
    with lock.held(settings.create.timeout, "the lock on docker-machine's certificates"):
        if dm.certs_exist():
            return  # someone else made them while we waited
        progress(f"Making docker-machine's certificates in {dm.storage} (first create here)")
        dm.make_certs(f"{settings.machine.name_prefix}-certs-{os.getpid()}")


def create(
    dm: DockerMachine,
    name: str,
    labels: dict[str, str],
    settings: Settings,
    progress: Progress,
) -> int:
    """Create ``name``, retrying with back-off; returns the attempt that succeeded.

    Whatever a failed attempt leaves (an Error entry, a half-made VM) is removed
    before the next attempt and after the last one.
    """
    attempts = settings.create.attempts
    delay = settings.create.backoff
    for attempt in range(1, attempts + 1):
        progress(
            f"Creating machine {name} with driver {settings.machine.driver} "
            f"(attempt {attempt}/{attempts})..."
        )
        timer = log.Timer()
        try:
            ensure_certs(dm, settings, progress)
            dm.create(name, labels, settings.create.timeout)
            log.get().info("machine_created", attempt=attempt, seconds=timer.seconds)
            metrics.observe(settings.state_dir, metrics.MACHINE_CREATE_SECONDS, timer.seconds)
            return attempt
        except CommandError as e:
            kind = classify_failure(e.output, e.exit_code)
            log.get().warning("create_failed", attempt=attempt, kind=kind, error=str(e))
            metrics.count(settings.state_dir, metrics.MACHINE_CREATION_FAILURES, {"kind": kind})
            progress(
                f"Attempt {attempt}/{attempts} to create {name} failed after "
                f"{timer.seconds:g}s ({kind.replace('_', ' ')}):\n{e}"
            )
            destroy(dm, name, settings, progress, quiet_if_missing=True)
            if kind == "permanent":
                raise DriverError(
                    f"could not create machine {name}: docker-machine refused the "
                    "configuration (see its error above); retrying cannot help",
                    hint="fix [machine] driver/options or the cloud credentials",
                ) from None
            if attempt == attempts:
                raise DriverError(
                    f"could not create machine {name} in {attempts} attempt(s); "
                    "the last error is shown above",
                    hint="check the machine driver, its options and the cloud's quotas; "
                    "the runner retries prepare on its own",
                ) from None
            if kind == "rate_limited":
                delay = min(delay * 2, settings.create.backoff_max)
        # Jitter keeps jobs that failed together from retrying together.
        wait = delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not secrecy
        progress(f"Retrying in {wait:.1f}s...")
        time.sleep(wait)
        delay = min(delay * 2, settings.create.backoff_max)
    raise AssertionError("unreachable")


def destroy(
    dm: DockerMachine,
    name: str,
    settings: Settings,
    progress: Progress,
    *,
    deadline: float | None = None,
    quiet_if_missing: bool = False,
) -> bool:
    """Remove ``name``: `rm -y` retried, then `rm -f`. True if it is certainly gone.

    False means the entry was dropped but the cloud may still run the VM: the
    warning names it so an admin can delete it by hand.
    """
    deadline = deadline or time.monotonic() + settings.cleanup.timeout
    if not dm.exists(name):
        if not quiet_if_missing:
            progress(f"Machine {name} does not exist: nothing to remove")
        return True
    attempts = settings.cleanup.remove_attempts
    last = ""
    for attempt in range(1, attempts + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 1:
            break
        timer = log.Timer()
        try:
            result = dm.remove(
                name, force=False, timeout=min(remaining, settings.cleanup.remove_timeout)
            )
        except CommandError as e:  # timed out
            last = str(e)
        else:
            if result.exit_code == 0:
                progress(f"Removed machine {name} in {timer.seconds:g}s")
                log.get().info("machine_removed", machine=name, seconds=timer.seconds)
                metrics.observe(settings.state_dir, metrics.MACHINE_REMOVE_SECONDS, timer.seconds)
                metrics.count(settings.state_dir, metrics.MACHINE_REMOVALS, {"result": "clean"})
                return True
            last = result.output
            if not dm.exists(name):
                return True
        progress(f"Removing {name} failed (attempt {attempt}/{attempts}): {last.splitlines()[-1:]}")
        if attempt < attempts:
            time.sleep(min(2.0 * attempt, max(0.0, deadline - time.monotonic())))
    # Last resort: drop the entry so it stops blocking, and keep a tombstone (a copy of
    # the entry) so the sweeper can retry the real removal and the orphan keeps counting.
    try:
        StateDir(settings.state_dir).graves.bury(name, dm.entry_dir(name), last or "timed out")
    except (OSError, DriverError) as e:
        # Without a tombstone the entry is the only trace of the VM: keep it (the
        # sweeper retries it as a machine no record names).
        log.warn(
            f"machine {name} could not be removed, and its entry could not be kept as a "
            f"tombstone ({e}); the entry stays. Last error: {last.strip()[-500:]}"
        )
        log.get().error("machine_not_removed", machine=name, error=last[-500:])
        return False
    result = dm.remove(name, force=True, timeout=max(10.0, deadline - time.monotonic()))
    log.warn(
        f"machine {name} could not be removed cleanly; its entry was force-removed "
        f"and the VM MAY BE ORPHANED in the cloud; the sweeper retries its removal "
        f"(`gitlab-machine-driver ls` shows it as a tombstone). Last error: "
        f"{(last or result.output).strip()[-500:]}"
    )
    log.get().error("machine_maybe_orphaned", machine=name, error=last[-500:])
    metrics.count(settings.state_dir, metrics.MACHINE_REMOVALS, {"result": "maybe_orphaned"})
    return False


def locate(dm: DockerMachine, name: str, settings: Settings) -> Address:
    """Where ``name`` is, as docker-machine's entry says (the SSH user may be overridden)."""
    info = dm.inspect(name)
    if info is None:
        raise DriverError(f"docker-machine created {name} but does not know it afterwards")
    return Address(
        host=info.host,
        port=info.ssh_port,
        user=settings.ssh.user or info.ssh_user,
        key_path=info.ssh_key,
        ca_cert=info.ca_cert,
        client_cert=info.client_cert,
        client_key=info.client_key,
    )


def make_ready(
    dm: DockerMachine,
    name: str,
    address: Address,
    where: MachineDir,
    settings: Settings,
    progress: Progress,
    *,
    engine_needed: bool = False,
    runner_needed: bool = True,
    reached: Callable[[str], None] = lambda step: None,
) -> dict[str, float]:
    """Make a created machine ready for jobs; the seconds each step took.

    SSH is pinned afresh (a machine recreated under the same name has new keys),
    the scripts' tools are checked, and the engine is asked for at the address
    docker-machine reports (its port is the driver's, never assumed): with
    ``[docker] check``, or when the caller needs it (the pool, to pull images).
    ``reached`` is told each step as it starts ("ssh", "tools", "engine"): where a
    failure happened, for the pool's failure reasons.
    """
    timings = {}
    # Empty, and 0600 before ssh appends the key it meets first (ssh would create it 0644).
    write_private(where.known_hosts, "")
    ssh.write_config(where, settings.ssh, machine=name, address=address)
    step = log.Timer()
    reached("ssh")
    ssh.wait_ready(
        where,
        target=address.ssh_target,
        timeout=settings.ssh.ready_timeout,
        connect_timeout=settings.ssh.connect_timeout,
        progress=progress,
    )
    timings["ssh"] = step.seconds
    progress(f"SSH is up in {step.seconds:g}s; host key pinned")
    reached("tools")
    tools.check(settings, where, runner_needed=runner_needed)
    if settings.docker.check or engine_needed:
        step = log.Timer()
        address.engine_url = dm.url(name)
        reached("engine")
        version = engine.wait_ready(
            engine.Engine.of(address), timeout=settings.docker.ready_timeout, progress=progress
        )
        timings["docker"] = step.seconds
        progress(f"Docker engine {version} answers at {address.engine_url} ({step.seconds:g}s)")
    return timings
