"""Writing to the job log (the runner's pipe), standard library only: prepare's fast
path (driver.stages.prepare_fast) writes its lines without loading driver.log."""

from __future__ import annotations

import os
from typing import TextIO

from driver import NAME

PREFIX = f"[{NAME}]"


def write(stream: TextIO, line: str) -> None:
    """Write a line to the runner's pipe. If it is closed (the runner died or was
    restarted), point the stream at /dev/null: nothing on any path may fail because
    the job log is gone, not even the interpreter's last flush."""
    try:
        print(line, file=stream, flush=True)
    except (OSError, ValueError):
        silence(stream)


def silence(stream: TextIO) -> None:
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError):
        pass
