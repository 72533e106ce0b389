"""The one way the driver runs a program: bounded in time, never through a shell.

Children stay in our process group, so when the runner kills the group on
cancel they go with us. On timeout the child gets SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from driver.contract import clean_env
from driver.errors import CommandError, CommandTimedOut

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
POLL = 0.1  # while stopping a child, how often to look whether it has exited
DRAIN = 0.2  # once it has, how long to read what it left in the pipes


@dataclass(frozen=True)
class Result:
    command: list[str]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


def run(
    command: Sequence[str],
    *,
    timeout: float,
    input: bytes | None = None,
    stdin_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    what: str = "",
    hint: str = "",
) -> Result:
    """Run ``command`` and capture its output; raise CommandError if it fails and ``check``.

    ``input`` (bytes) or ``stdin_file`` (streamed, for large files) feed its stdin.
    """
    argv = [str(part) for part in command]
    stdin: int | IO[bytes] = subprocess.PIPE if input is not None else subprocess.DEVNULL
    opened: IO[bytes] | None = None
    try:
        if stdin_file is not None:
            stdin = opened = open(stdin_file, "rb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else clean_env(),
        )
    except OSError as e:
        if opened is not None:
            opened.close()
        raise CommandError(
            argv,
            127,
            "",
            message=f"starting {argv[0]} ({e.strerror})",
            hint=hint or f"install {argv[0]} or set its path in the config file",
        ) from None
    if opened is not None:
        opened.close()  # the child has its own copy
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        exit_code = proc.poll()  # set if it exited but a process it left holds its output open
        out, err = _stop(proc)
        if exit_code is not None:
            held = f"it exited ({exit_code}), but a process it left running kept its output open"
            hint = f"{held}; {hint}" if hint else held
        raise CommandTimedOut(
            argv, timeout, _text(out) + _text(err), message=what, hint=hint
        ) from None
    except BaseException:
        _stop(proc)  # cancelled (SIGTERM) while waiting: do not leave the child behind
        raise
    result = Result(argv, proc.returncode, _text(out), _text(err))
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, result.output, message=what, hint=hint)
    return result


def _stop(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """SIGTERM, SIGKILL after KILL_GRACE; returns the output so far.

    Waits for the child, not for the end of its output: a process it left
    running (a daemon, an ssh master) may hold the pipes open for ever.
    """
    if proc.poll() is None:
        proc.terminate()
        deadline = time.monotonic() + KILL_GRACE
        while proc.poll() is None and time.monotonic() < deadline:
            _read(proc, min(POLL, deadline - time.monotonic()))  # full pipes would block its exit
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = _read(proc, DRAIN)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe:
            with contextlib.suppress(BrokenPipeError):
                pipe.close()
    return out, err


def _read(proc: subprocess.Popen[bytes], seconds: float) -> tuple[bytes, bytes]:
    """All the output read so far, reading for at most ``seconds`` more."""
    out: bytes | None
    err: bytes | None
    try:
        out, err = proc.communicate(timeout=max(seconds, 0.001))
    except subprocess.TimeoutExpired as e:
        out, err = e.output, e.stderr
    return out or b"", err or b""


def _text(data: bytes | None) -> str:
    return data.decode("utf-8", "replace") if data else ""
