"""The one image reference parser: tags, digests, registry ports, library images."""

from __future__ import annotations

import pytest

from driver.image.reference import Reference, parse, pull_target, with_tag

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("alpine", Reference("alpine", None, None)),
        ("alpine:3.19", Reference("alpine", "3.19", None)),
        (f"alpine@{DIGEST}", Reference("alpine", None, DIGEST)),
        (f"alpine:3.19@{DIGEST}", Reference("alpine", "3.19", DIGEST)),
        ("registry:5000/ns/img", Reference("registry:5000/ns/img", None, None)),
        ("registry:5000/ns/img:tag", Reference("registry:5000/ns/img", "tag", None)),
        (f"localhost:5000/img@{DIGEST}", Reference("localhost:5000/img", None, DIGEST)),
        ("library/ubuntu", Reference("library/ubuntu", None, None)),
        ("docker.io/library/ubuntu:22.04", Reference("docker.io/library/ubuntu", "22.04", None)),
    ],
)
def test_parse(ref: str, expected: Reference) -> None:
    assert parse(ref) == expected


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("alpine", "alpine:latest"),
        ("alpine:3.19", "alpine:3.19"),
        (f"alpine@{DIGEST}", f"alpine@{DIGEST}"),
        ("registry:5000/ns/img", "registry:5000/ns/img:latest"),
        ("registry:5000/ns/img:tag", "registry:5000/ns/img:tag"),
        ("library/ubuntu", "library/ubuntu:latest"),
    ],
)
def test_with_tag(ref: str, expected: str) -> None:
    assert with_tag(ref) == expected


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("alpine", ("alpine", "latest")),
        ("alpine:3.19", ("alpine", "3.19")),
        (f"alpine@{DIGEST}", ("alpine", DIGEST)),  # never split at the digest's colon
        (f"alpine:3.19@{DIGEST}", ("alpine", DIGEST)),  # the digest wins, as in docker
        ("registry:5000/ns/img", ("registry:5000/ns/img", "latest")),
        (f"localhost:5000/img@{DIGEST}", ("localhost:5000/img", DIGEST)),
    ],
)
def test_pull_target(ref: str, expected: tuple[str, str]) -> None:
    assert pull_target(ref) == expected
