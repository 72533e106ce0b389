"""The default helper image without a registry, as docker+machine had it.

With ``[image] helper_image`` unset, the helper is GitLab's for the runner's version
and the engine's architecture. As the docker executor finds it (gitlab-runner's
``internal/prebuilt``): on the engine already; else imported from the tarball that
gitlab-runner's package installs on the runner host
(``<helper_images_dir>/prebuilt-alpine-<arch>.tar.xz``), over the Docker API, with
the helper's entrypoint; else (the caller's part) pulled. So a fresh VM's helper
costs no registry pull and meets no rate limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from driver.image.reference import pull_target

Say = Callable[[str], None]

# gitlab-runner's prebuilt import: the entrypoint the helper's Dockerfile sets.
ENTRYPOINT_CHANGE = 'ENTRYPOINT ["/usr/bin/dumb-init", "/entrypoint"]'


class HelperAPI(Protocol):
    """What loading asks of the engine's client (driver/engine.py's ContainerAPI)."""

    def inspect_image(self, image: str) -> Mapping[str, object]: ...
    def import_image(
        self, *, src: str, repository: str, tag: str, changes: list[str]
    ) -> object: ...


def prebuilt_tarball(images_dir: Path, arch: str) -> Path:
    """``arch``: the helper tag's architecture (x86_64, arm64, arm, s390x, ...)."""
    return images_dir / f"prebuilt-alpine-{arch}.tar.xz"


def load_default(api: HelperAPI, ref: str, tarball: Path, say: Say, warn: Say) -> bool:
    """The default helper ``ref`` on the engine from the engine or ``tarball``; False if
    neither has it (pull it then). A tarball the engine refuses is warned about."""
    from docker.errors import DockerException, ImageNotFound

    try:
        api.inspect_image(ref)
        say(f"Using locally found image {ref}")
        return True
    except ImageNotFound:
        pass
    if not tarball.is_file():
        return False
    repository, tag = pull_target(ref)
    step = time.monotonic()
    try:
        api.import_image(
            src=str(tarball), repository=repository, tag=tag, changes=[ENTRYPOINT_CHANGE]
        )
        image = api.inspect_image(ref)
    except (DockerException, OSError) as e:
        warn(f"could not load the helper image from {tarball} ({e}); pulling it instead")
        return False
    say(
        f"Loaded helper image {ref} ({image.get('Id', '?')}) from {tarball} "
        f"({time.monotonic() - step:.1f}s)"
    )
    return True
