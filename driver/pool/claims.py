"""The pool service's claim desk: prepare's fast path (driver.stages.prepare_fast) asks
over a Unix socket, and the service takes a ready machine for the job with the claim
code prepare itself uses (driver.stages.claim).

The socket is <state_dir>/pool/claim.sock (its folder 0700, itself 0600); a peer of
another uid is refused (SO_PEERCRED). One JSON request line per connection, one JSON
reply line: the outcome (claimed, miss, not_here, failed, error) and the lines for the
job log. Anything but "claimed" sends prepare down its own path, which does the full
checks: so the desk answers only the plain case (the service's own config, unchanged;
the VM's shell, not image mode; a job with nothing left of an earlier attempt), and
counts no miss (prepare counts it when it looks itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from driver import log, metrics, metrics_textfile, ssh, state_owner
from driver.contract import read_job
from driver.docker_machine import DockerMachine
from driver.errors import DriverError
from driver.settings import Settings
from driver.stages.claim import Claimant, remove_machines, take_from_pool
from driver.stages.common import Stage
from driver.stages.prepare_fast import (
    CLAIMED,
    ERROR,
    FAILED,
    MISS,
    NOT_HERE,
    claim_socket,
)
from driver.state import StateDir, pid_namespace, process_start_time

MAX_REQUEST = 16 * 1024  # a request is a few hundred bytes
READ_TIMEOUT = 5.0  # for the request line: a peer that sends nothing holds no thread long
MAX_RESPONSE_FILE = 64 * 1024 * 1024  # larger: prepare reads it, not the service
MAX_AT_ONCE = 32  # connections served at once; more are told to use prepare's own path
STOP_WAIT = 30.0  # at the service's stop, for claims in flight


@dataclass
class Reply:
    outcome: str
    reason: str = ""
    lines: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        body = {"outcome": self.outcome, "reason": self.reason, "lines": self.lines}
        return json.dumps(body).encode() + b"\n"


@dataclass(frozen=True)
class Request:
    config: str  # the config file the client resolved (absolute)
    response_file: str  # its JOB_RESPONSE_FILE
    claimant: Claimant


class BadRequest(Exception):
    """A request that is not one: the reason goes back to the peer, never its content."""


def parse_request(raw: bytes) -> Request:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request is not a JSON line") from None
    if not isinstance(data, dict):
        raise BadRequest("the request is not a JSON object")
    config, response, pid = data.get("config"), data.get("response_file"), data.get("pid")
    owners, pid_ns = data.get("owners", []), data.get("pid_ns", 0)
    if not (isinstance(config, str) and os.path.isabs(config)):
        raise BadRequest("config: an absolute path is needed")
    if not (isinstance(response, str) and response):
        raise BadRequest("response_file: a path is needed")
    if not (isinstance(pid, int) and pid > 0 and isinstance(pid_ns, int)):
        raise BadRequest("pid, pid_ns: integers are needed")
    if not (
        isinstance(owners, list)
        and len(owners) <= 64
        and all(
            isinstance(o, list) and len(o) == 2 and all(isinstance(n, int) for n in o)
            for o in owners
        )
    ):
        raise BadRequest("owners: a list of [pid, start time] is needed")
    return Request(config, response, Claimant(pid, owners, pid_ns))


PeerCheck = Callable[[socket.socket], tuple[int, int]]  # (pid, uid)


def peer_credentials(conn: socket.socket) -> tuple[int, int]:
    """The connecting process's pid and uid, as the kernel vouches for them."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


class ClaimServer:
    """The socket: one thread accepting, one per connection (MAX_AT_ONCE at most)."""

    def __init__(
        self,
        path: Path,
        answer: Callable[[Request, int], Reply],
        *,
        peer: PeerCheck = peer_credentials,
        uid: int | None = None,
    ) -> None:
        self.path = path
        self.answer = answer
        self.peer = peer
        self.uid = os.getuid() if uid is None else uid
        self.slots = threading.BoundedSemaphore(MAX_AT_ONCE)
        self.sock: socket.socket | None = None
        self.wake_r, self.wake_w = os.pipe()
        self.thread: threading.Thread | None = None
        self.serving: set[threading.Thread] = set()  # a connection's thread each
        # Peers told "busy", until they close: (the time they must have closed by).
        self.told_busy: dict[socket.socket, float] = {}
        self.inode = 0

    def start(self) -> None:
        """Bind (a stale socket of an earlier service replaced) and serve in a thread."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        # Bound under another name, made 0600, then renamed: never connectable at another
        # mode (and umask is the whole process's, not this thread's, to change).
        temporary = folder / f".{self.path.name}.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(temporary))
            os.chmod(temporary, 0o600)
            sock.listen(MAX_AT_ONCE)
            os.replace(temporary, self.path)  # one service per state dir: the old is stale
        except BaseException:
            sock.close()
            temporary.unlink(missing_ok=True)
            raise
        self.inode = os.stat(self.path).st_ino
        self.sock = sock
        self.thread = threading.Thread(target=self._accept, name="claims", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop accepting; the socket file goes (if it is still ours)."""
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")
        if self.thread is not None:
            self.thread.join(timeout=10)
        # A claim in flight finishes (a few milliseconds, or a dead machine's check):
        # cut short, it would leave its job a half-made hand-over to undo.
        deadline = time.monotonic() + STOP_WAIT
        for serving in list(self.serving):
            serving.join(timeout=max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                self.path.unlink()
        if self.sock is not None:
            self.sock.close()
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _accept(self) -> None:
        """Accept, and hand each connection to a thread of its own. When every slot is
        taken, answer "busy" here without ever waiting on the peer (a peer that sends
        slowly must not hold up the claims behind it): what it still sends is read as
        it comes, and its socket closed when it closes (or READ_TIMEOUT after)."""
        assert self.sock is not None
        while True:
            deadlines = self.told_busy.values()
            wait = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            watched = [self.sock.fileno(), self.wake_r, *(c.fileno() for c in self.told_busy)]
            readable, _, _ = select.select(watched, [], [], wait)
            if self.wake_r in readable:
                for conn in self.told_busy:
                    conn.close()
                return
            now = time.monotonic()
            for conn, deadline in list(self.told_busy.items()):
                if (conn.fileno() in readable and not drained(conn)) or now >= deadline:
                    del self.told_busy[conn]
                    conn.close()
            if self.sock.fileno() not in readable:
                continue
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue  # the peer went before we took it
            if not self.slots.acquire(blocking=False):
                self._tell_busy(conn)
                continue
            serving = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.serving.add(serving)
            serving.start()

    def _tell_busy(self, conn: socket.socket) -> None:
        """The reply, without waiting; the socket stays open until the peer closes: one
        closed with its request unread would reset, and the peer lose the reply."""
        try:
            conn.setblocking(False)
            conn.send(Reply(NOT_HERE, "the pool service is busy").encode())
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()  # the peer went: nothing to tell
            return
        if len(self.told_busy) >= MAX_AT_ONCE:  # the longest told goes first
            oldest = min(self.told_busy, key=self.told_busy.__getitem__)
            del self.told_busy[oldest]
            oldest.close()
        self.told_busy[conn] = time.monotonic() + READ_TIMEOUT

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._reply(conn, self.handle(conn))
        finally:
            self.serving.discard(threading.current_thread())
            self.slots.release()

    def handle(self, conn: socket.socket) -> Reply:
        """One connection's answer; never raises (the service goes on serving)."""
        try:
            conn.settimeout(READ_TIMEOUT)
            pid, uid = self.peer(conn)
            if uid != self.uid:
                log.get().warning("claim_refused", peer_uid=uid, peer_pid=pid)
                return Reply(ERROR, f"refused: uid {uid} is not the pool service's ({self.uid})")
            request = parse_request(read_line(conn))
            return self.answer(request, pid)
        except BadRequest as e:
            log.get().warning("claim_bad_request", error=str(e))
            return Reply(ERROR, f"bad request: {e}")
        except OSError as e:  # the peer went, or sent nothing in time
            return Reply(ERROR, f"the request was not read: {e.strerror or type(e).__name__}")
        except Exception as e:  # a bug: said in the admin log, the service goes on
            log.get().error("claim_failed", kind=type(e).__name__, error=str(e)[:300])
            return Reply(ERROR, f"internal error: {type(e).__name__}")

    def _reply(self, conn: socket.socket, reply: Reply) -> None:
        with conn, contextlib.suppress(OSError):  # a peer gone: its prepare goes on itself
            conn.settimeout(READ_TIMEOUT)
            conn.sendall(reply.encode())
            conn.shutdown(socket.SHUT_WR)
            # What a refused or oversized request left unread, dropped (bounded): closed
            # with it unread, the socket would reset and the peer lose the reply.
            for _ in range(MAX_REQUEST // 4096 + 1):
                if not conn.recv(4096):
                    break


def drained(conn: socket.socket) -> bool:
    """Read what a non-blocking socket holds; False once the peer closed, failed, or sent
    more than any request."""
    try:
        for _ in range(MAX_REQUEST // 4096 + 2):
            if not conn.recv(4096):
                return False
    except BlockingIOError:
        return True
    except OSError:
        pass
    return False


def read_line(conn: socket.socket) -> bytes:
    """The request line: up to MAX_REQUEST bytes, ended by a newline or the peer's EOF."""
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise BadRequest(f"the request is over {MAX_REQUEST} bytes")
    line = data.split(b"\n", 1)[0]
    if len(line) > MAX_REQUEST:
        raise BadRequest(f"the request is over {MAX_REQUEST} bytes")
    return line


class ClaimDesk:
    """What the service answers: takes a machine for a job as prepare would, or says why
    prepare must do it itself."""

    def __init__(self, settings: Settings, config_file: Path, dm: DockerMachine) -> None:
        self.settings = settings
        self.config_file = Path(os.path.abspath(config_file))
        # The file as the service read it: a job's prepare reads it anew, so a changed
        # file sends it down its own path (its settings are the file's, not ours).
        self.config_bytes = self.config_file.read_bytes()
        self.state = StateDir(settings.state_dir)
        self.dm = dm

    def answer(self, request: Request, peer_pid: int) -> Reply:
        answered = log.Timer()
        # The asking prepare as it is now: one gone later (a cancel) is owed no machine.
        peer = (peer_pid, process_start_time(peer_pid))
        early = self._refusal(request, peer_pid)
        if early is not None:
            # Why prepare claims itself, for the admin; the reason's words are ours.
            log.get().info("claim_left_to_prepare", outcome=early.outcome, reason=early.reason)
            return early
        settings, claimant = self.settings, request.claimant
        try:  # as prepare checks them; prepare says what is wrong, in its own words
            job = read_job(request.response_file)
            state_owner.claim(settings, self.config_file)
            state_owner.claim_gitlab(settings, job.server_url)
        except DriverError as e:
            log.get().info("claim_left_to_prepare", outcome=NOT_HERE, reason=type(e).__name__)
            return Reply(NOT_HERE, e.message.splitlines()[0])
        stage = Stage(
            settings, job, self.state, self.state.job(job.id), settings.machine_name(job.id)
        )
        with structlog.contextvars.bound_contextvars(
            pid=os.getpid(),
            job_id=job.id,
            machine=stage.machine,
            stage="prepare",
            via="pool_service",
            prepare_pid=claimant.pid,
        ):
            return self._claim(stage, claimant, peer, answered)

    def _refusal(self, request: Request, peer_pid: int) -> Reply | None:
        """Why the desk does not answer this request itself, or None."""
        if request.config != str(self.config_file):
            return Reply(NOT_HERE, "another config file than the pool service's")
        try:
            if self.config_file.read_bytes() != self.config_bytes:
                return Reply(NOT_HERE, "the config file changed since the pool service started")
        except OSError:
            return Reply(NOT_HERE, "the config file cannot be read")
        if self.settings.image.container_mode:
            return Reply(NOT_HERE, "image mode: prepare starts the job's containers itself")
        claimant = request.claimant
        if claimant.pid_ns == pid_namespace() and claimant.pid != peer_pid:
            return Reply(ERROR, "refused: the pid given is not the connecting process's")
        try:  # the runner's response file; a FIFO or device is not read into the service
            response = os.stat(request.response_file)
        except OSError:
            return Reply(NOT_HERE, "the job's response file cannot be read")
        if not stat.S_ISREG(response.st_mode) or response.st_size > MAX_RESPONSE_FILE:
            return Reply(NOT_HERE, "the job's response file is no regular file of a job's size")
        return None

    def _claim(
        self, stage: Stage, claimant: Claimant, peer: tuple[int, int], answered: log.Timer
    ) -> Reply:
        reply = self._claim_locked(stage, claimant, peer)
        # Its share of the job's prepare, for bench/claim.py; no content of the request.
        log.get().info("claim_answered", outcome=reply.outcome, seconds=answered.seconds)
        return reply

    def _claim_locked(self, stage: Stage, claimant: Claimant, peer: tuple[int, int]) -> Reply:
        lock = stage.job_dir.lock()
        if not lock.try_acquire():
            return Reply(NOT_HERE, "the job's lock is held (an earlier attempt, or its cleanup)")
        job_dir, made_dir = stage.job_dir, not stage.job_dir.exists()
        try:
            # A prepare cancelled before this lock: its cleanup may have run already, and
            # nobody would remove a machine taken for it now.
            if _gone(peer):
                return Reply(NOT_HERE, "the asking prepare is gone")
            leftover = self._leftover(stage)
            if leftover:
                return Reply(NOT_HERE, f"left over from an earlier attempt: {leftover}")
            total, lines = log.Timer(), list[str]()
            job_dir.create()
            ssh.check_control_path(job_dir)
            try:
                taken = take_from_pool(stage, lines.append, claimant, count=("hit",))
            except Exception as e:  # as prepare: the machine removed, then said
                ssh.stop_master(job_dir)
                remove_machines(stage, self.dm, log.to_admin_log, why="its prepare failed")
                job_dir.remove()
                reason = e.message if isinstance(e, DriverError) else type(e).__name__
                log.get().error("claim_failed", kind=type(e).__name__, error=reason[:300])
                # Not the job's failure: its prepare goes on, on its own path.
                lines.append(
                    f"The pool service could not hand a machine over ({reason.splitlines()[0]}); "
                    "it was removed: preparing without it"
                )
                return Reply(FAILED, "the claim failed", lines)
            if not taken:
                if made_dir:
                    job_dir.remove()
                return Reply(MISS, "no ready machine answered", lines)
            if _gone(peer):  # cancelled while we claimed: undone under its lock, as cleanup
                ssh.stop_master(job_dir)
                remove_machines(stage, self.dm, log.to_admin_log, why="its prepare is gone")
                job_dir.remove()
                log.get().warning("claim_undone", reason="the asking prepare is gone")
                return Reply(FAILED, "the asking prepare is gone")
            seconds = total.seconds
            metrics.observe(
                self.settings.state_dir, metrics.PREPARE_SECONDS, seconds, {"source": "pool"}
            )
            log.get().info("prepared", seconds=seconds, source="pool")
            self._write_textfile()
            return Reply(CLAIMED, lines=lines)
        finally:
            lock.release(remove=not job_dir.path.exists())

    def _leftover(self, stage: Stage) -> str:
        """What an earlier attempt of this job left (prepare removes it first), or ""."""
        if stage.job_dir.state_file.exists():
            return "a job record"
        if any(job == stage.job.id for _, job in self.state.claims()):
            return "a claimed pool machine"
        if self.dm.exists(stage.machine):
            return f"machine {stage.machine}"
        return ""

    def _write_textfile(self) -> None:
        """What main() does after prepare: the figures for node_exporter, if wanted."""
        if self.settings.metrics.textfile is None:
            return
        try:
            metrics_textfile.write(self.settings, self.settings.metrics.textfile)
        except Exception as e:  # figures never change a claim's outcome
            log.get().warning("metrics_textfile_not_written", error=str(e)[:300])


def _gone(peer: tuple[int, int]) -> bool:
    """Whether the connecting process (pid, start time when its request came) has ended
    (or is a zombie); one the kernel could not name to us (pid 0: from a PID namespace
    outside ours) counts as alive."""
    pid, started = peer
    return pid > 0 and (started == 0 or process_start_time(pid) != started)


def start(settings: Settings, config_file: Path | None, dm: DockerMachine) -> ClaimServer | None:
    """The desk on its socket, for the service; None (said in the admin log) if there is
    no config file to compare with, or the socket cannot be made: jobs then claim
    through prepare's own path, as without the service."""
    if config_file is None:
        return None
    path = Path(claim_socket(str(settings.state_dir)))  # where prepare's fast path asks
    try:
        server = ClaimServer(path, ClaimDesk(settings, config_file, dm).answer)
        server.start()
    except OSError as e:
        log.get().warning("claim_socket_not_started", path=str(path), error=str(e))
        return None
    log.get().info("claim_socket_listening", path=str(path))
    return server
