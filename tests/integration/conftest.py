"""Integration fixtures: each test gets its own world (tests/world.py) and must
leave nothing behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.world import Env, destroy_world, new_world


@pytest.fixture
def env() -> Iterator[Env]:
    world = new_world()
    try:
        yield world
    finally:
        destroy_world(world)
