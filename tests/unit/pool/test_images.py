"""The pool's pulls: through the job's Puller and engine client, digests included."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from docker.errors import ImageNotFound

from driver.pool import images
from driver.settings import Settings, parse_settings
from driver.state import Address
from tests.unit.pool.engine_fake import FakeEngine, connect_to

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    return connect_to(monkeypatch, FakeEngine())


def test_a_digest_pinned_image_is_pulled_by_its_digest(api: FakeEngine) -> None:
    said: list[str] = []
    pulled = images.pull(
        "gmd-p1",
        Address(engine_url="tcp://10.0.0.1:2376"),
        [f"alpine@{DIGEST}", f"localhost:5000/img@{DIGEST}", "registry:5000/ns/img"],
        Settings(),
        say=said.append,
    )
    assert api.pulls == [
        ("alpine", DIGEST),
        ("localhost:5000/img", DIGEST),
        ("registry:5000/ns/img", "latest"),
    ]
    assert len(pulled) == 3
    assert api.closed


def test_a_present_image_counts_under_if_not_present(api: FakeEngine) -> None:
    said: list[str] = []
    settings = parse_settings({"image": {"pull_policy": ["if-not-present"]}})
    pulled = images.pull(
        "gmd-p1",
        Address(engine_url="tcp://10.0.0.1:2376"),
        ["alpine:3.19"],
        settings,
        say=said.append,
    )
    assert pulled == ["alpine:3.19"]
    assert api.pulls == []  # on the engine already: no registry asked
    assert "Using locally found image alpine:3.19" in said


def test_an_image_that_cannot_be_pulled_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Refusing(FakeEngine):
        def pull(self, repository: str, **options: object) -> Iterator[Mapping[str, object]]:
            self.pulls.append((repository, options.get("tag")))
            yield {"error": "manifest unknown", "errorDetail": {"message": "manifest unknown"}}

        def inspect_image(self, image: str) -> Mapping[str, object]:
            raise ImageNotFound("no such image")

    fake = Refusing()
    monkeypatch.setattr(images, "connect", lambda *args: fake)
    skipped: list[tuple[str, str]] = []
    pulled = images.pull(
        "gmd-p1",
        Address(engine_url="tcp://10.0.0.1:2376"),
        ["ci/gone:1", "ci/gone:2"],
        parse_settings({"image": {"pull_policy": ["if-not-present"]}}),
        say=lambda _: None,
        skipped=lambda image, why: skipped.append((image, why)),
    )
    assert pulled == []
    assert [image for image, _ in skipped] == ["ci/gone:1", "ci/gone:2"]
    assert fake.closed
