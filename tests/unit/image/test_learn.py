"""The pool learns which images recent jobs ran: noted by prepare, ranked for the pool."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from driver import state as state_module
from driver.image.config import ImageSettings
from driver.image.learn import most_used, recent_images
from driver.state import StateDir

NOW = 1_000_000.0


def test_the_most_used_within_the_window_come_first() -> None:
    usage = [
        (NOW - 90_000, ["old:1", "old:1"]),  # outside the window: forgotten
        (NOW - 90_000, ["old:1"]),
        (NOW - 300, ["ruby:3", "postgres:15"]),
        (NOW - 200, ["ruby:3", "ruby:3"]),  # one job naming it twice counts once
        (NOW - 100, ["node:20"]),
        (NOW - 50, ["postgres:15"]),
        (NOW - 10, ["alpine:3"]),
    ]
    ranked = most_used(usage, window=86_400, limit=3, now=NOW)
    # ruby and postgres twice each (postgres seen last), then the latest of the singles.
    assert ranked == ["postgres:15", "ruby:3", "alpine:3"]
    assert most_used(usage, window=86_400, limit=0, now=NOW) == []


def test_prepare_notes_and_the_pool_reads_back(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert state.image_usage() == []  # nothing noted yet: nothing learned, no error
    state.note_images(["ruby:3", "reg.example.com/ci/helper:1"], at=NOW - 5)
    state.note_images(["ruby:3"], at=NOW)
    with state.image_usage_file.open("a") as f:
        f.write('{"at": "not a time"\n')  # a torn or damaged line is skipped
    assert state.image_usage() == [
        (NOW - 5, ["ruby:3", "reg.example.com/ci/helper:1"]),
        (NOW, ["ruby:3"]),
    ]
    assert stat.S_IMODE(state.image_usage_file.stat().st_mode) == 0o600
    settings = ImageSettings(
        mode="container",
        helper_image="reg.example.com/ci/helper:1",  # pulled by the pool already
        pool_recent_images=2,
    )
    assert recent_images(settings, state, now=NOW) == ["ruby:3"]
    assert recent_images(settings.model_copy(update={"mode": "shell"}), state, now=NOW) == []
    off = settings.model_copy(update={"pool_recent_images": 0})
    assert recent_images(off, state, now=NOW) == []


def test_the_file_stays_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = StateDir(tmp_path)
    monkeypatch.setattr(state_module, "IMAGE_USAGE_BYTES", 2000)
    for i in range(200):
        state.note_images([f"image-{i}:1"], at=NOW + i)
    assert state.image_usage_file.stat().st_size <= 2000 + 100
    kept = state.image_usage()
    assert kept[-1] == (NOW + 199, ["image-199:1"])  # the newest always stay
    assert len(kept) < 200


def test_a_state_dir_it_cannot_write_never_fails_the_job(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    StateDir(blocked).note_images(["ruby:3"])  # no exception: a hint only
