"""The pool service: keeps the pool at its target, one thread per create or removal."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from driver import limits, log, metrics, provision, ssh
from driver.docker_machine import DockerMachine
from driver.errors import DriverError
from driver.image.config import pool_images
from driver.image.containers import prestart_helper
from driver.image.learn import recent_images
from driver.parsed import table
from driver.pool import claims, images, served, webhook
from driver.pool.control import Observation, PoolController, ReadyMachine, make_policy
from driver.pool.gitlab_api import ApiCalls
from driver.pool.gitlab_jobs import GitLabJobs
from driver.pool.learned import LearnedImages
from driver.pool.lookahead import Lookahead
from driver.pool.pipelines import ListJobs, PipelineWatch, UsualDurations
from driver.pool.shapes import ServedShapes, create_horizon
from driver.pool.stopped import StoppedTier, offer
from driver.settings import Settings
from driver.state import (
    Address,
    JobPhase,
    JobRecord,
    Lock,
    LockTimeout,
    PoolPhase,
    PoolRecord,
    StateDir,
    pid_alive,
    write_private,
)

REMEMBER_EVERY = 600.0  # seconds between two saves of what the policy learned
# Why a machine the pool made was discarded: the step it failed in (see _create_one).
FAILURE_REASONS = {
    "create": "create_failed",
    "ssh": "ssh_not_ready",
    "tools": "tools_missing",
    "engine": "engine_not_ready",
    "images": "engine_lost",  # an image it cannot pull is skipped: the engine went away
    "stop": "stop_failed",  # the stopped tier's (driver.pool.stopped)
}
START_WAIT = 5.0  # for the service's lock at start: a sweep may be looking at it
# How long a stop may take: within the pool unit's TimeoutStopSec (900 s), with room for
# the interpreter's exit; what is not done by then the sweeper removes (its creator gone).
STOP_WITHIN = 840.0


def pool_name(settings: Settings) -> str:
    return f"{settings.machine.name_prefix}-p{secrets.token_hex(4)}"


class PoolService:
    """Keeps the pool at its target; one thread per create or removal in flight."""

    def __init__(
        self,
        settings: Settings,
        list_jobs: ListJobs | None = None,
        usual_durations: UsualDurations | None = None,
        config_file: Path | None = None,  # given: jobs' prepares may ask it for a machine
    ) -> None:
        self.settings = settings
        self.config_file = config_file
        self.state = StateDir(settings.state_dir)
        self.dm = DockerMachine(settings)
        self.log = log.get()
        self.creating: set[str] = set()
        self.removing: set[str] = set()
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.last_health = 0.0
        self.last_remembered = time.time()
        # The control loop's decisions (driver.pool.control), on the real clock.
        self.controller = PoolController(
            settings.pool,
            settings.limits,
            clock=time.time,
            create=self._start_create,
            remove=self._start_remove,
            policy=make_policy(settings.pool, *metrics.mean_create_seconds(settings.state_dir)),
            alarm=self._alarm,
        )
        self.claims_seen: tuple[float, float] | None = None  # the hit and miss counters
        self.create_measured: set[str] = set()  # ready machines whose create time was taken
        self.learned = LearnedImages(settings, self.state)  # pulled into ready machines too
        # Jobs known to be coming: the next stage of the pipelines of the jobs here.
        self.lookahead = Lookahead()
        self.jobs_seen: set[int] = set()
        self.pipelines: PipelineWatch | None = None
        self.polling = threading.Event()  # a look at GitLab is in flight
        self.api_calls = ApiCalls()  # requests to GitLab's API, shown by `pool status`
        self.stopped = StoppedTier(self)  # [pool] stopped_count
        pool = settings.pool
        if pool.lookahead and settings.gitlab.configured:  # either policy uses it
            reader = GitLabJobs(settings.gitlab)  # asks nothing until the first look
            self.api_calls = reader.calls
            self.pipelines = PipelineWatch(
                self.lookahead,
                list_jobs or reader.list_jobs,
                lambda message: self.log.warning("pool_lookahead_failed", error=message),
                usual_durations or reader.usual_durations,
            )
        # Without it: the next stages guessed from the shapes of the pipelines served.
        self.shapes = ServedShapes(self.lookahead) if pool.learn_shapes else None

    # --- lifecycle

    def adopt(self) -> None:
        """On start: keep what can be vouched for, remove the rest."""
        for name in self.state.pool_names():
            phase = self.state.pool_phase(name)
            record = self.state.load_pool(name)
            if phase == PoolPhase.READY and record and self._healthy(record):
                self.log.info("pool_adopted", machine=name)
                continue
            if phase in (PoolPhase.CLAIMED, PoolPhase.STOPPED, PoolPhase.GONE):
                continue  # a job's prepare is taking (or took) it over; stopped; removed
            if phase == PoolPhase.READY and not self.state.withdraw(name):
                continue  # just claimed
            self._discarded("ssh_lost" if phase == PoolPhase.READY else "interrupted")
            self._remove(name, f"cannot vouch for it after a restart (was {phase})")

    def run(self, stop: threading.Event, *, holding_lock: bool = False) -> None:
        """``holding_lock``: the caller took only_instance() already (`pool run` does)."""
        with contextlib.nullcontext() if holding_lock else self.only_instance():
            self.adopt()
            self.recall()
            events = webhook.start(self.settings.gitlab, self.pipelines)  # optional
            if events is not None:  # the port bound, as the system gave it (":0" asks any)
                self.log.info("webhook_listening", port=events.port)
            desk = claims.start(self.settings, self.config_file, self.dm)  # prepare's fast path
            try:
                while not stop.is_set():
                    self.tick(time.time())
                    stop.wait(self.settings.pool.check_interval)
            finally:  # the port and the claim socket are closed whatever ended the loop
                if events is not None:
                    events.stop()
                if desk is not None:
                    desk.stop()
            self.shutdown()

    @contextlib.contextmanager
    def only_instance(self) -> Iterator[None]:
        """One service per state dir: a second one would remove the first one's creates."""
        lock = self.state.lock(served.SERVICE_LOCK)
        lock.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:  # a sweep looking whether a service runs holds it for an instant
            lock.acquire(START_WAIT, "the pool service's lock")
        except LockTimeout:
            try:
                other = lock.path.read_text().strip() or "unknown"
            except OSError:
                other = "unknown"
            raise DriverError(
                f"another pool service (pid {other}) already serves the state dir "
                f"{self.settings.state_dir}",
                hint="run one `pool run` per config; stop the other one first",
            ) from None
        try:
            assert lock.fd is not None
            os.ftruncate(lock.fd, 0)
            os.pwrite(lock.fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            served.touch(lock)  # when a service last held it: the sweeper's "unserved" clock
            lock.release()

    def shutdown(self) -> None:
        """Drain (with drain_on_stop) all at once, and let creates in flight finish (they
        cannot be cut short cleanly): within STOP_WITHIN, inside the unit's limit."""
        self.stopping.set()
        deadline = time.monotonic() + min(STOP_WITHIN, self.settings.create.timeout + 60)
        self.remember()
        if self.settings.pool.drain_on_stop:
            for name in self.state.ready() + self.state.ready("stopped"):
                if self.state.withdraw(name):
                    with self.lock:  # counted before its thread runs: waited for below
                        self.removing.add(name)
                    self._start(
                        functools.partial(self._remove, name, "draining on stop", deadline=deadline)
                    )
        while (self.creating or self.removing) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = sorted(self.creating | self.removing)
        if left:
            log.warn(
                f"pool: stopped with {', '.join(left)} still being created or removed; "
                "`gitlab-machine-driver sweep` removes them (their creator is gone)"
            )
            self.log.error("pool_stopped_unfinished", machines=left)

    # --- what the policy learned, across restarts

    def recall(self) -> None:
        """Go on from what the policy had learned before this start, if it can be read."""
        path = self.state.pool_memory_file
        try:
            memory = json.loads(path.read_text())
            if self.shapes is not None:  # first: a policy refusing its part raises
                self.shapes.shapes.recall(table(memory).get("shapes"))
            self.controller.policy.recall(memory, time.time())
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            # A hint only: a torn or foreign file costs the learning, never the pool.
            self.log.warning("pool_memory_unreadable", path=str(path), error=str(e)[:200])
            return
        self.log.info("pool_memory_recalled", path=str(path))

    def remember(self) -> None:
        self.last_remembered = time.time()
        memory = self.controller.policy.memory()
        if self.shapes is not None and self.shapes.shapes.followed:
            memory["shapes"] = self.shapes.shapes.memory()
        if not memory:
            return
        try:
            self.state.pool_root.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(self.state.pool_memory_file, json.dumps(memory))
        except (OSError, DriverError) as e:  # a full disk, say: the pool goes on
            self.log.warning("pool_memory_not_saved", error=str(e))

    # --- the loop

    def tick(self, now: float) -> None:
        observation, in_use = self.observe()
        decision = self.controller.step(observation)
        if now - self.last_health >= self.settings.pool.health_interval:
            self.last_health = now
            for name in self.state.ready():
                machine = self.state.load_pool(name)
                if machine and not self._healthy(machine) and self.state.withdraw(name):
                    self._discarded("ssh_lost")
                    self._start_removal(name, "failed its health check")
        self._remove_rejected()
        self.stopped.tick()
        self.learned.tick(self._start)
        self.write_status(decision.wanted, in_use)
        if now - self.last_remembered >= REMEMBER_EVERY:
            self.remember()

    def observe(self) -> tuple[Observation, int]:
        """What the controller needs from the state dir now; and the machines in use."""
        ready: list[ReadyMachine] = []
        created: list[float] = []
        for name in self.state.ready():  # the longest idle first
            record = self.state.load_pool(name)
            if record is None:
                continue
            ready.append(ReadyMachine(name, record.ready_at))
            if name not in self.create_measured and 0 < record.created < record.ready_at:
                created.append(record.ready_at - record.created)
                self.create_measured.add(name)
        self.create_measured &= {m.name for m in ready}
        records = self.state.job_records()
        waiting = len(self.state.job_ids()) - len(records)  # prepares without a machine yet
        job_creates = sum(
            1
            for r in records.values()
            if r is not None and r.phase == JobPhase.CREATING and pid_alive(r.prepare_pid)
        )
        hits, misses = self._claims_since_last()
        self._watch_pipelines(records)
        with self.lock:  # the stopped tier's creates are no ready machines to come
            creating = len(self.creating - self.stopped.making)
        observation = Observation(
            ready=ready,
            creating=creating,
            in_use=len(records),
            hits=hits,
            misses=misses,
            create_seconds=created,
            machines=self.state.machines_owned()[0],
            job_creates=job_creates,
            waiting=max(0, waiting),
            ahead=self.lookahead.report(),
        )
        return observation, len(records)

    def _watch_pipelines(self, records: dict[int, JobRecord | None]) -> None:
        """Tell the pipeline watch of the jobs that came since the last tick, and let it
        ask GitLab what their pipelines run next."""
        if self.pipelines is None:
            if self.shapes is not None:
                horizon = create_horizon(self.controller.policy)
                self.shapes.served(records, time.time(), self._pool_machine, horizon)
            return
        now = time.time()
        for job_id, record in records.items():
            if record is None or job_id in self.jobs_seen:
                continue
            self.jobs_seen.add(job_id)
            hit = self._pool_machine(job_id, record)
            self.pipelines.job_arrived(record.project_id, record.pipeline_id, job_id, now, hit)
        self.jobs_seen &= set(records)
        # GitLab is asked in a thread of its own: a slow GitLab never holds the pool's loop.
        if not self.polling.is_set():
            self.polling.set()
            self._start(functools.partial(self._poll_pipelines, self.pipelines, now))

    def _pool_machine(self, job_id: int, record: JobRecord) -> bool:
        """A hit: a ready machine, not its own, nor a stopped one it waited to start (one
        being started has its record, not yet ready: a ready one's is saved ready)."""
        own = record.machine == self.settings.machine_name(job_id)
        starting = record.phase in (JobPhase.CREATING, JobPhase.CREATED)
        return not own and not starting and "start" not in record.timings

    def _poll_pipelines(self, pipelines: PipelineWatch, now: float) -> None:
        try:
            pipelines.poll(now)
        except Exception as e:  # a hint only; said, never raised
            self.log.warning("pool_lookahead_failed", error=str(e)[:300])
        finally:
            self.polling.clear()

    def _claims_since_last(self) -> tuple[int, int]:
        """Prepares that took a pool machine, and that found none, since the last tick."""
        counters = metrics.load(self.settings.state_dir)["counters"]
        now = (
            float(counters.get(metrics.POOL_CLAIMS.key({"result": "hit"}), 0)),
            float(counters.get(metrics.POOL_CLAIMS.key({"result": "miss"}), 0)),
        )
        before, self.claims_seen = self.claims_seen, now
        if before is None:
            return 0, 0  # the first tick: what came before is history

        def grown(value: float, was: float) -> int:
            # A counter that went down was reset (the metrics file was lost): count from 0.
            return int(value - was) if value >= was else int(value)

        return grown(now[0], before[0]), grown(now[1], before[1])

    def _start_create(self) -> bool:
        self._start(self._create_one)  # it takes its slot under the capacity lock itself
        return True

    def _start_remove(self, name: str, why: str) -> None:
        if self.state.withdraw(name):  # False: a job claimed it meanwhile
            self._start_removal(name, why)

    def _start_removal(self, name: str, why: str) -> None:
        """Remove a machine this service withdrew, in a thread of its own."""
        with self.lock:  # before its thread runs: _remove_rejected leaves it alone
            self.removing.add(name)
        self._start(functools.partial(self._remove, name, why))

    def _remove_rejected(self) -> None:
        """Remove the machines jobs found dead at their claim (withdrawn by the job, its
        removal left to us: the job does not wait for it); the controller replaces them.
        One whose lock is held is being made or removed by someone else."""
        for name in self.state.withdrawn():
            with self.lock:
                if name in self.removing or name in self.creating:
                    continue
            entry = self.state.pool_lock(name)
            if not entry.try_acquire():
                continue
            if name not in self.state.withdrawn():  # removed before we held its lock
                entry.release(remove=self.state.pool_phase(name) == PoolPhase.GONE)
                continue
            with self.lock:
                self.removing.add(name)
            self._start(functools.partial(self._remove_held, name, entry))

    def _remove_held(self, name: str, entry: Lock) -> None:
        try:
            self._remove(name, "it did not answer a job's claim", entry)
        finally:
            entry.release(remove=self.state.pool_phase(name) == PoolPhase.GONE)

    def _start(self, work: Callable[[], None]) -> None:
        threading.Thread(target=work, daemon=True).start()

    # --- one machine

    def _create_one(self, tier: str = "ready") -> None:
        """``tier`` "stopped": made ready, then stopped (driver.pool.stopped)."""
        name = pool_name(self.settings)
        structlog.contextvars.bind_contextvars(machine=name)  # this thread's log lines
        with self.lock:
            self.creating.add(name)
            if tier == "stopped":
                self.stopped.making.add(name)
        timer = log.Timer()
        reached = ["create"]  # the steps begun: the last one is where a failure happened
        record = PoolRecord(name=name, created=time.time(), creator_pid=os.getpid())
        # Held for the whole create: the sweeper sees a create in progress by this lock.
        entry = self.state.pool_lock(name)
        entry.acquire(timeout=10, what=f"the lock of pool machine {name}")
        try:
            # Counted under the capacity lock with the jobs' creates; saved before the
            # create, so a crash leaves a name to remove. Jobs come first: no waiting.
            if not limits.claim_slot(
                self.state,
                self.settings.limits,
                claim=lambda: self.state.save_pool(record),
                progress=self._progress(name),
                wait=False,
            ):
                self.log.info("pool_no_capacity", machine=name)
                return
            labels = {
                "owner": self.settings.machine.name_prefix,
                "pool": "1",
                "created": str(int(record.created)),
            }
            progress = self._progress(name)
            provision.create(self.dm, name, labels, self.settings, progress)
            metrics.count(self.settings.state_dir, metrics.MACHINE_CREATIONS, {"by": "pool"})
            record.address = provision.locate(self.dm, name, self.settings)
            self.state.save_pool(record)
            where = self.state.pool_dir(name)
            # Image mode's default and helper images too, so jobs need not pull them.
            configured = [*self.settings.pool.images, *pool_images(self.settings.image)]
            # And the images recent jobs ran most.
            learned = [
                i for i in recent_images(self.settings.image, self.state) if i not in configured
            ]
            provision.make_ready(
                self.dm,
                name,
                record.address,
                where,
                self.settings,
                progress,
                engine_needed=bool(configured or learned),
                reached=lambda step: reached.append(step),
            )
            reached.append("images")
            self._pull_images(name, record.address, configured, learned, progress)
            reached.append("helper")
            # Image mode: the job's helper container started ahead (prepare checks it).
            try:
                if tier == "ready" and prestart_helper(
                    self.settings, where, record.address, name, lambda: self.dm.url(name)
                ):
                    self.log.info("pool_helper_started")
            except Exception as e:  # the job starts its own then
                self.log.warning("pool_helper_not_started", error=str(e)[:300])
            # Its master connection stays open (the health checks keep it): the job that
            # claims it takes it over (driver.ssh.hand_over_master), no new connection.
            record.ready_at = time.time()
            self.learned.made_ready(name, [*configured, *learned])
            self.state.save_pool(record)
            if self.stopping.is_set() and self.settings.pool.drain_on_stop:
                reached.append("stopping")
                raise DriverError("the service is stopping")
            if tier == "stopped":
                self.stopped.park(name, reached)
            else:
                offer(self, name, "ready", reached)
            self.controller.succeeded()
            self.log.info("pool_machine_ready", machine=name, seconds=timer.seconds)
        except Exception as e:  # every failure: remove what was made, remember why
            self._error(f"{name}: {e}")
            if reached[-1] != "stopping":
                reason = FAILURE_REASONS.get(reached[-1], "preparation_failed")
                self.controller.failed(reason)
                self._discarded(reason)
            self.state.mark_withdrawn(name)
            self._remove(name, "its preparation failed", entry)
        finally:
            entry.release(remove=self.state.pool_phase(name) == PoolPhase.GONE)
            with self.lock:
                self.creating.discard(name)
                self.stopped.making.discard(name)

    def _pull_images(
        self,
        name: str,
        address: Address,
        configured: list[str],
        learned: list[str],
        progress: Callable[[str], None],
    ) -> None:
        """Each image as a job would pull it (its pull policy: a present one counts); one
        the registry does not give is the job's to pull, never a reason to discard the
        machine: a registry outage must not turn into a VM per create time."""

        def not_pulled(image: str, why: str) -> None:
            self.log.warning("pool_image_not_pulled", image=image, why=why[:300])
            metrics.count(self.settings.state_dir, metrics.POOL_IMAGE_PULL_FAILURES)

        if configured:
            step = log.Timer()
            pulled = images.pull(
                name, address, configured, self.settings, say=progress, skipped=not_pulled
            )
            self.log.info("pool_images_pulled", images=pulled, seconds=step.seconds)
        if learned:  # best effort, quietly: some need a job's token
            pulled = images.pull(
                name,
                address,
                learned,
                self.settings,
                say=progress,
                skipped=lambda image, why: self.log.info(
                    "pool_image_skipped", image=image, why=why
                ),
            )
            self.log.info("pool_images_learned", images=pulled)

    def _discarded(self, reason: str) -> None:
        metrics.count(self.settings.state_dir, metrics.POOL_DISCARDED, {"reason": reason})

    def _alarm(self, reason: str, failures: int, hold: float) -> None:
        """Identical failures in a row: the next create waits (driver.pool.backoff)."""
        self.log.error("pool_failure_backoff", reason=reason, failures=failures, seconds=hold)
        self._error(
            f"{failures} pool machines in a row failed ({reason.replace('_', ' ')}); "
            f"the next create waits {hold:g}s"
        )
        metrics.count(self.settings.state_dir, metrics.POOL_FAILURE_BACKOFFS, {"reason": reason})

    def _healthy(self, record: PoolRecord) -> bool:
        """One round trip on its master connection (opened again if it ended): kept open
        for the job that claims it."""
        where = self.state.pool_dir(record.name)
        timeout = self.settings.ssh.connect_timeout + 5
        try:
            return ssh.run(where, "true", timeout=timeout, check=False).exit_code == 0
        except DriverError:  # timed out
            return False

    def _remove(
        self, name: str, why: str, held: Lock | None = None, deadline: float | None = None
    ) -> None:
        """Remove a machine already out of the ready set (withdrawn, or never ready),
        by ``deadline`` (monotonic) if that is sooner than [cleanup] timeout."""
        structlog.contextvars.bind_contextvars(machine=name)
        with self.lock:
            self.removing.add(name)
        entry = held or self.state.pool_lock(name)
        try:
            if held is None:
                entry.acquire(timeout=60, what=f"the lock of pool machine {name}")
            self.log.info("pool_removing", machine=name, reason=why)
            ssh.stop_master(self.state.pool_dir(name))
            if deadline is not None:
                deadline = min(deadline, time.monotonic() + self.settings.cleanup.timeout)
            provision.destroy(
                self.dm,
                name,
                self.settings,
                self._progress(name),
                deadline=deadline,
                quiet_if_missing=True,
            )
            self.state.forget_pool(name)
        except Exception as e:
            self._error(f"{name}: removing failed: {e}")
        finally:
            if held is None:  # its records gone: so goes its lock file, under the lock
                entry.release(remove=self.state.pool_phase(name) == PoolPhase.GONE)
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
                "jobs_announced": len(self.lookahead.expected),  # jobs GitLab will run next
                "gitlab_api_calls": self.api_calls.snapshot(),  # by API (rest, graphql)
                "creating": sorted(self.creating),
                "removing": sorted(self.removing),
                "errors": list(self.errors),
            }
        self.state.pool_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.state.pool_status_file, json.dumps(status))
