"""Taking a ready machine from the warm pool for a job: the one implementation, used by
prepare itself and by the pool service answering prepare's fast path (driver.pool.claims).

Both call it under the job's lock; the job's record names the prepare process that
asked (``Claimant``), whichever process does the work.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from driver import log, metrics, provision, ssh
from driver.docker_machine import DockerMachine
from driver.errors import CommandError, DriverError
from driver.payload import Job
from driver.settings import Settings
from driver.stages.common import Stage
from driver.state import (
    JobPhase,
    JobRecord,
    MachineDir,
    ancestors,
    boot_clock,
    boot_id,
    pid_namespace,
    process_start_time,
    write_private,
)

# A claim's check on the pool's open connection: a round trip takes milliseconds; a VM
# that went without closing it (a spot reclaim) is not waited for longer than this.
CLAIM_CHECK_TIMEOUT = 3.0


@dataclass(frozen=True)
class Claimant:
    """The prepare process a machine is taken for: its record's owner (the runner is
    among its ancestors), whichever process does the taking."""

    pid: int
    owners: list[list[int]] = field(default_factory=list)
    pid_ns: int = 0

    @classmethod
    def this_process(cls) -> Claimant:
        return cls(os.getpid(), ancestors(), pid_namespace())


def new_record(
    settings: Settings, job: Job, machine: str, claimant: Claimant | None = None
) -> JobRecord:
    """This job's record of its machine, owned by its prepare and the runner above it."""
    owner = claimant or Claimant.this_process()
    return JobRecord(
        job_id=job.id,
        project_id=job.project_id,
        pipeline_id=job.pipeline_id,
        stage=job.stage,
        machine=machine,
        kill_grace=settings.run.kill_grace,
        log_path=str(settings.log_path),
        prepare_pid=owner.pid,
        owners=owner.owners,
        boot_id=boot_id(),
        pid_ns=owner.pid_ns,
        taken_at=time.time(),
        taken_boot=boot_clock(),
    )


def take_from_pool(
    stage: Stage,
    say: Callable[[str], None],
    claimant: Claimant | None = None,
    *,
    count: Collection[str] = ("hit", "miss"),
) -> bool:
    """Take a ready machine from the warm pool; False if there is none (create one then).

    Each machine claimed is checked first (one round trip on the master connection the
    pool keeps open to it); one that died while it waited is left withdrawn for the pool
    service to remove and replace, and the next one is tried.

    `count`: the results counted in the claims metric; a miss not counted is not said
    either (a job looking again while it waits for capacity, whose miss was counted and
    said already; the pool service, whose caller goes on to prepare's own claim).
    """
    settings, state, job_dir = stage.settings, stage.state, stage.job_dir
    timer = log.Timer()
    while (pooled := state.claim(stage.job.id)) is not None:
        if answers(settings, state.pool_dir(pooled.name)):
            break
        state.reject_claim(pooled.name, stage.job.id)
        metrics.count(settings.state_dir, metrics.POOL_DISCARDED, {"reason": "dead_at_claim"})
        log.get().warning("pool_machine_dead_at_claim", machine=pooled.name)
        say(f"Pool machine {pooled.name} did not answer: left for the pool to remove")
    if pooled is None:
        if "miss" in count:
            metrics.count(settings.state_dir, metrics.POOL_CLAIMS, {"result": "miss"})
            say("No ready machine in the warm pool: creating one for this job")
        return False
    record = new_record(settings, stage.job, pooled.name, claimant)
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
    # The pool's records first, the claim last: never a moment with neither a claim nor
    # the job's hold on it, when a restarted pool service would take it for a lost create.
    state.forget_pool(pooled.name)
    state.release_claims(stage.job.id)
    # Counted once taken: a hand-over that failed is followed by the job's next claim.
    if "hit" in count:
        metrics.count(settings.state_dir, metrics.POOL_CLAIMS, {"result": "hit"})
    idle = time.time() - pooled.ready_at
    say(
        f"Took machine {pooled.name} from the warm pool (ready {idle:.0f}s ago, "
        f"host key pinned at its creation; {timer.seconds:g}s)"
    )
    log.get().info("claimed_from_pool", machine=pooled.name, seconds=timer.seconds)
    return True


def answers(settings: Settings, machine: MachineDir) -> bool:
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


def remove_machines(
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


def claimed_for(stage: Stage, claimant: Claimant) -> JobRecord | None:
    """The record of a pool machine the pool service took for this very prepare, complete
    (its claim released): a fast path that gave up waiting for the service's answer
    while the service went on. None for anything else (left over, to be removed)."""
    if not stage.job_dir.state_file.exists():
        return None
    try:
        record = stage.job_dir.load()
    except DriverError:
        return None
    mine = (record.prepare_pid, record.pid_ns, record.boot_id) == (
        claimant.pid,
        claimant.pid_ns,
        boot_id(),
    )
    # Taken after this process started: not the record of an earlier attempt whose pid
    # this one happens to reuse.
    started = process_start_time(claimant.pid) / os.sysconf("SC_CLK_TCK")
    mine = mine and record.taken_boot >= started
    handed_over = stage.job_dir.ssh_config.exists() and stage.job_dir.known_hosts.exists()
    released = all(job != stage.job.id for _, job in stage.state.claims())
    if mine and record.phase == JobPhase.READY and handed_over and released:
        return record
    return None
