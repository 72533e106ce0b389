"""Image references, split as docker splits them: the one parser of the package.

``[registry[:port]/]path[:tag][@digest]``: the digest follows the first ``@``; a
tag is a ``:`` in the last path component only (a ``:`` before the first ``/`` is a
registry's port). No normalisation (``alpine`` stays ``alpine``, not
``docker.io/library/alpine``): the engine does that, and the names said in the job
log stay the ones the job wrote. Pure and structural: a malformed reference is
the engine's to refuse, in its own words.
"""

from __future__ import annotations

from typing import NamedTuple


class Reference(NamedTuple):
    repository: str  # registry (if any) and path: what `docker pull` takes before ":"/"@"
    tag: str | None
    digest: str | None  # "sha256:<hex>"


def parse(ref: str) -> Reference:
    """``alpine:3.19@sha256:ab..`` -> ("alpine", "3.19", "sha256:ab..")."""
    name, at, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # in the last component: a tag, not a registry's port
        return Reference(name[:colon], name[colon + 1 :], digest if at else None)
    return Reference(name, None, digest if at else None)


def with_tag(ref: str) -> str:
    """``:latest`` when the reference has neither tag nor digest, as docker pulls it."""
    _, tag, digest = parse(ref)
    return ref if tag or digest else f"{ref}:latest"


def pull_target(ref: str) -> tuple[str, str]:
    """The repository and what to pull of it, as the engine's pull endpoint takes them
    (``fromImage``, ``tag``): the digest if there is one (it names the content, a tag
    beside it is only a label), else the tag, else ``latest``."""
    repository, tag, digest = parse(ref)
    return repository, digest or tag or "latest"
