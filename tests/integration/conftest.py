"""Integration fixtures: each test gets its own world (testing/world.py) and must
leave nothing behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testing.world import Env, destroy_world, new_world


@pytest.fixture
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """A fresh world; a test module's ``WORLD`` dict is passed to ``new_world``
    (e.g. ``WORLD = {"pool": {...}}`` for a world with a warm pool)."""
    world = new_world(**getattr(request.module, "WORLD", {}))
    try:
        yield world
    finally:
        destroy_world(world)
