"""Pull progress lines, from a recorded list of the engine's pull events."""

from __future__ import annotations

from driver.image.progress import PullProgress

IMAGE = "registry.example.com/ci/app:1"
# As dockerd streams them (trimmed): one layer on the engine already, two downloaded.
EVENTS: list[dict[str, object]] = [
    {"status": "Pulling from ci/app", "id": "1"},
    {"status": "Already exists", "progressDetail": {}, "id": "aaa"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "bbb"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "ccc"},
    {"status": "Waiting", "progressDetail": {}, "id": "ccc"},
    {"status": "Downloading", "progressDetail": {"current": 2_000_000, "total": 4_000_000},
     "progress": "[=====>   ]", "id": "bbb"},
    {"status": "Downloading", "progressDetail": {"current": 1_000_000, "total": 10_000_000},
     "id": "ccc"},
]  # fmt: skip
LATER: list[dict[str, object]] = [
    {"status": "Verifying Checksum", "progressDetail": {}, "id": "bbb"},
    {"status": "Download complete", "progressDetail": {}, "id": "bbb"},
    {"status": "Extracting", "progressDetail": {"current": 4_000_000, "total": 4_000_000},
     "id": "bbb"},
    {"status": "Pull complete", "progressDetail": {}, "id": "bbb"},
    {"status": "Downloading", "progressDetail": {"current": 6_000_000, "total": 10_000_000},
     "id": "ccc"},
    {"status": "Digest: sha256:0123"},
]  # fmt: skip


def test_a_quick_pull_says_nothing() -> None:
    progress = PullProgress(IMAGE, started=100.0)
    for event in EVENTS + LATER:
        progress.feed(event)
    assert progress.report(104.9) is None


def test_a_long_pull_reports_layers_bytes_and_rate_every_five_seconds() -> None:
    progress = PullProgress(IMAGE, started=100.0)
    for event in EVENTS:
        progress.feed(event)
    assert progress.report(105.0) == f"Pulling {IMAGE}: 1/3 layers, 3.0 MB at 0.6 MB/s"
    for event in LATER:
        progress.feed(event)
    assert progress.report(107.0) is None  # not yet due
    # bbb complete (4 MB) + ccc 6 MB: 7 MB more in 5 s.
    assert progress.report(110.0) == f"Pulling {IMAGE}: 2/3 layers, 10.0 MB at 1.4 MB/s"


def test_events_about_the_image_itself_are_no_layers() -> None:
    progress = PullProgress(IMAGE, started=0.0)
    progress.feed({"status": "Pulling from ci/app", "id": "1"})
    progress.feed({"status": "Status: Downloaded newer image for ci/app:1"})
    assert progress.layers == set()
