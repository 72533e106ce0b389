"""run SCRIPT STAGE: run one stage's script in the job's machine.

This runs once per stage, so it stays lean: no pydantic, no structlog, no
docker SDK on the success path. The script travels on ssh's stdin (it holds
the job's secrets, so never on argv); ssh's stdout and stderr are ours, so
output reaches the job log as it comes, with nothing buffering it. In image mode
the VM-side wrapper hands the stage to its container's keeper over FIFOs (see
WRAPPER): no ``docker exec`` per stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING

from driver.contract import JOB_DIR_ENV, clean_env, read_job
from driver.errors import BuildFailure, Cancelled, CommandTimedOut, DriverError, JobError
from driver.image.stage import wrapper_args
from driver.state import JobDir, JobPhase, JobRecord, Lock, LockTimeout

if TYPE_CHECKING:
    import argparse

# Runs in the VM. Reads "<size>\n<script>gmd-end\n" from stdin into a private
# file and runs it in its own process group (job control on just for the
# start) with stdin from /dev/null (a job command reading stdin cannot eat the
# script); the trailer proves the script arrived whole. bash's own stderr goes to
# /dev/null once the script is in, so a job notice ("[1]+ Done") never reaches the
# log; the stage's stderr goes to fd 3. Our stdin stays open while the driver's `run`
# lives; when it closes (cancel, or `run` was killed) the stage's processes get
# SIGTERM, then SIGKILL after the grace, and the wrapper waits for that to finish.
# ssh's own failures exit 255, so a script's real 255 is also written to a marker
# file the driver can ask for; every failure of the wrapper itself exits 255
# without that marker. Few programs run here: each costs time on every stage. No
# single quotes in here: it is sent single-quoted.
# Image mode (driver/image) passes the stage's container, its keeper's PID and the
# keeper's channel dir (bound into the container). No docker exec per stage (it costs
# more than the rest of a stage): four FIFOs are made in the channel dir, the stage's
# token is written to the keeper's `ctl` FIFO, and the keeper (driver/image/sh/keeper.sh,
# in the container) opens them and answers "started" on `rc` before it runs the first
# shell found, as the docker executor's detect script does, with the script on its stdin;
# its exit code follows on `rc`. A stop is written to the stage's `stop` FIFO: the
# keeper signals the stage's process group (it runs under setsid: "started group") and
# answers on `ack`; with no answer within 2 s (an image without setsid, a stuck
# container) a docker exec signals every process in the container but PID 1 and the
# keeper, as the docker executor's stop does. A keeper that does not answer
# or a stage that ends without an exit code is reported like a lost machine, with the
# container's state as the reason. With CI_DEBUG_SERVICES, "<container>=<label>,..." of
# the services: their output is followed into the job log while the stage runs, from the
# last line an earlier stage showed (its timestamp is kept in the VM), so none is lost.
WRAPPER = r"""
umask 077
grace=$1 token=$2 ctr=$3 keeper=$4 chan=$5 services=$6 dir=${TMPDIR:-/tmp}
script=$dir/gmd-stage.$token stopping=$dir/gmd-stop.$token marks=$dir/gmd-services-shown
IFS= read -r size || exit 255
set -C
: > "$script" || exit 255
set +C
head -c "$size" >> "$script"
IFS= read -r end
if [ "$end" != gmd-end ]; then
  rm -f "$script"; echo "the stage script arrived incomplete" >&2; exit 255
fi
exec 3>&2 2>/dev/null
follow() {
  for s in ${services//,/ }; do
    n=${s%%=*}
    # The follower appends the time of each line it shows: killed mid-line (unfollow), it
    # loses that line, never the times before it (an overwrite killed after its truncation
    # left nothing, and the next stage showed the output of the service again from its
    # start). Here, between stages, the file is cut back to its last line.
    since=$(tail -n 1 "$marks.$n")
    if [ -n "$since" ]; then
      echo "$since" > "$marks.$n.new" && mv -f "$marks.$n.new" "$marks.$n"
    fi
    set -m
    (docker logs -f -t ${since:+--since "$since"} "$n" 2>&1 | while IFS= read -r l; do
      ts=${l%% *}
      if [ "$ts" != "$since" ]; then
        printf "[service:%s] %s\n" "${s#*=}" "${l#* }"; echo "$ts" >> "$marks.$n"
      fi
    done >&3) &
    followers="$followers $!"
    set +m
  done
}
unfollow() {
  for f in $followers; do kill -- -$f; done
  followers=
}
lost() {
  unfollow
  running=$(docker inspect -f "{{.State.Running}}" "$ctr")
  if [ "$running" != true ]; then
    set -- "the job container $ctr is not running (it stopped or was removed)"
  fi
  echo "$1" > "$dir/gmd-rc.$token"
  rm -f "$script" "$stopping" "$c".*
  exit 255
}
if [ -z "$ctr" ]; then
  set -m
  bash "$script" < /dev/null 2>&3 3>&- &
  pid=$!
  set +m
else
  c=$chan/$token
  mkfifo -m 644 "$c.in" "$c.stop" && mkfifo -m 622 "$c.out" "$c.err" "$c.rc" "$c.ack" ||
    lost "the job container $ctr: cannot make the stage pipes in $chan"
  exec 5<> "$c.rc" 7<> "$c.stop" 8<> "$c.ack"
  set -m
  (cat "$script" > "$c.in" & cat "$c.err" >&3 & cat "$c.out"; wait) &
  pid=$!
  set +m
  echo "$token" > "$chan/ctl" &
  sender=$!
  if ! IFS= read -r -t 30 -u 5 started; then
    kill $sender; kill -KILL -- -$pid
    lost "the job container $ctr did not take the stage within 30s (see: docker logs $ctr)"
  fi
  exec 6< "$c.rc" 5<&-
  rm -f "$c".*
  if [ -n "$services" ]; then follow; fi
fi
stop() {
  if [ -n "$ctr" ]; then
    ack=
    if [ "$started" = "started group" ]; then echo $1 >&7; IFS= read -r -t 2 -u 8 ack; fi
    if [ "$ack" != $1 ]; then
      k="for d in /proc/[0-9]*; do p=\${d#/proc/}; case \$p in 1|$keeper|\$\$) ;;"
      docker exec -u 0 "$ctr" sh -c "$k *) kill -$1 \$p 2>/dev/null;; esac; done"
    fi
    if [ $1 = TERM ]; then return; fi
  fi
  kill -$1 -- -$pid
}
(read -r _; : > "$stopping"; stop TERM; sleep "$grace"; stop KILL) <&0 >/dev/null 2>&1 &
watchdog=$!
wait $pid
rc=$?
if [ -n "$ctr" ]; then IFS= read -r -u 6 rc; unfollow; fi
if [ -e "$stopping" ]; then wait $watchdog; rm -f "$script" "$stopping"; exit 255; fi
kill $watchdog
rm -f "$script"
case $rc in
  "" | *[!0-9]*) lost "the job container $ctr: the stage shell ended without an exit code";;
  255) echo 255 > "$dir/gmd-rc.$token";;
esac
exit $rc
"""
TRAILER = b"gmd-end\n"
assert "'" not in WRAPPER

# Asked only after ssh exits 255: did the script itself exit 255?
# Anything else in the file is the wrapper's reason for a 255 (image mode), to stderr.
PROBE = r"""f=${TMPDIR:-/tmp}/gmd-rc.$1; r=$(cat "$f" 2>/dev/null); rm -f "$f"
case $r in 255) echo 255;; ?*) echo "$r" >&2;; esac"""
SSH_FAILED = 255
PROBE_TIMEOUT = 15.0
# How long a stage waits for its stage lock: a sweeper's look holds it for an instant.
STAGE_LOCK_WAIT = 30.0


def main(args: argparse.Namespace) -> int:
    return run_stage(args.script, args.stage, args.config_path)


def run_stage(script: str, stage: str, config_path: str | None) -> int:
    env_dir = os.environ.get(JOB_DIR_ENV)
    job_dir = JobDir.at(env_dir) if env_dir else _job_dir_from_config(config_path)
    stage_lock = _hold_stage_lock(job_dir)
    try:
        return _run_held(script, stage, job_dir)
    finally:
        if stage_lock is not None:
            # The last stage's time is when it ended: a long stage that just failed is
            # not "no stage ran for grace" in the gap before its cleanup.
            with contextlib.suppress(OSError):
                os.utime(job_dir.stage_lock_path)
            stage_lock.release()


def _run_held(script: str, stage: str, job_dir: JobDir) -> int:
    # Read under the lock: a sweeper that removed the machine removed its record first.
    record = _load_record(job_dir)
    started = time.monotonic()
    try:
        code = _run(script, stage, job_dir, record)
    except BuildFailure as e:
        _log_outcome(record, stage, started, "build_failure", exit_code=e.exit_code)
        raise
    except DriverError as e:
        _log_outcome(record, stage, started, _failure_kind(e, job_dir))
        _log_failure(record, stage)
        raise
    except BaseException:
        _log_outcome(record, stage, started, "internal_error")
        raise
    _log_outcome(record, stage, started, "success", exit_code=code)
    return code


def _hold_stage_lock(job_dir: JobDir) -> Lock | None:
    """Take the job's stage lock (shared) for the whole stage: the sweeper never removes
    a machine under it. It is held exclusively only for an instant by a sweeper's look,
    or through a removal: wait for that, never run without it. None: the job's dir is
    gone (loading its record then says so)."""
    lock = job_dir.stage_lock()
    try:
        lock.acquire(STAGE_LOCK_WAIT, f"the stage lock of job {job_dir.job_id}")
    except FileNotFoundError:
        return None
    except LockTimeout as e:
        raise DriverError(
            f"{e.message}: the sweeper is removing this job's machine",
            hint="the sweeper removes a machine only with proof its job is over; "
            "`gitlab-machine-driver sweep --dry-run` says why",
        ) from None
    with contextlib.suppress(OSError):
        os.utime(job_dir.stage_lock_path)  # the last stage's time, for the sweeper
    return lock


def _failure_kind(error: DriverError, job_dir: JobDir) -> str:
    if isinstance(error, Cancelled):
        return "cancelled"
    if isinstance(error, JobError):
        return "no_usable_job_state"
    if job_dir.lost_marker.exists():
        return "machine_lost"
    return "system_failure"


def _log_outcome(
    record: JobRecord, stage: str, started: float, outcome: str, exit_code: int | None = None
) -> None:
    """One JSON line in the admin's log for every stage, as structlog writes them. Cheap:
    one append, no structlog (run starts once per stage), and never a reason to fail."""
    if not record.log_path:
        return
    now = time.time()
    line = {
        "job_id": record.job_id,
        "machine": record.machine,
        "stage": stage,
        "pid": os.getpid(),
        "outcome": outcome,
        "exit_code": exit_code,
        "seconds": round(time.monotonic() - started, 3),
        "event": "stage_finished",
        "level": "info" if outcome in ("success", "build_failure") else "warning",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        + f".{int(now % 1 * 1e6):06d}Z",
    }
    try:
        fd = os.open(record.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # the admin's log is not the job's business


def _run(script_path: str, stage: str, job_dir: JobDir, record: JobRecord) -> int:
    if job_dir.lost_marker.exists():
        # Do not make every later stage wait out a connect timeout on a dead VM.
        raise DriverError(
            f"machine {record.machine} was lost earlier "
            f"({job_dir.lost_marker.read_text().strip()}); not running stage {stage}"
        )
    try:
        with open(script_path, "rb") as f:
            script = f.read()
    except OSError as e:
        raise JobError(f"cannot read the stage script {script_path}: {e.strerror}") from None

    grace = record.kill_grace
    token = os.urandom(8).hex()
    ssh = job_dir.ssh_argv("-T")
    # --norc: bash run by sshd would otherwise read ~/.bashrc (a second time, after the
    # login shell): slow on some images, and not the job's business.
    container = wrapper_args(job_dir, stage)  # "" in shell mode
    remote = f"exec bash --norc --noprofile -c '{WRAPPER}' gmd-stage {grace:g} {token} {container}"

    signal.signal(signal.SIGTERM, _cancel)
    signal.signal(signal.SIGINT, _cancel)
    # posix_spawn, not subprocess: this runs once per stage and every import counts.
    stdin_read, stdin_write = os.pipe()
    pid = os.posix_spawnp(
        "ssh", [*ssh, remote], clean_env(), file_actions=[(os.POSIX_SPAWN_DUP2, stdin_read, 0)]
    )
    os.close(stdin_read)
    try:
        with contextlib.suppress(BrokenPipeError):  # ssh gave up; its exit code says why
            _write_all(stdin_write, b"%d\n" % len(script) + script + TRAILER)
        rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except Cancelled:
        _stop(pid, stdin_write, grace)
        raise Cancelled(
            f"stage {stage} cancelled: its processes in the VM were sent SIGTERM "
            f"(SIGKILL after {grace:g}s)"
        ) from None
    os.close(stdin_write)  # only now: an open stdin is what keeps the stage running

    if rc == 0:
        return 0
    if rc == SSH_FAILED or rc < 0:  # ssh failed, or was killed by a signal
        exited_255, probe_error = _probe(ssh, token)
        if not exited_255:
            job_dir.lost_marker.write_text(f"during stage {stage}")
            raise _connection_lost(record.machine, stage, probe_error)
    if stage == "build_script" or stage.startswith("step_"):
        job_dir.failed_marker.write_text(stage)  # cleanup may keep the machine for inspection
    raise BuildFailure(rc)


def _log_failure(record: JobRecord, stage: str) -> None:
    """Into the admin's log as well (only on failure: the success path stays lean)."""
    if not record.log_path:
        return
    from pathlib import Path

    from driver import log

    # main's error handler writes the line once logging is set up.
    log.setup(Path(record.log_path), job_id=record.job_id, machine=record.machine, stage=stage)


def _connection_lost(machine: str, stage: str, probe_error: str) -> DriverError:
    if probe_error.startswith("the job container"):
        return DriverError(
            f"{probe_error.strip()}, during stage {stage}",
            hint="something in the VM stopped the job's container (out of memory?); "
            "the runner may retry the job",
        )
    if "IDENTIFICATION HAS CHANGED" in probe_error or "verification failed" in probe_error:
        return DriverError(
            f"machine {machine} presented a different SSH host key than at first contact "
            f"(during stage {stage}): refusing to connect; this may be an attack "
            "(someone else answering at its address) or the VM was replaced",
            hint="the job is stopped as a system failure; check the cloud for a VM at "
            "that address that is not this job's",
        )
    return DriverError(
        f"lost the connection to machine {machine} during stage {stage}; "
        "the script may not have finished",
        hint="the VM stopped answering (it may have been deleted or crashed); "
        "the runner may retry the job",
    )


def _cancel(signum: int, frame: FrameType | None) -> None:
    raise Cancelled(signal.Signals(signum).name)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _stop(pid: int, stdin_write: int, grace: float) -> None:
    """Closing ssh's stdin tells the wrapper in the VM to stop the stage; then wait."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.close(stdin_write)
    deadline = time.monotonic() + grace + 5
    try:
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # the signal came just after ssh was reaped: it is gone already


def _probe(ssh: list[str], token: str) -> tuple[bool, str]:
    """Did the script itself exit 255? If the VM cannot say, also why (ssh's error)."""
    from driver import process  # only after a failure: the success path stays lean

    try:
        probe = process.run(
            [*ssh, f"exec bash --norc --noprofile -c '{PROBE}' gmd-probe {token}"],
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except CommandTimedOut:
        return False, "no answer"
    return probe.exit_code == 0 and probe.stdout.strip() == "255", probe.stderr


def _load_record(job_dir: JobDir) -> JobRecord:
    try:
        record = job_dir.load()
    except JobError as e:
        raise JobError(
            f"no usable machine record for this job: {e.message}",
            hint="prepare did not finish, or cleanup already ran",
        ) from None
    if record.phase != JobPhase.READY:
        raise JobError(f"the job's machine is not ready (state: {record.phase})")
    return record


def _job_dir_from_config(config_path: str | None) -> JobDir:
    """Slow path, for stages run by hand without the config stage's job_env."""
    from driver.settings import load_settings

    settings = load_settings(config_path)
    job = read_job()
    return JobDir(settings.state_dir, job.id)
