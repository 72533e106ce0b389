"""Drive a custom-executor driver's executables exactly as gitlab-runner would.

One `JobRun` is one CI job: per preparation attempt a host temp dir with
response.json, config_exec (JSON on stdout), prepare_exec, retried up to three
times with cleanup_exec in between; then run_exec once per stage with the
runner's bash scripts; then cleanup_exec. Each executable runs in its own
process group; cancel and timeouts send SIGTERM, then SIGKILL, to that group.
Facts come from /work/shared/custom-executor.md and gitlab-runner's source.

A JobRun keeps all its state on itself, so many jobs can run in parallel
threads of one test.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Literal, TypeVar

from .job import (
    POST_STAGES,
    BuildContext,
    Job,
    archive_cache_stage,
    job_payload,
    job_variables,
    output_lines,
    render_script,
    services_json,
    stage_title,
    upload_artifacts_stage,
)

Outcome = Literal["success", "failed", "system_failure", "cancelled"]
CancelMode = Literal["cancel", "abort"]
ExecKind = Literal["config", "prepare", "run", "cleanup"]
# How a job cancel treats a running executable: killed ("job"), only bounded
# in time ("post": after_script and the *_on_failure stages), untouched ("none").
_CancelPolicy = Literal["job", "post", "none"]

_T = TypeVar("_T")
_D = TypeVar("_D")

MASK = "[MASKED]"
_READ_SIZE = 65536
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class CustomExecutorConfig:
    """`[runners.custom]` and the `[[runners]]` keys the custom executor reads."""

    run_exec: str
    run_args: list[str] = field(default_factory=list)
    config_exec: str | None = None
    config_args: list[str] = field(default_factory=list)
    prepare_exec: str | None = None
    prepare_args: list[str] = field(default_factory=list)
    cleanup_exec: str | None = None
    cleanup_args: list[str] = field(default_factory=list)
    builds_dir: str | None = None
    cache_dir: str | None = None
    config_exec_timeout: float = 3600.0
    prepare_exec_timeout: float = 3600.0
    cleanup_exec_timeout: float = 3600.0
    graceful_kill_timeout: float = 600.0
    force_kill_timeout: float = 10.0
    build_failure_exit_code: int = 1
    system_failure_exit_code: int = 2
    # The runner's side, not in [runners.custom]:
    preparation_attempts: int = 3
    preparation_retry_delay: float = 3.0
    # After a cancel the runner waits this long for the running stage before it
    # starts cleanup anyway, so cleanup can overlap a still-running run_exec.
    cancel_wait: float = 300.0
    # after_script's own bound, also the bound of post stages after a cancel.
    after_script_timeout: float = 300.0
    # gitlab-runner waits for stdout/stderr to close, not just for the process:
    # a child left holding them would hang the job. None waits like the runner;
    # a number gives up after that long and reports a system failure.
    pipe_close_timeout: float | None = 10.0
    runner_hostname: str = field(default_factory=socket.gethostname)
    # `[[runners]] environment`, and the runner's own version (CI_RUNNER_VERSION).
    environment: list[str] = field(default_factory=list)
    runner_version: str = "17.9.0"
    concurrent_id: int = 0
    short_token: str = "t3stTok3n"
    # Parent of the per-job temp dirs (the runner's own TMPDIR); None: the default.
    temp_root: str | None = None


@dataclass(frozen=True)
class CancelPlan:
    """Cancel the job `after` seconds into `stage` (a run stage, "config" or "prepare").

    mode "cancel": the stage ends, after_script, the *_on_failure stages and
    cleanup_file_variables still run. mode "abort": no further stage runs.
    """

    stage: str = "build_script"
    after: float = 0.0
    mode: CancelMode = "cancel"


@dataclass
class ExecRecord:
    """One call of one executable and how it went."""

    kind: ExecKind
    stage: str | None
    attempt: int
    argv: list[str]
    env: dict[str, str]
    started: float  # seconds since the job started
    seconds: float = 0.0
    pid: int | None = None
    returncode: int | None = None  # exit status; None if a signal ended it or it never ended
    signal: int | None = None  # the signal that ended it
    ended: Literal["exited", "signalled", "gave_up", "start_failed", "running"] = "running"
    signals_sent: list[str] = field(default_factory=list)  # e.g. ["SIGTERM", "SIGKILL"]
    killed_for: str | None = None  # "cancel", "abort", "timeout" or "exec_timeout"
    pipes_held_open: bool = False  # exited, but something kept stdout/stderr open
    group_left_running: list[int] = field(default_factory=list)  # pids left in its group
    stdout: str = ""  # raw, unmasked
    stderr: str = ""
    script_path: str | None = None
    script_mode: int | None = None
    script_text: str | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return f"run:{self.stage}" if self.kind == "run" else self.kind


@dataclass
class JobResult:
    outcome: Outcome
    exit_code: int | None  # the N from BUILD_EXIT_CODE_FILE for a build failure
    failure_message: str | None
    cancel_reason: str | None  # "cancel", "abort" or "timeout"
    allowed_failure: bool
    job_log: str  # masked, as GitLab would show it
    runner_log: str  # the runner's own log: cleanup output and warnings, unmasked
    records: list[ExecRecord]
    prepare_attempts: int
    temp_dirs: list[str]
    temp_dir_removed: bool
    cleanup_overlapped_run: bool
    seconds: float
    job: Job

    @property
    def succeeded(self) -> bool:
        return self.outcome == "success"

    def execs(self, kind: ExecKind) -> list[ExecRecord]:
        return [r for r in self.records if r.kind == kind]

    @property
    def stages_run(self) -> list[str]:
        return [r.stage for r in self.records if r.kind == "run" and r.stage is not None]

    def stage(self, name: str) -> ExecRecord:
        """The (last) run_exec call for a stage; KeyError if it never ran."""
        for record in reversed(self.records):
            if record.kind == "run" and record.stage == name:
                return record
        raise KeyError(f"stage {name!r} did not run; ran: {self.stages_run}")

    def lines(self, stage: str | None = None) -> list[str]:
        """Whole output lines of the job log, or of one stage's stdout and stderr."""
        if stage is None:
            return output_lines(self.job_log)
        record = self.stage(stage)
        return output_lines(record.stdout) + output_lines(record.stderr)

    def describe(self) -> str:
        """A summary to put in assertion messages."""
        lines = [f"outcome={self.outcome} exit_code={self.exit_code} msg={self.failure_message}"]
        for r in self.records:
            lines.append(
                f"  {r.name:<34} rc={r.returncode} sig={r.signal} {r.ended} "
                f"sent={r.signals_sent} {r.seconds:.2f}s"
            )
        return "\n".join([*lines, "--- job log ---", self.job_log])


@dataclass
class _Failure:
    kind: Literal["build", "system", "cancelled"]
    message: str
    exit_code: int | None = None


@dataclass
class _Attempt:
    """One preparation attempt: its temp dir and what config_exec told."""

    number: int
    tmp_dir: str
    ctx: BuildContext
    job_env: dict[str, str] = field(default_factory=dict)
    driver: str | None = None

    @property
    def response_file(self) -> str:
        return os.path.join(self.tmp_dir, "response.json")

    @property
    def exit_code_file(self) -> str:
        return os.path.join(self.tmp_dir, "build_exit_code")


# ------------------------------------------------------------ output plumbing


class _Masker:
    """Replaces secrets in a stream, holding back a tail that may begin one."""

    def __init__(self, secrets_: list[str]) -> None:
        self._secrets = sorted({s for s in secrets_ if s}, key=len, reverse=True)
        self._pending = ""

    def feed(self, text: str) -> str:
        buf = self._pending + text
        for value in self._secrets:
            buf = buf.replace(value, MASK)
        keep = self._partial_tail(buf)
        self._pending = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

    def _partial_tail(self, buf: str) -> int:
        longest = 0
        for value in self._secrets:
            i = buf.find(value[0], max(0, len(buf) - len(value) + 1))
            while i != -1 and len(buf) - i > longest:
                if value.startswith(buf[i:]):
                    longest = len(buf) - i
                    break
                i = buf.find(value[0], i + 1)
        return longest


class _Transcript:
    """A log that grows from many threads; runner lines always start a line."""

    def __init__(self, on_text: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._at_line_start = True
        self._on_text = on_text

    def write(self, text: str) -> None:
        if text:
            with self._lock:
                self._append(text)

    def line(self, text: str) -> None:
        with self._lock:
            self._append(("" if self._at_line_start else "\n") + text + "\n")

    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)

    def _append(self, text: str) -> None:
        self._parts.append(text)
        self._at_line_start = text.endswith("\n")
        if self._on_text is not None:
            self._on_text(text)


class _Pump:
    """Reads one pipe chunk by chunk (no line buffering), keeps and forwards it."""

    def __init__(
        self,
        pipe: IO[bytes],
        sink: _Transcript | None,
        masker: _Masker | None,
        on_eof: Callable[[], None],
    ) -> None:
        self._pipe = pipe
        self._sink = sink
        self._masker = masker
        self._on_eof = on_eof
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lock = threading.Lock()
        self._chunks: list[str] = []
        self._frozen = False
        self.eof = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            fd = self._pipe.fileno()
            while data := os.read(fd, _READ_SIZE):
                self._take(self._decoder.decode(data))
            self._take(self._decoder.decode(b"", final=True))
            if self._masker is not None:
                self._forward(self._masker.flush())
        finally:
            self._pipe.close()
            self.eof = True
            self._on_eof()

    def _take(self, text: str) -> None:
        with self._lock:
            if self._frozen:
                return
            self._chunks.append(text)
        self._forward(self._masker.feed(text) if self._masker else text)

    def _forward(self, text: str) -> None:
        if self._sink is not None and not self._frozen:
            self._sink.write(text)

    def freeze(self) -> str:
        """Stop recording (a held-open pipe may never end) and return the text so far."""
        with self._lock:
            self._frozen = True
            return "".join(self._chunks)


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    pumps: list[_Pump]
    exited_at: float | None = None

    @property
    def pipes_open(self) -> bool:
        return not all(p.eof for p in self.pumps)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("latin-1")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def go_duration(seconds: float) -> str:
    """Format like Go's time.Duration, as the runner's messages do (1h0m0s, 3s)."""
    if seconds < 60:
        return f"{seconds:g}s"
    whole = int(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s"


# ---------------------------------------------------------------- the job


class JobRun:
    """One job through the driver. `run()` blocks; `cancel()` may come from any thread."""

    def __init__(
        self,
        config: CustomExecutorConfig,
        job: Job,
        *,
        env: Mapping[str, str] | None = None,
        cancel: CancelPlan | None = None,
        keep_temp_dir: bool = False,
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        job.validate()
        self.config = config
        self.job = job
        self._base_env = dict(os.environ if env is None else env)
        self._plan = cancel
        self._keep_temp_dir = keep_temp_dir
        self._log = _Transcript(on_log)
        self._runner_log = _Transcript()
        self._secrets = job.masked_values()
        # Condition over all state below: cancel flags, child exits, pipe EOFs.
        self._cond = threading.Condition()
        self._cancel_reason: str | None = None
        self._cancel_at: float | None = None
        self._abort = False
        self._closing = False  # final cleanup begun: cancels no longer count
        self._stop_new_stages = False
        self._stages_done = False
        self._timers: list[threading.Timer] = []
        self._records: list[ExecRecord] = []
        self._attempts: list[_Attempt] = []
        self._start = time.monotonic()

    # ------------------------------------------------------------ public

    def cancel(self, mode: CancelMode = "cancel") -> None:
        """Cancel the job as GitLab would (mode "abort": no further stage runs)."""
        self._request_cancel(mode, "abort" if mode == "abort" else "cancel")

    def run(self) -> JobResult:
        self._start = time.monotonic()
        ctx = self._ctx_template()
        self._log.line(f"Running with gitlab-runner {ctx.runner_version} (emulated)")
        self._log.line(f"  on {ctx.runner_description} {ctx.short_token}")
        self._log.line('Preparing the "custom" executor')
        self._arm_timer(self.job.timeout, "cancel", "timeout")
        try:
            attempt, failure = self._prepare()
            overlapped = False
            if attempt is not None:
                failure, overlapped = self._run_stages_then_cleanup(attempt)
        finally:
            for timer in self._timers:
                timer.cancel()
        return self._result(failure, overlapped)

    def prepare_only(self) -> PreparedJob:
        """config + prepare (with retries), then stop as if the runner host died."""
        self._start = time.monotonic()
        attempt, failure = self._prepare()
        return PreparedJob(
            ok=attempt is not None,
            failure=None if failure is None else failure.message,
            temp_dir=None if attempt is None else attempt.tmp_dir,
            env={} if attempt is None else self._env(attempt),
            job_env={} if attempt is None else dict(attempt.job_env),
            project_dir=None if attempt is None else attempt.ctx.project_dir(self.job),
            prepare_attempts=len(self._attempts),
            job_log=self._log.text(),
            records=list(self._records),
            _run=self,
            _attempt=attempt,
        )

    # ------------------------------------------------------- cancel state

    def _request_cancel(self, mode: CancelMode, reason: str) -> None:
        with self._cond:
            if self._closing:
                return
            if self._cancel_reason is None:
                self._cancel_reason = reason
                self._cancel_at = time.monotonic()
            if mode == "abort":
                self._abort = True
            self._cond.notify_all()

    def _arm_timer(self, delay: float, mode: CancelMode, reason: str) -> None:
        timer = threading.Timer(delay, self._request_cancel, args=(mode, reason))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _arm_planned_cancel(self, name: str) -> None:
        plan = self._plan
        if plan is not None and plan.stage == name:
            self._plan = None  # once per job, also across preparation attempts
            self._arm_timer(plan.after, plan.mode, "abort" if plan.mode == "abort" else "cancel")

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _cancelled(self) -> bool:
        return self._cancel_reason is not None

    # ------------------------------------------------------- preparation

    def _ctx_template(self) -> BuildContext:
        return BuildContext(
            builds_dir=self.config.builds_dir,
            cache_dir=self.config.cache_dir,
            hostname=self.config.runner_hostname,
            concurrent_id=self.config.concurrent_id,
            short_token=self.config.short_token,
            runner_version=self.config.runner_version,
            environment=tuple(self.config.environment),
        )

    def _prepare(self) -> tuple[_Attempt | None, _Failure | None]:
        """config + prepare, retried on anything but a build failure."""
        failure = _Failure("cancelled", "canceled")
        total = self.config.preparation_attempts
        for number in range(1, total + 1):
            if self._cancelled():
                return None, _Failure("cancelled", "canceled")
            attempt = self._new_attempt(number)
            failure_or_none = self._config_and_prepare(attempt)
            if failure_or_none is None:
                return attempt, None
            failure = failure_or_none
            self._cleanup(attempt)
            if failure.kind != "system":
                return None, failure
            self._log.line(f"ERROR: Preparation failed: {failure.message}")
            if number < total:
                delay = self.config.preparation_retry_delay
                self._log.line(f"Will be retried in {go_duration(delay)} ...")
                with self._cond:
                    self._cond.wait_for(self._cancelled, timeout=delay)
        return None, failure

    def _new_attempt(self, number: int) -> _Attempt:
        tmp_dir = tempfile.mkdtemp(prefix="custom-executor", dir=self.config.temp_root)  # 0700
        attempt = _Attempt(number, tmp_dir, self._ctx_template())
        self._attempts.append(attempt)
        payload = json.dumps(job_payload(self.job, attempt.ctx)) + "\n"
        fd = os.open(attempt.response_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(payload)
        return attempt

    def _config_and_prepare(self, attempt: _Attempt) -> _Failure | None:
        cfg = self.config
        if cfg.config_exec:
            record = self._exec(
                attempt,
                "config",
                [cfg.config_exec, *cfg.config_args],
                timeout=cfg.config_exec_timeout,
            )
            failure = self._judge(attempt, record) or self._apply_config(attempt, record.stdout)
            if failure is not None:
                return failure
        self._log.line(f"Using Custom executor{attempt.driver or ''}...")
        if not attempt.ctx.builds_dir:
            return _Failure("system", "the builds_dir is not configured")
        if not attempt.ctx.cache_dir:
            return _Failure("system", "the cache_dir is not configured")
        if not cfg.prepare_exec:
            return None
        record = self._exec(
            attempt,
            "prepare",
            [cfg.prepare_exec, *cfg.prepare_args],
            timeout=cfg.prepare_exec_timeout,
        )
        return self._judge(attempt, record)

    def _apply_config(self, attempt: _Attempt, stdout: str) -> _Failure | None:
        """Merge config_exec's JSON as the runner does; bad JSON fails the attempt."""
        if stdout == "":
            return None
        try:
            data = json.loads(stdout)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            ctx = _merged_context(attempt.ctx, data)
            driver = data.get("driver") or {}
            if not isinstance(driver, dict):
                raise ValueError("driver is not an object")
            job_env = data.get("job_env") or {}
            if not isinstance(job_env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in job_env.items()
            ):
                raise ValueError("job_env is not a map of strings")
        except ValueError as exc:
            return _Failure("system", f"error while parsing JSON output: {exc}")
        attempt.ctx = ctx
        attempt.job_env = job_env
        name, version = driver.get("name"), driver.get("version")
        if isinstance(name, str):
            attempt.driver = f" with driver {name}" + (
                f" {version}" if isinstance(version, str) else ""
            )
        return None

    # ------------------------------------------------------------ stages

    def _run_stages_then_cleanup(self, attempt: _Attempt) -> tuple[_Failure | None, bool]:
        outcome: list[_Failure | None] = []
        crashed: list[BaseException] = []

        def work() -> None:
            try:
                outcome.append(self._stages(attempt))
            except BaseException as exc:  # re-raised in the calling thread
                crashed.append(exc)
            finally:
                with self._cond:
                    self._stages_done = True
                    self._cond.notify_all()

        worker = threading.Thread(target=work, name=f"job-{self.job.id}-stages", daemon=True)
        worker.start()
        with self._cond:
            self._cond.wait_for(lambda: self._stages_done or self._cancelled())
            if not self._stages_done and self._cancel_at is not None:
                left = self._cancel_at + self.config.cancel_wait - time.monotonic()
                self._cond.wait_for(lambda: self._stages_done, timeout=max(0.0, left))
            overlapped = not self._stages_done
            self._stop_new_stages = True
            self._closing = True
        if overlapped:
            self._log.line("WARNING: Timed out waiting for the build to finish")
        self._cleanup(attempt)
        if overlapped:
            cfg = self.config
            worker.join(cfg.graceful_kill_timeout + cfg.force_kill_timeout + 30)
        if crashed:
            raise crashed[0]
        failure = outcome[0] if outcome else _Failure("cancelled", "canceled")
        return failure, overlapped

    def _stages(self, attempt: _Attempt) -> _Failure | None:
        """The stage order of gitlab-runner's Build.executeScript."""
        failure = self._run_stage(attempt, "prepare_script")
        if failure is not None:
            return failure
        failure = self._run_stage(attempt, "get_sources")
        if failure is None and self.job.cache:
            failure = self._run_stage(attempt, "restore_cache")
        if failure is None and self.job.dependencies:
            failure = self._run_stage(attempt, "download_artifacts")
        if failure is None:
            for stage, _ in self.job.user_stages():
                failure = self._run_stage(attempt, stage)
                if failure is not None:
                    break
            self._after_script(attempt)
        failed = failure is not None
        cache_failure = self._optional_stage(attempt, archive_cache_stage(self.job, failed))
        upload_failure = self._optional_stage(attempt, upload_artifacts_stage(self.job, failed))
        self._run_stage(attempt, "cleanup_file_variables")
        return failure or cache_failure or upload_failure

    def _after_script(self, attempt: _Attempt) -> None:
        if not self.job.after_script:
            return
        failure = self._run_stage(attempt, "after_script")
        if failure is not None and failure.kind != "cancelled":
            self._log.line(
                f"WARNING: after_script failed, but job will continue unaffected: {failure.message}"
            )

    def _optional_stage(self, attempt: _Attempt, stage: str | None) -> _Failure | None:
        return None if stage is None else self._run_stage(attempt, stage)

    def _run_stage(self, attempt: _Attempt, stage: str) -> _Failure | None:
        policy: _CancelPolicy = "post" if stage in POST_STAGES else "job"
        with self._cond:
            skip = self._abort or self._stop_new_stages or (policy == "job" and self._cancelled())
        if skip:
            return _Failure("cancelled", "canceled")
        self._log.line(stage_title(stage))
        if stage == "build_script":
            self._log.line(
                "WARNING: Starting with version 17.0 the 'build_script' stage will be replaced "
                "with 'step_script': https://gitlab.com/groups/gitlab-org/-/epics/6112"
            )
        script = render_script(self.job, attempt.ctx, stage)
        path = self._write_script(attempt, script)
        cfg = self.config
        timeout = cfg.after_script_timeout if stage == "after_script" else None
        record = self._exec(
            attempt,
            "run",
            [cfg.run_exec, *cfg.run_args, path, stage],
            stage=stage,
            timeout=timeout,
            policy=policy,
            script=(path, script),
        )
        return self._judge(attempt, record)

    def _write_script(self, attempt: _Attempt, script: str) -> str:
        """A new <tmp>/script<digits>/script, mode 0700, as the runner writes it."""
        while True:
            directory = os.path.join(attempt.tmp_dir, f"script{secrets.randbelow(10**10):010d}")
            try:
                os.mkdir(directory, 0o700)
                break
            except FileExistsError:
                continue
        path = os.path.join(directory, "script")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        os.fchmod(fd, 0o700)  # whatever the umask
        with os.fdopen(fd, "wb") as f:
            f.write(script.encode("utf-8", "surrogateescape"))
        return path

    # ------------------------------------------------------------ cleanup

    def _cleanup(self, attempt: _Attempt) -> ExecRecord | None:
        """cleanup_exec to the runner's log, a warning if it fails, then rm the temp dir."""
        cfg = self.config
        record = None
        if cfg.cleanup_exec:
            self._runner_log.line(f"cleanup_exec for job {self.job.id}, attempt {attempt.number}")
            record = self._exec(
                attempt,
                "cleanup",
                [cfg.cleanup_exec, *cfg.cleanup_args],
                timeout=cfg.cleanup_exec_timeout,
                policy="none",
            )
            failure = self._judge(attempt, record)
            if failure is not None:
                warning = f"WARNING: Cleanup script failed: {failure.message}"
                self._log.line(warning)
                self._runner_log.line(warning)
        if not self._keep_temp_dir:
            shutil.rmtree(attempt.tmp_dir, ignore_errors=True)
        return record

    # --------------------------------------------------------- executables

    def _env(self, attempt: _Attempt) -> dict[str, str]:
        """The runner's environment for every executable (later entries win)."""
        cfg = self.config
        env = dict(self._base_env)
        env.update(
            TMPDIR=attempt.tmp_dir,
            BUILD_FAILURE_EXIT_CODE=str(cfg.build_failure_exit_code),
            SYSTEM_FAILURE_EXIT_CODE=str(cfg.system_failure_exit_code),
            BUILD_EXIT_CODE_FILE=attempt.exit_code_file,
            JOB_RESPONSE_FILE=attempt.response_file,
        )
        env.update(attempt.job_env)
        for var in job_variables(self.job, attempt.ctx):
            env["CUSTOM_ENV_" + var.key] = var.value
        env["CUSTOM_ENV_CI_JOB_SERVICES"] = services_json(self.job)
        return env

    def _exec(
        self,
        attempt: _Attempt,
        kind: ExecKind,
        argv: list[str],
        *,
        stage: str | None = None,
        timeout: float | None = None,
        policy: _CancelPolicy = "job",
        script: tuple[str, str] | None = None,
    ) -> ExecRecord:
        record = ExecRecord(
            kind=kind,
            stage=stage,
            attempt=attempt.number,
            argv=argv,
            env=self._env(attempt),
            started=time.monotonic() - self._start,
        )
        if script is not None:
            record.script_path, record.script_text = script
            record.script_mode = os.stat(script[0]).st_mode & 0o7777
        with self._cond:
            self._records.append(record)
        # A stale code from an earlier call must not be taken for this one's.
        if kind != "cleanup":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(attempt.exit_code_file)
        self._arm_planned_cancel(stage or kind)
        began = time.monotonic()
        try:
            child = self._spawn(kind, argv, record.env, attempt.tmp_dir)
        except OSError as exc:
            record.ended, record.error = "start_failed", str(exc)
            record.seconds = time.monotonic() - began
            return record
        record.pid = child.proc.pid
        deadline = None if timeout is None else began + timeout
        self._await(child, record, deadline, policy)
        self._finish(child, record)
        record.seconds = time.monotonic() - began
        return record

    def _spawn(self, kind: ExecKind, argv: list[str], env: dict[str, str], cwd: str) -> _Child:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group, for group signals
        )
        assert proc.stdout is not None and proc.stderr is not None
        # config's stdout is its answer; cleanup talks to the runner's log only.
        out_sink = {"config": None, "cleanup": self._runner_log}.get(kind, self._log)
        err_sink = self._runner_log if kind == "cleanup" else self._log
        masked = kind != "cleanup"
        pumps = [
            _Pump(proc.stdout, out_sink, _Masker(self._secrets) if masked else None, self._notify),
            _Pump(proc.stderr, err_sink, _Masker(self._secrets) if masked else None, self._notify),
        ]
        child = _Child(proc, pumps)

        def wait_exit() -> None:
            proc.wait()
            with self._cond:
                child.exited_at = time.monotonic()
                self._cond.notify_all()

        for pump in pumps:
            pump.thread.start()
        threading.Thread(target=wait_exit, daemon=True).start()
        return child

    def _done(self, child: _Child) -> bool:
        """Finished as the runner sees it: exited and both pipes closed."""
        if child.exited_at is None:
            return False
        if not child.pipes_open:
            return True
        limit = self.config.pipe_close_timeout
        return limit is not None and time.monotonic() >= child.exited_at + limit

    def _next_check(self, child: _Child, deadline: float | None) -> float | None:
        """Seconds until a time-based condition may change (None: only on notify)."""
        moments = [] if deadline is None else [deadline]
        limit = self.config.pipe_close_timeout
        if child.exited_at is not None and limit is not None:
            moments.append(child.exited_at + limit)
        if not moments:
            return None
        return max(0.0, min(moments) - time.monotonic())

    def _await(
        self, child: _Child, record: ExecRecord, deadline: float | None, policy: _CancelPolicy
    ) -> None:
        with self._cond:
            while not self._done(child):
                reason = self._kill_reason(policy)
                effective = self._effective_deadline(deadline, policy)
                if reason is None and effective is not None and time.monotonic() >= effective:
                    reason = "exec_timeout"
                if reason is not None:
                    record.killed_for = reason
                    break
                self._cond.wait(self._next_check(child, effective))
        if record.killed_for is not None:
            self._kill(child, record)

    def _kill_reason(self, policy: _CancelPolicy) -> str | None:
        if policy == "none":
            return None
        if self._abort:
            return "abort"
        if policy == "job":
            return self._cancel_reason
        return None

    def _effective_deadline(self, deadline: float | None, policy: _CancelPolicy) -> float | None:
        if policy == "post" and self._cancel_at is not None:
            bound = self._cancel_at + self.config.after_script_timeout
            return bound if deadline is None else min(deadline, bound)
        return deadline

    def _kill(self, child: _Child, record: ExecRecord) -> None:
        """SIGTERM the group, wait, SIGKILL the group, wait, give up: the runner's killer."""
        cfg = self.config
        for sig, wait in (
            (signal.SIGTERM, cfg.graceful_kill_timeout),
            (signal.SIGKILL, cfg.force_kill_timeout),
        ):
            try:
                os.killpg(child.proc.pid, sig)
                record.signals_sent.append(sig.name)
            except ProcessLookupError:
                pass  # the whole group is gone already
            if self._wait_done(child, time.monotonic() + wait):
                return
        record.ended = "gave_up"

    def _wait_done(self, child: _Child, until: float) -> bool:
        with self._cond:
            while not self._done(child):
                left = until - time.monotonic()
                if left <= 0:
                    return False
                check = self._next_check(child, until)
                self._cond.wait(left if check is None else min(left, check))
        return True

    def _finish(self, child: _Child, record: ExecRecord) -> None:
        record.stdout = child.pumps[0].freeze()
        record.stderr = child.pumps[1].freeze()
        if child.exited_at is None:
            return  # gave up on it: still running
        rc = child.proc.returncode
        if rc >= 0:
            record.returncode, record.ended = rc, "exited"
        else:
            record.signal, record.ended = -rc, "signalled"
        record.pipes_held_open = child.pipes_open
        members = _group_members(child.proc.pid)
        # After a SIGKILL to the group the kernel may still be tearing members down.
        deadline = time.monotonic() + 2.0
        while members and "SIGKILL" in record.signals_sent and time.monotonic() < deadline:
            time.sleep(0.05)
            members = _group_members(child.proc.pid)
        record.group_left_running = members

    # ------------------------------------------------------------ verdicts

    def _judge(self, attempt: _Attempt, record: ExecRecord) -> _Failure | None:
        """What gitlab-runner concludes from one executable's end."""
        cfg = self.config
        if record.killed_for in ("cancel", "abort", "timeout"):
            return _Failure("cancelled", "canceled")
        if record.ended == "start_failed":
            return _Failure("system", f"failed to start command: {record.error}")
        if record.ended == "gave_up":
            return _Failure(
                "system", f"failed to kill process PID={record.pid}, likely process is dormant"
            )
        if record.killed_for == "exec_timeout":
            return _Failure("system", f"{record.name}: context deadline exceeded")
        if record.pipes_held_open:
            return _Failure(
                "system",
                f"{record.name} exited but processes it started still hold its stdout/stderr "
                f"open (pids {record.group_left_running}); gitlab-runner would hang here",
            )
        rc = record.returncode
        if rc == 0:
            return None
        if rc == cfg.build_failure_exit_code:
            return self._build_failure(attempt, rc)
        if rc == cfg.system_failure_exit_code:
            return _Failure("system", f"exit status {rc}")
        status = f"exit status {rc}" if rc is not None else f"signal: {_signal_name(record.signal)}"
        code = rc if rc is not None else -1
        return _Failure(
            "system",
            f"unknown Custom executor executable exit code {code}; "
            f"executable execution terminated with: {status}",
        )

    def _build_failure(self, attempt: _Attempt, rc: int) -> _Failure:
        try:
            with open(attempt.exit_code_file, "rb") as f:
                first = f.read(4096).decode("utf-8", "replace").split("\n", 1)[0].strip()
        except FileNotFoundError:
            return _Failure("build", f"exit code {rc}", rc)
        if not _INTEGER.fullmatch(first):
            return _Failure(
                "system",
                f"unknown Custom executor executable exit code {rc}; "
                f"invalid build exit code in BUILD_EXIT_CODE_FILE: {first!r}",
            )
        code = int(first)
        return _Failure("build", f"exit code {code}", code)

    def _result(self, failure: _Failure | None, overlapped: bool) -> JobResult:
        job = self.job
        outcome: Outcome = "success"
        exit_code = None
        allowed = False
        if self._cancel_reason is not None and failure is not None:
            outcome = "cancelled"
            if self._cancel_reason == "timeout":
                failure = _Failure(
                    "cancelled", f"execution took longer than {go_duration(job.timeout)} seconds"
                )
            else:
                failure = _Failure("cancelled", "canceled")
            self._log.line(f"ERROR: Job failed: {failure.message}")
        elif failure is None:
            self._log.line("Job succeeded")
        elif failure.kind == "build":
            outcome, exit_code = "failed", failure.exit_code
            allowed = exit_code is not None and job.allows_failure(exit_code)
            level = "WARNING" if allowed else "ERROR"
            self._log.line(f"{level}: Job failed: {failure.message}")
        elif failure.kind == "system":
            outcome = "system_failure"
            self._log.line(f"ERROR: Job failed (system failure): {failure.message}")
        else:
            outcome = "cancelled"
            self._log.line(f"ERROR: Job failed: {failure.message}")
        temp_dirs = [a.tmp_dir for a in self._attempts]
        return JobResult(
            outcome=outcome,
            exit_code=exit_code,
            failure_message=None if failure is None else failure.message,
            cancel_reason=self._cancel_reason if outcome == "cancelled" else None,
            allowed_failure=allowed,
            job_log=self._log.text(),
            runner_log=self._runner_log.text(),
            records=list(self._records),
            prepare_attempts=len(self._attempts),
            temp_dirs=temp_dirs,
            temp_dir_removed=not any(os.path.exists(d) for d in temp_dirs),
            cleanup_overlapped_run=overlapped,
            seconds=time.monotonic() - self._start,
            job=job,
        )


@dataclass
class PreparedJob:
    """What a runner that died right after prepare leaves behind."""

    ok: bool
    failure: str | None
    temp_dir: str | None
    env: dict[str, str]  # the environment later executables of this job get
    job_env: dict[str, str]
    project_dir: str | None
    prepare_attempts: int
    job_log: str
    records: list[ExecRecord]
    _run: JobRun
    _attempt: _Attempt | None

    def run_stage(self, stage: str) -> ExecRecord:
        """One run_exec call, as a restarted runner never would: for probing."""
        if self._attempt is None:
            raise RuntimeError("preparation failed: nothing to run on")
        before = len(self._run._records)
        self._run._run_stage(self._attempt, stage)
        if len(self._run._records) == before:
            raise RuntimeError(f"stage {stage!r} was not started")
        return self._run._records[-1]

    def cleanup(self) -> ExecRecord | None:
        """The cleanup_exec call the dead runner never made (e.g. a sweeper's turn)."""
        if self._attempt is None:
            return None
        return self._run._cleanup(self._attempt)


class RunnerEmulator:
    """gitlab-runner's custom executor, for one `[[runners]]` entry."""

    def __init__(self, config: CustomExecutorConfig, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = env

    def new_run(
        self,
        job: Job,
        *,
        cancel: CancelPlan | None = None,
        keep_temp_dir: bool = False,
        on_log: Callable[[str], None] | None = None,
    ) -> JobRun:
        return JobRun(
            self.config,
            job,
            env=self.env,
            cancel=cancel,
            keep_temp_dir=keep_temp_dir,
            on_log=on_log,
        )

    def run_job(
        self,
        job: Job,
        *,
        cancel: CancelPlan | None = None,
        keep_temp_dir: bool = False,
        on_log: Callable[[str], None] | None = None,
    ) -> JobResult:
        return self.new_run(job, cancel=cancel, keep_temp_dir=keep_temp_dir, on_log=on_log).run()

    def prepare_only(self, job: Job) -> PreparedJob:
        """config + prepare, then nothing: the runner host "restarted" here."""
        return JobRun(self.config, job, env=self.env).prepare_only()


# ---------------------------------------------------------------- helpers


def _merged_context(ctx: BuildContext, data: dict[str, object]) -> BuildContext:
    """config_exec's fields over the TOML ones, type-checked as Go's Unmarshal would."""
    return dataclasses.replace(
        ctx,
        builds_dir=_typed(data, "builds_dir", str, ctx.builds_dir),
        cache_dir=_typed(data, "cache_dir", str, ctx.cache_dir),
        hostname=_typed(data, "hostname", str, ctx.hostname),
        builds_dir_is_shared=_typed(data, "builds_dir_is_shared", bool, ctx.builds_dir_is_shared),
    )


def _typed(data: dict[str, object], key: str, kind: type[_T], default: _D) -> _T | _D:
    value = data.get(key)
    if value is None:  # absent or null: keep the runner's own value
        return default
    if not isinstance(value, kind):
        raise ValueError(f"{key} must be a {kind.__name__}")
    return value


def _signal_name(number: int | None) -> str:
    try:
        return signal.Signals(number or 0).name
    except ValueError:
        return str(number)
