"""Images jobs took up after a pool machine became ready are pulled into it too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from driver.pool.learned import LearnedImages
from driver.settings import Settings, parse_settings
from driver.state import Address, PoolRecord, StateDir
from tests.unit.pool.engine_fake import FakeEngine, connect_to


def settings_for(tmp_path: Path, policy: str = "always") -> Settings:
    return parse_settings(
        {
            "state_dir": str(tmp_path),
            "pool": {"idle_count": 1},
            "image": {"mode": "container", "default": "alpine:3", "pull_policy": [policy]},
        }
    )


def ready(state: StateDir, name: str) -> None:
    state.save_pool(PoolRecord(name=name, address=Address(engine_url="tcp://10.0.0.9:2376")))
    state.mark_ready(name)


def run_inline(work: Callable[[], None]) -> None:
    work()


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    return connect_to(monkeypatch, FakeEngine())


def test_an_image_learned_later_is_pulled_into_the_waiting_machines_once(
    tmp_path: Path, engine: FakeEngine
) -> None:
    settings = settings_for(tmp_path)
    state = StateDir(tmp_path)
    learned = LearnedImages(settings, state)
    ready(state, "gmd-p000000d1")
    learned.made_ready("gmd-p000000d1", ["ci/build:1"])  # pulled at its making
    state.note_images(["ci/build:1"])
    learned.tick(run_inline)
    assert engine.pulls == []  # nothing new
    state.note_images(["ci/test:2"])  # a job took up another image
    learned.tick(run_inline)
    assert engine.pulls == [("ci/test", "2")]
    learned.tick(run_inline)
    assert engine.pulls == [("ci/test", "2")]  # not again


def test_a_claim_abandons_the_pulls_not_begun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path)
    state = StateDir(tmp_path)
    ready(state, "gmd-p000000d2")

    # A job claims the machine while the first image is being pulled.
    def claim(image: str) -> None:
        assert state.claim(42) is not None

    fake = connect_to(monkeypatch, FakeEngine(on_pull=claim))
    learned = LearnedImages(settings, state)
    learned.made_ready("gmd-p000000d2", [])
    state.note_images(["ci/one:1", "ci/two:1"])
    state.note_images(["ci/one:1"])  # the most used first
    learned.tick(run_inline)
    assert fake.pulls == [("ci/one", "1")]  # finished; the second never begun
    assert state.claims() == [("gmd-p000000d2", 42)]


def test_a_present_image_is_not_pulled_again_under_if_not_present(
    tmp_path: Path, engine: FakeEngine
) -> None:
    settings = settings_for(tmp_path, policy="if-not-present")
    state = StateDir(tmp_path)
    ready(state, "gmd-p000000d3")
    state.note_images(["ci/build:1"])
    LearnedImages(settings, state).tick(run_inline)
    assert engine.pulls == []  # the engine has it (inspect_image answers)
