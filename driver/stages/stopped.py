"""prepare's start of a stopped pool machine ([pool] stopped_count, driver.pool.stopped),
for a job that found no ready one: tens of seconds on a cloud instead of a create.

What a start may change is read, never assumed (docker-machine's own words after a
start: "Started machines may have new IP addresses"; testing/docker_machine/power.py
cites its source): the address is asked of the driver again (`docker-machine ip`:
amazonec2's `inspect` keeps the create's), and the engine's certificate, made for the
old address, is made again (`regenerate-certs`) when the address changed and the
driver talks to the engine over TLS (`[docker] check`, or image mode). What does not
change is the proof of identity: the host key pinned at the machine's creation. SSH
accepts that key only; another one (another VM answering there) is refused.

Any failure removes the machine, before the job log is told (it may be a closed
pipe), and the job creates its own machine.
"""

from __future__ import annotations

import time

from driver import engine, log, metrics, provision, ssh
from driver.docker_machine import DockerMachine
from driver.errors import Cancelled, DriverError
from driver.log import say
from driver.settings import Settings
from driver.stages.claim import new_record
from driver.stages.common import Stage
from driver.state import Address, JobDir, JobPhase, JobRecord, write_private


def take(stage: Stage, dm: DockerMachine) -> bool:
    """Claim a stopped pool machine for this job and start it; False if there is none,
    or it could not be used (it is removed then, and the job creates its own)."""
    settings, state, job_dir = stage.settings, stage.state, stage.job_dir
    if settings.pool.stopped_count <= 0:
        return False
    pooled = state.claim(stage.job.id, "stopped")
    if pooled is None:
        return False
    timer = log.Timer()
    name = pooled.name
    try:
        pinned_key = state.pool_dir(name).known_hosts.read_text()
    except OSError:
        pinned_key = ""  # no proof of identity: never started (see below)
    # The job owns it from here: its record names it for cleanup, the sweeper, a cancel.
    record = new_record(settings, stage.job, name)
    record.address = pooled.address
    write_private(job_dir.known_hosts, pinned_key, durable=False)
    job_dir.save(record)
    state.forget_pool(name)  # first: as driver.stages.claim.take_from_pool
    state.release_claims(stage.job.id)
    say(f"Starting stopped pool machine {name} (host key pinned at its creation)...")
    try:
        if not pinned_key.strip():  # a start would be wasted: no key would be accepted
            raise DriverError(f"no host key was pinned for {name} at its creation")
        start(settings, dm, job_dir, record, pooled.address)
    except Cancelled:  # the job is over: prepare's failure path removes it (its record)
        raise
    except Exception as e:  # any failure: the machine goes, the job creates its own
        refused = isinstance(e, ssh.HostKeyChanged)
        why = (e.message if isinstance(e, DriverError) else f"{type(e).__name__}: {e}").strip()
        # Removed before a word to the job log (the runner may be gone, its pipe closed).
        ssh.stop_master(job_dir)
        provision.destroy(dm, name, settings, log.to_admin_log)
        for path in (job_dir.state_file, job_dir.known_hosts, job_dir.ssh_config):
            path.unlink(missing_ok=True)
        reason = "host_key_changed" if refused else "start_failed"
        metrics.count(settings.state_dir, metrics.POOL_DISCARDED, {"reason": reason})
        result = "host_key_changed" if refused else "failed"
        metrics.count(settings.state_dir, metrics.POOL_STOPPED_STARTS, {"result": result})
        log.get().warning("pool_stopped_start_failed", machine=name, error=why[:300])
        say(
            f"Stopped pool machine {name} was not used ({(why.splitlines() or [''])[0]}); "
            "it was removed: creating one for this job"
        )
        return False
    metrics.count(settings.state_dir, metrics.POOL_STOPPED_STARTS, {"result": "started"})
    metrics.observe(settings.state_dir, metrics.POOL_STOPPED_START_SECONDS, timer.seconds)
    log.get().info("started_from_pool", machine=name, seconds=timer.seconds)
    say(f"Started machine {name} from the warm pool's stopped tier ({timer.seconds:g}s)")
    return True


def start(
    settings: Settings, dm: DockerMachine, job_dir: JobDir, record: JobRecord, pinned: Address
) -> None:
    """Start it, by ``settings.pool.start_timeout``; reach it where the driver says it is
    now, with the host key pinned at ``pinned`` (its creation); its engine as make_ready
    checks one. The record says READY at its new address after."""
    name = record.machine
    deadline = time.monotonic() + settings.pool.start_timeout

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DriverError(
                f"starting {name} took over [pool] start_timeout ({settings.pool.start_timeout:g}s)"
            )
        return remaining

    step = log.Timer()
    dm.power("start", name, timeout=left())
    address = provision.locate(dm, name, settings)  # port, user, key, certs: the store's
    address.host = dm.ip(name)  # the driver's answer now, not the create's
    record.timings["start"] = step.seconds
    engine_used = settings.docker.check or settings.image.container_mode
    if address.host != pinned.host:
        say(f"Machine {name} came back at a new address: {address.host} (was {pinned.host})")
        if engine_used:  # its certificate names the old address: TLS would refuse it
            say(f"Regenerating the engine certificates of {name} for its new address...")
            dm.power("regenerate-certs", name, timeout=left())
    ssh.write_config(job_dir, settings.ssh, machine=name, address=address)
    ssh.wait_ready(
        job_dir,
        target=address.ssh_target,
        timeout=min(settings.ssh.ready_timeout, left()),
        connect_timeout=settings.ssh.connect_timeout,
        progress=say,
        pinned=True,
    )
    if engine_used:  # in image mode too: an engine that refuses costs the machine here,
        # not a failed prepare the runner must retry (a start's certificates can race)
        address.engine_url = dm.url(name)
        timeout, step = min(settings.docker.ready_timeout, left()), log.Timer()
        version = engine.wait_ready(engine.Engine.of(address), timeout=timeout, progress=say)
        say(f"Docker engine {version} answers at {address.engine_url} ({step.seconds:g}s)")
    record.address = address
    record.advance(JobPhase.CREATED)
    record.advance(JobPhase.READY)
    job_dir.save(record)
