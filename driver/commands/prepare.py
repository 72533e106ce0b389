"""prepare: create this job's machine and make it ready for the job's scripts."""

from __future__ import annotations

import argparse
import os
import shlex
import time
from pathlib import Path

from driver import engine, limits, log, provision, signals, ssh
from driver import job as job_file
from driver import settings as settings_file
from driver.errors import DriverError
from driver.log import say
from driver.machine import DockerMachine
from driver.settings import Settings
from driver.state import JobDir, MachineState, process_start_time, write_private

# What the runner's scripts and our stage wrapper need in the VM.
REQUIRED_TOOLS = ("bash", "setsid", "mktemp", "head", "wc", "git")
RUNNER_IN_VM = "gitlab-runner"


def machine_name(settings: Settings, job_id: int) -> str:
    return f"{settings.machine.name_prefix}-{job_id}"


def main(args: argparse.Namespace) -> int:
    settings = settings_file.load(args.config_path)
    job = job_file.from_response_file()
    name = machine_name(settings, job.id)
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
        state = MachineState(
            job_id=job.id,
            project_id=job.project_id,
            pipeline_id=job.pipeline_id,
            machine=name,
            kill_grace=settings.run.kill_grace,
            pid=os.getpid(),
            runner_pid=os.getppid(),
            runner_started=process_start_time(os.getppid()),
        )
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
    write_private(
        job_dir.ssh_config,
        ssh.config_text(
            job_dir,
            machine=name,
            host=state.host,
            port=state.port,
            user=state.user,
            key_path=state.key_path,
            connect_timeout=settings.ssh.connect_timeout,
            keepalive_interval=settings.ssh.keepalive_interval,
        ),
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

    _check_tools(settings, job_dir)

    if settings.docker.check:
        step = log.Timer()
        version = engine.wait_ready(info, timeout=settings.docker.ready_timeout, progress=say)
        state.timings["docker"] = step.seconds
        say(f"Docker engine {version} answers at {info.engine_url} ({step.seconds:g}s)")
    state.phase = "ready"
    job_dir.save(state)


def _check_tools(settings: Settings, job_dir: JobDir) -> None:
    tools = " ".join((*REQUIRED_TOOLS, RUNNER_IN_VM))
    result = ssh.run(
        job_dir,
        f'for t in {tools}; do command -v "$t" >/dev/null 2>&1 || echo "$t"; done',
        timeout=30,
        what="checking the VM's tools",
    )
    missing = result.stdout.split()
    lacking = [tool for tool in missing if tool != RUNNER_IN_VM]
    if lacking:
        raise DriverError(
            f"the VM lacks {', '.join(lacking)}, which the job's scripts need",
            hint="use a machine image that has them (bash, util-linux, coreutils, git)",
        )
    if RUNNER_IN_VM not in missing:
        return
    binary = settings.gitlab_runner_binary
    if binary is None:
        log.warn(
            "the VM has no gitlab-runner binary: cache and artifact stages will be skipped; "
            "set gitlab_runner_binary in the config file to upload one"
        )
        return
    _upload_runner(job_dir, binary)


def _upload_runner(job_dir: JobDir, binary: Path) -> None:
    if not binary.is_file():
        raise DriverError(
            f"gitlab_runner_binary {binary} does not exist on the runner host",
            hint="point it at the gitlab-runner binary (e.g. /usr/bin/gitlab-runner)",
        )
    step = log.Timer()
    target = shlex.quote("/usr/local/bin/gitlab-runner")
    # Written to a temp name and renamed, so a broken upload never looks installed.
    script = (
        "set -e; umask 022; "
        'if [ "$(id -u)" = 0 ]; then s=""; else s="sudo -n"; fi; '
        f't=$($s mktemp {target}.XXXXXX); $s tee "$t" >/dev/null; '
        f'$s chmod 755 "$t"; $s mv "$t" {target}'
    )
    ssh.run(
        job_dir,
        script,
        timeout=300,
        stdin_file=binary,
        what="uploading gitlab-runner into the VM",
        hint="the SSH user needs root or passwordless sudo to install into /usr/local/bin",
    )
    say(f"Uploaded gitlab-runner into the VM ({step.seconds:g}s)")
