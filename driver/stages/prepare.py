"""prepare: create this job's machine, or take one from the warm pool, and make it ready.

Everything happens under the job's lock, which is how the sweeper knows a
create is in progress. On any failure the machine is removed first and the
job log told afterwards: the runner may be gone and its pipe closed.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from driver import limits, log, metrics, provision, signals, ssh, state_owner
from driver.docker_machine import DockerMachine
from driver.errors import DriverError
from driver.log import say
from driver.settings import Settings, config_path
from driver.stages import stopped
from driver.stages.claim import Claimant, claimed_for, new_record, remove_machines, take_from_pool
from driver.stages.common import Stage, begin
from driver.state import JobDir, JobPhase, JobRecord

if TYPE_CHECKING:
    from driver.image.plan import Plan


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
        adoptable = image_plan is None and job_dir.state_file.exists()
        if adoptable and (taken := claimed_for(stage, Claimant.this_process())):
            # The pool service took it for this very process, whose fast path gave up
            # waiting for the answer: it is this job's (its claim counted there).
            say(f"Took machine {taken.machine} from the warm pool (claimed by the pool service)")
            log.get().info("pool_service_claim_adopted", machine=taken.machine)
            return 0
        job_dir.create()
        ssh.check_control_path(job_dir)
        remove_machines(stage, dm, say, why="left over from an earlier attempt")
        try:
            source = _taken(stage, dm, first=True) or "create"
            if source == "create":
                found = ""

                def instead() -> bool:
                    nonlocal found
                    found = _taken(stage, dm, first=False)
                    return bool(found)

                record = new_record(settings, stage.job, name)
                # Saved before the machine exists: a prepare killed mid-create leaves
                # cleanup and the sweeper a name.
                # While it waits for capacity, a pool machine that becomes ready (or stopped) is
                # its: the slot it waits for may be the one that machine holds.
                if limits.claim_slot(
                    stage.state,
                    settings.limits,
                    claim=lambda: job_dir.save(record),
                    progress=say,
                    exclude_job=stage.job.id,
                    instead=instead,
                ):
                    _create(settings, dm, job_dir, record, in_image=image_plan is not None)
                else:
                    source = found
            if image_plan is not None:  # image mode: the job's containers, on its machine
                _start_containers(stage, dm, image_plan)
        except BaseException as e:
            # Never leave a machine behind for a job that will not use it; remove it
            # before saying anything (the job log may be a closed pipe by now).
            signals.ignore_termination()
            ssh.stop_master(job_dir)
            remove_machines(stage, dm, log.to_admin_log, why="its prepare failed")
            job_dir.remove()
            reason = e.message if isinstance(e, DriverError) else type(e).__name__
            say(f"Preparing failed ({reason.splitlines()[0]}); its machine was removed")
            raise
    metrics.observe(settings.state_dir, metrics.PREPARE_SECONDS, total.seconds, {"source": source})
    log.get().info("prepared", seconds=total.seconds, source=source)
    if source == "create":
        say(f"Machine {name} is ready ({total.seconds:g}s)")
    return 0


def _taken(stage: Stage, dm: DockerMachine, *, first: bool) -> str:
    """A machine taken without a create: "pool" (a ready one), "stopped" (a stopped pool
    machine, started: driver.stages.stopped), or "" (none). Not `first`: a job looking
    again while it waits for capacity, whose pool miss was counted and said already."""
    if stage.settings.pool.enabled and take_from_pool(
        stage, say, count=("hit", "miss") if first else ()
    ):
        return "pool"
    return "stopped" if stopped.take(stage, dm) else ""


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
