"""Two audiences: the job log (short human lines) and the admin's log (JSON lines).

The job log is our stdout, which the runner copies into the job's page. The
admin's log is a file of JSON lines with the job id and machine bound to every
line. Neither ever receives a variable's value.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import structlog

from driver.job_log import PREFIX as _PREFIX
from driver.job_log import silence as silence
from driver.job_log import write as _write


def say(message: str) -> None:
    """One progress line for the job log; never fails (the runner may be gone)."""
    _write(sys.stdout, f"{_PREFIX} {message}")


def warn(message: str) -> None:
    _write(sys.stderr, f"{_PREFIX} WARNING: {message}")


def stderr(text: str) -> None:
    """Text for the job log's stderr as it is (no prefix); never fails."""
    _write(sys.stderr, text.rstrip("\n"))


def to_admin_log(message: str) -> None:
    """Progress for the admin's log only: for failure paths, which must not wait on the
    job log (a full or closed pipe) before removing what they made."""
    if structlog.is_configured():
        get().info("progress", message=message)


def setup(path: Path, **context: object) -> structlog.typing.FilteringBoundLogger:
    """A logger writing JSON lines to ``path`` (0600), with ``context`` on every line."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    stream = os.fdopen(fd, "a", buffering=1)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(pid=os.getpid(), **context)
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
    return logger


def get() -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
    return logger


class Timer:
    """Seconds since creation, for the "took N s" in progress lines and logs."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.start, 2)
