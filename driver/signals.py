"""The runner cancels a stage with SIGTERM to its process group (then SIGKILL)."""

from __future__ import annotations

import signal
from types import FrameType

from driver.errors import Cancelled


def _raise_cancelled(signum: int, frame: FrameType | None) -> None:
    raise Cancelled(f"stopped by {signal.Signals(signum).name} (job cancelled or timed out)")


def raise_on_termination() -> None:
    """Turn SIGTERM/SIGINT into Cancelled, so `finally` blocks can undo half-done work."""
    signal.signal(signal.SIGTERM, _raise_cancelled)
    signal.signal(signal.SIGINT, _raise_cancelled)


def ignore_termination() -> None:
    """For work that must finish once begun (removing a machine)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
