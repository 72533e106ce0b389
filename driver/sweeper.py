"""Finding the machines this driver owns and deciding which are dead.

A machine is dead when its job is over (GitLab says finished, cancelled or
does not know it), when the runner process that owned it is gone (the host
restarted, the runner was killed), when it was left half-created, or when it
is older than the configured maximum. A grace period protects machines still
being prepared.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from driver import limits
from driver.docker_machine import DockerMachine
from driver.errors import DriverError, JobError
from driver.pool.store import PoolStore
from driver.settings import Settings
from driver.state import JobDir, MachineState, process_start_time

FINISHED = {"success", "failed", "canceled", "skipped", "manual"}
ALIVE = {"created", "pending", "running", "waiting_for_resource", "preparing", "scheduled"}
JobStatus = Callable[[int, int], str]  # (project id, job id) -> status, or "missing"


def name_pattern(settings: Settings) -> str:
    """Job machines are <prefix>-<job id>; pool machines <prefix>-p<8 hex>."""
    return f"{re.escape(settings.machine.name_prefix)}-([0-9]+|p[0-9a-f]{{8}})"


@dataclass
class Owned:
    name: str
    state: str  # docker-machine's: Running, Stopped, Error, ...
    job_id: int | None
    project_id: int | None
    created: float | None
    local: MachineState | None  # this host's record of the job, if any
    pooled: bool = False  # held by the warm pool (idle, or being created or handed over)

    def age(self, now: float) -> float | None:
        return None if self.created is None else now - self.created


@dataclass
class Verdict:
    machine: Owned
    remove: bool
    reason: str


def job_states(settings: Settings) -> dict[str, MachineState]:
    """Machine name -> the state of the job on this host that owns it."""
    states = {}
    for path in (settings.state_dir / "jobs").glob("*"):
        if path.name.isdigit():
            try:
                state = JobDir(settings.state_dir, int(path.name)).load()
            except JobError:
                continue
            states[state.machine] = state
    return states


def inventory(dm: DockerMachine, settings: Settings) -> list[Owned]:
    owned = []
    jobs = job_states(settings)
    pool = PoolStore(settings.state_dir)
    for name, state in sorted(dm.list(name_pattern(settings)).items()):
        info = dm.inspect(name)
        local = jobs.get(name)
        job_id = local.job_id if local else _int(info.label("job") if info else "")
        owned.append(
            Owned(
                name=name,
                state=state,
                job_id=job_id,
                project_id=_int(info.label("project")) if info else None,
                created=_float(info.label("created")) if info else None,
                local=local,
                pooled=pool.held(name),
            )
        )
    return owned


def runner_alive(state: MachineState) -> bool:
    if not state.runner_pid:
        return False
    return process_start_time(state.runner_pid) == state.runner_started


def decide(machine: Owned, now: float, settings: Settings, job_status: JobStatus | None) -> Verdict:
    local = machine.local
    age = machine.age(now)
    if local and local.phase == "creating" and limits.pid_alive(local.pid):
        return Verdict(machine, False, "being prepared")
    if local and local.phase == "kept":
        if now < local.kept_until:
            return Verdict(machine, False, "kept for inspection after its job failed")
        return Verdict(machine, True, "kept for inspection, and its time is up")
    if age is not None and age > settings.sweeper.max_age:
        return Verdict(machine, True, f"older than max_age ({age:.0f}s)")
    if local and local.phase == "creating":
        return Verdict(machine, True, "left half-created (its prepare is gone)")
    if machine.state == "Error":
        return Verdict(machine, True, "in Error state")
    if machine.pooled and local is None:
        return Verdict(machine, False, "held by the warm pool")
    if local and not runner_alive(local):
        return Verdict(machine, True, "the runner process that owned its job is gone")
    if job_status is not None and machine.job_id and machine.project_id is not None:
        status = job_status(machine.project_id, machine.job_id)
        if status == "missing":
            return Verdict(machine, True, "its job is unknown to GitLab")
        if status in FINISHED:
            return Verdict(machine, True, f"its job is {status}")
        if status in ALIVE:
            return Verdict(machine, False, f"its job is {status}")
    if local is None and (age is None or age > settings.sweeper.grace):
        return Verdict(machine, True, "no job on this host owns it")
    return Verdict(machine, False, "its job may still be running")


def gitlab_job_status(settings: Settings) -> JobStatus:
    """Ask GitLab for a job's status; 401/403 stop the sweep (never guess)."""
    import gitlab
    from gitlab import exceptions

    client = gitlab.Gitlab(
        settings.gitlab.url,
        private_token=settings.gitlab.read_token() or None,
        timeout=settings.gitlab.timeout,
        retry_transient_errors=True,
    )

    def status(project_id: int, job_id: int) -> str:
        try:
            job = client.projects.get(project_id, lazy=True).jobs.get(job_id)
        except exceptions.GitlabAuthenticationError as e:
            raise DriverError(
                f"GitLab at {settings.gitlab.url} refused the token ({e.response_code})",
                hint="give [gitlab] a token with the read_api scope on the runner's projects",
            ) from None
        except exceptions.GitlabGetError as e:
            if e.response_code == 404:
                return "missing"
            if e.response_code == 403:
                raise DriverError(
                    f"GitLab refused access to project {project_id}'s jobs (403)",
                    hint="the [gitlab] token needs read_api on every project this runner serves",
                ) from None
            raise DriverError(f"GitLab answered {e.response_code} for job {job_id}") from None
        except exceptions.GitlabError as e:
            raise DriverError(f"cannot ask GitLab about job {job_id}: {e}") from None
        return str(job.status)

    return status


def stale_job_dirs(settings: Settings, machines: set[str]) -> list[JobDir]:
    """Job state whose machine is gone and whose runner is gone: it only blocks capacity."""
    stale = []
    for path in sorted((settings.state_dir / "jobs").glob("*")):
        if not path.name.isdigit():
            continue
        job_dir = JobDir(settings.state_dir, int(path.name))
        try:
            state = job_dir.load()
        except JobError:
            stale.append(job_dir)  # corrupt or half-written, and no stage can use it
            continue
        if state.machine in machines:
            continue
        if state.phase == "creating" and limits.pid_alive(state.pid):
            continue
        if state.phase == "kept" or not runner_alive(state):
            stale.append(job_dir)
    return stale


def sweep(
    dm: DockerMachine,
    settings: Settings,
    job_status: JobStatus | None,
    dry_run: bool,
    progress: Callable[[str], None],
) -> list[Verdict]:
    """Decide for every owned machine, remove the dead ones (unless dry_run), say why."""
    from driver import log, provision, ssh

    owned = inventory(dm, settings)
    now_ = now()
    verdicts = [decide(m, now_, settings, job_status) for m in owned]
    doing = "would remove" if dry_run else "removing"
    orphaned = 0
    for v in verdicts:
        progress(f"{v.machine.name}: {doing if v.remove else 'keeping'} ({v.reason})")
        log.get().info("sweep_verdict", machine=v.machine.name, remove=v.remove, reason=v.reason)
        if not v.remove or dry_run:
            continue
        job_dir = JobDir(settings.state_dir, v.machine.local.job_id) if v.machine.local else None
        with job_dir.locked(timeout=settings.cleanup.timeout) if job_dir else nullcontext():
            if job_dir:
                ssh.stop_master(job_dir)
            if not provision.destroy(dm, v.machine.name, settings, progress):
                orphaned += 1
            if job_dir:
                job_dir.remove()
            PoolStore(settings.state_dir).forget(v.machine.name)
    for job_dir in stale_job_dirs(settings, {m.name for m in owned}):
        progress(f"job state {job_dir.path}: {doing} (its machine and its runner are gone)")
        if not dry_run:
            with job_dir.locked(timeout=60):
                ssh.stop_master(job_dir)
                job_dir.remove()
    removed = sum(v.remove for v in verdicts)
    progress(
        f"{len(verdicts)} machine(s) owned, {removed} {'to remove' if dry_run else 'removed'}"
        + (f", {orphaned} may be orphaned in the cloud (see warnings)" if orphaned else "")
    )
    return verdicts


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def now() -> float:
    return time.time()
