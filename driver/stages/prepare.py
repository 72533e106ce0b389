"""prepare: create this job's machine and make it ready for the job's scripts."""

from __future__ import annotations

import argparse
import os
import shutil
import time

from driver import engine, limits, log, metrics, provision, signals, ssh, tools
from driver.contract import Job, read_job
from driver.docker_machine import DockerMachine
from driver.errors import DriverError
from driver.log import say
from driver.pool.store import PoolStore
from driver.settings import Settings, load_settings
from driver.state import JobDir, MachineState, process_start_time


def new_state(settings: Settings, job: Job, machine: str) -> MachineState:
    """This job's record of its machine, owned by this prepare and its runner process."""
    return MachineState(
        job_id=job.id,
        project_id=job.project_id,
        pipeline_id=job.pipeline_id,
        machine=machine,
        kill_grace=settings.run.kill_grace,
        log_path=str(settings.log_path),
        pid=os.getpid(),
        runner_pid=os.getppid(),
        runner_started=process_start_time(os.getppid()),
    )


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config_path)
    job = read_job()
    name = settings.machine_name(job.id)
    log.setup(settings.log_path, job_id=job.id, machine=name, stage="prepare")
    signals.raise_on_termination()
    job_dir = JobDir(settings.state_dir, job.id)
    dm = DockerMachine(settings)
    total = log.Timer()
    with job_dir.locked(timeout=60):
        job_dir.create()
        ssh.check_control_path(job_dir)
        if dm.exists(name):
            say(f"Removing machine {name} left over from an earlier attempt...")
            provision.destroy(dm, name, settings, say)
        if settings.pool.enabled and _from_pool(settings, dm, job_dir, job):
            metrics.observe(
                settings.state_dir, metrics.PREPARE_SECONDS, total.seconds, {"source": "pool"}
            )
            return 0
        state = new_state(settings, job, name)
        # Saved before the machine exists: a prepare killed mid-create leaves cleanup a name.
        limits.claim_slot(
            settings.state_dir,
            job_dir.path,
            settings.limits,
            claim=lambda: job_dir.save(state),
            progress=say,
        )
        try:
            _prepare(settings, dm, job_dir, state, job.project_id, job.pipeline_id)
        except BaseException as e:
            # Never leave a machine behind for a job that will not use it.
            signals.ignore_termination()
            reason = e.message if isinstance(e, DriverError) else type(e).__name__
            say(f"Preparing {name} failed ({reason.splitlines()[0]}); removing the machine...")
            ssh.stop_master(job_dir)
            provision.destroy(dm, name, settings, say, quiet_if_missing=True)
            job_dir.remove()
            raise
    log.get().info("prepared", seconds=total.seconds, timings=state.timings)
    metrics.observe(
        settings.state_dir, metrics.PREPARE_SECONDS, total.seconds, {"source": "create"}
    )
    say(f"Machine {name} is ready ({total.seconds:g}s)")
    return 0


def _prepare(
    settings: Settings,
    dm: DockerMachine,
    job_dir: JobDir,
    state: MachineState,
    project_id: int,
    pipeline_id: int | None,
) -> None:
    name = state.machine
    labels = {
        "owner": settings.machine.name_prefix,
        "job": str(state.job_id),
        "project": str(project_id),
        "pipeline": str(pipeline_id or ""),
        "created": str(int(time.time())),
    }
    step = log.Timer()
    provision.create(dm, name, labels, settings, say)
    state.timings["create"] = step.seconds
    metrics.count(settings.state_dir, metrics.MACHINE_CREATIONS, {"by": "job"})
    say(f"Created machine {name} in {step.seconds:g}s")
    info = dm.inspect(name)
    if info is None:
        raise DriverError(f"docker-machine created {name} but does not know it afterwards")
    state.phase = "created"
    state.host, state.port = info.host, info.ssh_port
    state.user = settings.ssh.user or info.ssh_user
    state.key_path = info.ssh_key
    state.engine_url = info.engine_url
    job_dir.save(state)
    ssh.write_config(
        job_dir,
        settings.ssh,
        machine=name,
        host=state.host,
        port=state.port,
        user=state.user,
        key_path=state.key_path,
    )

    step = log.Timer()
    ssh.wait_ready(
        job_dir,
        target=f"{state.user}@{state.host}:{state.port}",
        timeout=settings.ssh.ready_timeout,
        connect_timeout=settings.ssh.connect_timeout,
        progress=say,
    )
    state.timings["ssh"] = step.seconds
    say(f"SSH is up in {step.seconds:g}s; host key pinned")

    tools.check(settings, job_dir)

    if settings.docker.check:
        step = log.Timer()
        version = engine.wait_ready(info, timeout=settings.docker.ready_timeout, progress=say)
        state.timings["docker"] = step.seconds
        say(f"Docker engine {version} answers at {info.engine_url} ({step.seconds:g}s)")
    state.phase = "ready"
    job_dir.save(state)


def _from_pool(settings: Settings, dm: DockerMachine, job_dir: JobDir, job: Job) -> bool:
    """Take a ready machine from the warm pool; False if there is none (create one then)."""
    store = PoolStore(settings.state_dir)
    machine = store.claim()
    metrics.count(settings.state_dir, metrics.POOL_CLAIMS, {"result": "hit" if machine else "miss"})
    if machine is None:
        say("No ready machine in the warm pool: creating one for this job")
        return False
    timer = log.Timer()
    state = new_state(settings, job, machine.name)
    state.phase = "created"
    state.host, state.port, state.user = machine.host, machine.port, machine.user
    state.key_path, state.engine_url = machine.key_path, machine.engine_url
    job_dir.save(state)  # from here on the job owns it: its cleanup destroys it
    pinned = store.machine_dir(machine.name).known_hosts
    shutil.copyfile(pinned, job_dir.known_hosts)
    machine.write_ssh_config(job_dir, settings)
    store.forget(machine.name)
    result = ssh.run(job_dir, "true", timeout=settings.ssh.connect_timeout + 5, check=False)
    if result.exit_code != 0:
        say(f"Pool machine {machine.name} does not answer ({result.output}); removing it")
        ssh.stop_master(job_dir)
        provision.destroy(dm, machine.name, settings, say, quiet_if_missing=True)
        job_dir.state_file.unlink(missing_ok=True)
        return False
    state.phase = "ready"
    job_dir.save(state)
    idle = time.time() - machine.ready_at
    say(
        f"Took machine {machine.name} from the warm pool (ready {idle:.0f}s ago, "
        f"host key pinned at its creation; {timer.seconds:g}s)"
    )
    log.get().info("claimed_from_pool", machine=machine.name, seconds=timer.seconds)
    return True
