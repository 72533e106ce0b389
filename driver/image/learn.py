"""The images recent jobs ran, for the warm pool to pull into new machines (image mode).

Each prepare in image mode notes the images its job ran (build, services, helper)
in the state dir (driver.state.StateDir.note_images); the pool service pulls the
``[image] pool_recent_images`` most used within ``pool_recent_window`` into each
machine it makes ready, beside ``[pool] images``. A job then finds its image there
instead of pulling it. Best effort: an image the pool cannot pull (a private one
that needs the job's token) is skipped with a log line, never a failed machine.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from driver.image.config import ImageSettings, pool_images

if TYPE_CHECKING:
    from driver.state import StateDir


def most_used(
    usage: Sequence[tuple[float, Sequence[str]]], *, window: float, limit: int, now: float
) -> list[str]:
    """The `limit` images noted most often since `now - window`; ties: the latest first.
    A job counts once per image, however often it names it."""
    counts: Counter[str] = Counter()
    last_seen: dict[str, float] = {}
    for at, images in usage:
        if at < now - window:
            continue
        for image in set(images):
            counts[image] += 1
            last_seen[image] = max(at, last_seen.get(image, at))
    ranked = sorted(counts, key=lambda image: (-counts[image], -last_seen[image], image))
    return ranked[:limit]


def recent_images(settings: ImageSettings, state: StateDir, now: float | None = None) -> list[str]:
    """What the pool pulls besides [pool] images and pool_images(): learned from jobs."""
    if not settings.container_mode or settings.pool_recent_images <= 0:
        return []
    known = set(pool_images(settings))
    learned = most_used(
        state.image_usage(),
        window=settings.pool_recent_window,
        limit=settings.pool_recent_images + len(known),
        now=time.time() if now is None else now,
    )
    return [image for image in learned if image not in known][: settings.pool_recent_images]
