"""One fake of a VM's Docker engine for the pool's pull tests, put in place of
`driver.pool.images.connect`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest

from driver.engine import Engine
from driver.pool import images


class FakeEngine:
    """An engine that has every image (inspect_image answers) and pulls anything,
    recording each pull as (repository, tag); ``on_pull`` runs at each pull."""

    def __init__(self, on_pull: Callable[[str], None] = lambda image: None) -> None:
        self.pulls: list[tuple[str, object]] = []
        self.on_pull = on_pull
        self.closed = False

    def pull(self, repository: str, **options: object) -> Iterator[Mapping[str, object]]:
        self.pulls.append((repository, options.get("tag")))
        self.on_pull(repository)
        yield {"status": "Downloaded newer image", "id": "1"}

    def inspect_image(self, image: str) -> Mapping[str, object]:
        return {"Id": "sha256:feed"}

    def version(self) -> Mapping[str, object]:
        return {"Version": "27.0"}

    def close(self) -> None:
        self.closed = True


def connect_to(monkeypatch: pytest.MonkeyPatch, fake: FakeEngine) -> FakeEngine:
    """Every engine the pool connects to is ``fake``."""

    def connect(engine: Engine, timeout: float, ready_timeout: float) -> FakeEngine:
        return fake

    monkeypatch.setattr(images, "connect", connect)
    return fake
