"""prepare: create this job's machine, or take one from the warm pool, and make it ready.

Everything happens under the job's lock, which is how the sweeper knows a
create is in progress. On any failure the machine is removed first and the
job log told afterwards: the runner may be gone and its pipe closed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import TYPE_CHECKING

from driver import limits, log, metrics, provision, signals, ssh, state_owner
from driver.docker_machine import DockerMachine
from driver.errors import CommandError, DriverError
from driver.log import say
from driver.payload import Job
from driver.settings import Settings, config_path
from driver.stages.common import Stage, begin
from driver.state import (
    JobDir,
    JobPhase,
    JobRecord,
    MachineDir,
    ancestors,
    boot_clock,
    boot_id,
    pid_namespace,
    write_private,
)

if TYPE_CHECKING:
    from driver.image.plan import Plan

# A claim's check on the pool's open connection: a round trip takes milliseconds; a VM
# that went without closing it (a spot reclaim) is not waited for longer than this.
CLAIM_CHECK_TIMEOUT = 3.0


def new_record(settings: Settings, job: Job, machine: str) -> JobRecord:
    """This job's record of its machine, owned by this prepare and the runner above it."""
    return JobRecord(
        job_id=job.id,
        project_id=job.project_id,
        pipeline_id=job.pipeline_id,
        stage=job.stage,
        machine=machine,
        kill_grace=settings.run.kill_grace,
        log_path=str(settings.log_path),
        prepare_pid=os.getpid(),
        owners=ancestors(),
        boot_id=boot_id(),
        pid_ns=pid_namespace(),
        taken_at=time.time(),
        taken_boot=boot_clock(),
    )


def main(args: argparse.Namespace) -> int:
    stage = begin(args.config_path, "prepare", cancellable=True)
    settings, job_dir, name = stage.settings, stage.job_dir, stage.machine
    # Another config with other [machine] settings on this state dir: refuse, do nothing.
    state_owner.claim(settings, config_path(args.config_path))
    # A job of another GitLab instance (its ids collide with ours): refuse, do nothing.
    state_owner.claim_gitlab(settings, stage.job.server_url)
    dm = stage.docker_machine()
    total = log.Timer()
    image_plan = _image_plan(settings)  # a refused image costs no machine
    with job_dir.locked(timeout=60):
        job_dir.create()
        ssh.check_control_path(job_dir)
        _remove_machines(stage, dm, say, why="left over from an earlier attempt")
        try:
            source = "pool" if settings.pool.enabled and _from_pool(stage, dm) else "create"
            if source == "create":
                record = new_record(settings, stage.job, name)
                # Saved before the machine exists: a prepare killed mid-create leaves
                # cleanup and the sweeper a name.
                # While it waits for capacity, a pool machine that becomes ready is
                # its: the slot it waits for may be the one that machine holds.
                if limits.claim_slot(
                    stage.state,
                    settings.limits,
                    claim=lambda: job_dir.save(record),
                    progress=say,
                    exclude_job=stage.job.id,
                    instead=lambda: settings.pool.enabled and _from_pool(stage, dm, again=True),
                ):
                    _create(settings, dm, job_dir, record, in_image=image_plan is not None)
                else:
                    source = "pool"
            if image_plan is not None:  # image mode: the job's containers, on its machine
                _start_containers(stage, dm, image_plan)
        except BaseException as e:
            # Never leave a machine behind for a job that will not use it; remove it
            # before saying anything (the job log may be a closed pipe by now).
            signals.ignore_termination()
            ssh.stop_master(job_dir)
            _remove_machines(stage, dm, log.to_admin_log, why="its prepare failed")
            job_dir.remove()
            reason = e.message if isinstance(e, DriverError) else type(e).__name__
            say(f"Preparing failed ({reason.splitlines()[0]}); its machine was removed")
            raise
    metrics.observe(settings.state_dir, metrics.PREPARE_SECONDS, total.seconds, {"source": source})
    log.get().info("prepared", seconds=total.seconds, source=source)
    if source == "create":
        say(f"Machine {name} is ready ({total.seconds:g}s)")
    return 0


def _image_plan(settings: Settings) -> Plan | None:
    """What the job runs in (image mode), checked against the admin's lists; None: the
    VM's shell. Image mode's modules load only when it is on: they are a good part of
    the imports of a pool claim that does not need them."""
    if not settings.image.container_mode:
        return None
    from driver.engine import warm_up
    from driver.image.plan import plan

    image_plan = plan(settings.image, say)
    if image_plan is not None:
        warm_up()  # the SDK loads while the machine is claimed or created
    return image_plan


def _start_containers(stage: Stage, dm: DockerMachine, image_plan: Plan) -> None:
    from driver.image import containers  # image mode only (see _image_plan)

    ready = stage.job_dir.load()
    containers.start(
        stage.settings,
        stage.job_dir,
        image_plan,
        ready.machine,
        ready.address,
        lambda: dm.url(ready.machine),
        say,
        log.warn,
    )


def _remove_machines(
    stage: Stage, dm: DockerMachine, progress: provision.Progress, *, why: str
) -> None:
    """Every machine this job may hold: its own name, the one its record names (an earlier
    attempt's, or a pool machine), and pool machines it claimed but never took over."""
    names = {stage.machine}
    if stage.job_dir.state_file.exists():
        with contextlib.suppress(DriverError):
            names.add(stage.job_dir.load().machine)
    names.update(stage.state.release_claims(stage.job.id))
    for name in sorted(names):
        if dm.exists(name):
            progress(f"Removing machine {name} ({why})...")
            provision.destroy(dm, name, stage.settings, progress)
        stage.state.forget_pool(name)
    stage.job_dir.state_file.unlink(missing_ok=True)


def _create(
    settings: Settings, dm: DockerMachine, job_dir: JobDir, record: JobRecord, *, in_image: bool
) -> None:
    """``in_image``: the job runs in its image, where the helper does the runner's work."""
    name = record.machine
    labels = {
        "owner": settings.machine.name_prefix,
        "job": str(record.job_id),
        "project": str(record.project_id),
        "pipeline": str(record.pipeline_id or ""),
        "created": str(int(time.time())),
    }
    step = log.Timer()
    provision.create(dm, name, labels, settings, say)
    record.timings["create"] = step.seconds
    metrics.count(settings.state_dir, metrics.MACHINE_CREATIONS, {"by": "job"})
    say(f"Created machine {name} in {step.seconds:g}s")
    record.address = provision.locate(dm, name, settings)
    record.advance(JobPhase.CREATED)
    job_dir.save(record)
    record.timings.update(
        provision.make_ready(
            dm, name, record.address, job_dir, settings, say, runner_needed=not in_image
        )
    )
    record.advance(JobPhase.READY)
    job_dir.save(record)


def _from_pool(stage: Stage, dm: DockerMachine, again: bool = False) -> bool:
    """Take a ready machine from the warm pool; False if there is none (create one then).

    Each machine claimed is checked first (one round trip on the master connection the
    pool keeps open to it); one that died while it waited is left withdrawn for the pool
    service to remove and replace, and the next one is tried.

    `again`: a job that missed, looking again while it waits for capacity; its miss
    was counted and said already.
    """
    settings, state, job_dir = stage.settings, stage.state, stage.job_dir
    timer = log.Timer()
    while (pooled := state.claim(stage.job.id)) is not None:
        if _answers(settings, state.pool_dir(pooled.name)):
            break
        state.reject_claim(pooled.name, stage.job.id)
        metrics.count(settings.state_dir, metrics.POOL_DISCARDED, {"reason": "dead_at_claim"})
        log.get().warning("pool_machine_dead_at_claim", machine=pooled.name)
        say(f"Pool machine {pooled.name} did not answer: left for the pool to remove")
    if not again:
        found = "hit" if pooled else "miss"
        metrics.count(settings.state_dir, metrics.POOL_CLAIMS, {"result": found})
    if pooled is None:
        if not again:
            say("No ready machine in the warm pool: creating one for this job")
        return False
    record = new_record(settings, stage.job, pooled.name)
    record.phase = JobPhase.READY
    record.address = pooled.address
    job_dir.save(record)  # from here on the job owns it: its cleanup destroys it
    source = state.pool_dir(pooled.name)
    # The job's own SSH files (its dir's paths) and the pool's open connection; not
    # synced: after a power cut there is no job to use them.
    write_private(job_dir.known_hosts, source.known_hosts.read_text(), durable=False)
    ssh.write_config(
        job_dir, settings.ssh, machine=pooled.name, address=pooled.address, durable=False
    )
    ssh.hand_over_master(source, job_dir)
    state.release_claims(stage.job.id)
    state.forget_pool(pooled.name)
    idle = time.time() - pooled.ready_at
    say(
        f"Took machine {pooled.name} from the warm pool (ready {idle:.0f}s ago, "
        f"host key pinned at its creation; {timer.seconds:g}s)"
    )
    log.get().info("claimed_from_pool", machine=pooled.name, seconds=timer.seconds)
    return True


def _answers(settings: Settings, machine: MachineDir) -> bool:
    """Whether a claimed pool machine answers over SSH, its pinned key enforced. On the
    pool's open master connection one round trip, given CLAIM_CHECK_TIMEOUT: a VM gone
    without a word (a spot reclaim) never holds the job longer; without one (it ended),
    a fresh connection, given the connect timeout."""
    has_master = machine.control_path.exists()
    timeout = CLAIM_CHECK_TIMEOUT if has_master else settings.ssh.connect_timeout + 5
    try:
        return ssh.run(machine, "true", timeout=timeout, check=False).exit_code == 0
    except CommandError:  # timed out
        return False
