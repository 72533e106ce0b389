"""The driver's exceptions.

Anything that keeps a job's script from running or finishing is a
``DriverError``: the runner sees SYSTEM_FAILURE_EXIT_CODE and may retry the
job. Only ``BuildFailure`` means the job's own script failed.
"""

from __future__ import annotations

from collections.abc import Sequence

TAIL_LINES = 20


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``, which is where programs put the cause."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class DriverError(Exception):
    """A failure of the driver or its environment, with what to do about it."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(DriverError):
    """The admin's configuration file is missing or wrong."""


class JobError(DriverError):
    """The job's files from the runner, or the driver's state for it, are unusable."""


class CommandError(DriverError):
    """A program the driver ran failed; carries the command, its exit code and output.

    ``message`` names what was being done ("docker-machine create gmd-1"); the
    error reads "<message> failed (exit code N)".
    """

    def __init__(
        self,
        command: Sequence[str],
        exit_code: int | None,
        output: str,
        *,
        message: str = "",
        hint: str = "",
    ) -> None:
        self.command = list(command)
        self.exit_code = exit_code
        self.output = output
        what = message or self.command[0]
        super().__init__(f"{what} failed (exit code {exit_code})", hint=hint)

    def __str__(self) -> str:
        text = super().__str__()
        out = tail(self.output)
        return f"{text}\n{_indent(out)}" if out else text


class CommandTimedOut(CommandError):
    """A program did not finish within its bound and was killed."""

    def __init__(
        self,
        command: Sequence[str],
        timeout: float,
        output: str,
        *,
        message: str = "",
        hint: str = "",
    ) -> None:
        self.timeout = timeout
        what = message or command[0]
        super().__init__(command, None, output, message=what, hint=hint)
        self.message = f"{what} did not finish within {timeout:g}s and was stopped"

    def __str__(self) -> str:
        text = DriverError.__str__(self)
        out = tail(self.output)
        return f"{text}\n{_indent(out)}" if out else text


class Cancelled(DriverError):
    """The runner asked this stage to stop (SIGTERM: job cancelled or timed out)."""


class BuildFailure(Exception):
    """The job's script ran and exited non-zero: the user's failure, not the driver's."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"the script exited with code {exit_code}")
        self.exit_code = exit_code


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())
