"""The default helper: from the engine, else the runner host's prebuilt tarball, else a pull."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from docker.errors import ImageNotFound

from driver.image import helper

REF = "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-v17.9.0"


class FakeApi:
    def __init__(self, present: bool) -> None:
        self.present = present
        self.imports: list[dict[str, Any]] = []

    def inspect_image(self, ref: str) -> dict[str, str]:
        if not self.present:
            raise ImageNotFound("no such image")
        return {"Id": "sha256:feed"}

    def import_image(self, **kwargs: Any) -> None:
        self.imports.append(kwargs)
        self.present = True


def test_the_tarball_is_imported_with_the_helpers_entrypoint(tmp_path: Path) -> None:
    tarball = helper.prebuilt_tarball(tmp_path, "x86_64")
    assert tarball.name == "prebuilt-alpine-x86_64.tar.xz"
    tarball.write_bytes(b"xz")
    api, said = FakeApi(present=False), list[str]()
    assert helper.load_default(api, REF, tarball, said.append, said.append)
    assert api.imports == [
        {
            "src": str(tarball),
            "repository": REF.rsplit(":", 1)[0],
            "tag": "x86_64-v17.9.0",
            "changes": ['ENTRYPOINT ["/usr/bin/dumb-init", "/entrypoint"]'],
        }
    ]
    assert any(line.startswith(f"Loaded helper image {REF}") for line in said)


def test_an_image_on_the_engine_is_used_as_it_is(tmp_path: Path) -> None:
    api = FakeApi(present=True)
    assert helper.load_default(api, REF, tmp_path / "none.tar.xz", print, print)
    assert api.imports == []


def test_without_a_tarball_the_caller_pulls(tmp_path: Path) -> None:
    api = FakeApi(present=False)
    assert not helper.load_default(api, REF, tmp_path / "none.tar.xz", print, print)
