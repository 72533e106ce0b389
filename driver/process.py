"""The one way the driver runs a program: bounded in time, never through a shell.

Children stay in our process group, so when the runner kills the group on
cancel they go with us. On timeout the child gets SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driver.contract import clean_env
from driver.errors import CommandError, CommandTimedOut

KILL_GRACE = 5.0


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
    stdin: Any = subprocess.PIPE if input is not None else subprocess.DEVNULL
    try:
        if stdin_file is not None:
            stdin = open(stdin_file, "rb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else clean_env(),
        )
    except OSError as e:
        if stdin_file is not None and not isinstance(stdin, int):
            stdin.close()
        raise CommandError(
            argv,
            127,
            "",
            message=f"starting {argv[0]} ({e.strerror})",
            hint=hint or f"install {argv[0]} or set its path in the config file",
        ) from None
    if stdin_file is not None:
        stdin.close()  # the child has its own copy
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = _stop(proc)
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
    proc.terminate()
    try:
        return proc.communicate(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        # Output pipes may be held open by the child's own children: do not wait on them.
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()
        proc.wait()
        return b"", b""


def _text(data: bytes | None) -> str:
    return data.decode("utf-8", "replace") if data else ""
