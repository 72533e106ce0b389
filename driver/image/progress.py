"""A pull's progress for the job log, from the engine's JSON progress events.

Quick pulls say nothing; one that takes longer than ``REPORT_EVERY`` seconds gets a
line at that pace: ``Pulling <image>: <done>/<total> layers, <MB> MB at <MB/s>``
(the docker executor shows nothing while it pulls).
"""

from __future__ import annotations

from collections.abc import Mapping

REPORT_EVERY = 5.0
MB = 1_000_000
# Statuses that end a layer: pulled now, or already on the engine.
_DONE = ("Pull complete", "Already exists")
_DOWNLOADED = ("Download complete", "Verifying Checksum")


class PullProgress:
    """Layers and bytes of one pull, fed each event as it arrives."""

    def __init__(self, image: str, started: float, every: float = REPORT_EVERY) -> None:
        self.image = image
        self.every = every
        self.layers: set[str] = set()
        self.done: set[str] = set()
        self.current: dict[str, int] = {}  # bytes downloaded per layer
        self.total: dict[str, int] = {}
        self.next_report = started + every
        self._last = (started, 0)  # (when, bytes) at the last report

    def feed(self, event: Mapping[str, object]) -> None:
        layer, status = event.get("id"), str(event.get("status") or "")
        if not isinstance(layer, str) or not layer or not _is_layer_status(status):
            return
        self.layers.add(layer)
        detail = event.get("progressDetail")
        if status == "Downloading" and isinstance(detail, Mapping):
            current, total = detail.get("current"), detail.get("total")
            if isinstance(current, int):
                self.current[layer] = current
            if isinstance(total, int) and total > 0:
                self.total[layer] = total
        elif status in _DOWNLOADED and layer in self.total:
            self.current[layer] = self.total[layer]
        if status in _DONE:
            self.done.add(layer)
            if layer in self.total:
                self.current[layer] = self.total[layer]

    @property
    def downloaded(self) -> int:
        return sum(self.current.values())

    def report(self, now: float) -> str | None:
        """The line to print if one is due at ``now``, else None."""
        if now < self.next_report:
            return None
        self.next_report = now + self.every
        when, before = self._last
        rate = (self.downloaded - before) / max(now - when, 1e-6)
        self._last = (now, self.downloaded)
        return (
            f"Pulling {self.image}: {len(self.done)}/{len(self.layers)} layers, "
            f"{self.downloaded / MB:.1f} MB at {rate / MB:.1f} MB/s"
        )


def _is_layer_status(status: str) -> bool:
    """Events about one layer (``id`` is a layer), not the image's own (``id`` = its tag)."""
    return status in (
        "Pulling fs layer",
        "Waiting",
        "Downloading",
        "Verifying Checksum",
        "Download complete",
        "Extracting",
        "Pull complete",
        "Already exists",
        "Retrying",
    ) or status.startswith("Retrying")
