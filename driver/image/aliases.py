"""Host names of services on the job's network, as the docker executor derives them."""

from __future__ import annotations

from collections.abc import Sequence

from driver.image.reference import parse


def default_aliases(image: str) -> list[str]:
    """`tutum/wordpress:latest` -> tutum__wordpress, tutum-wordpress; `postgres:15` -> postgres.

    Tag and digest go, and a registry's port, but the registry host stays:
    `domain.tld:8080/ns/svc:v` -> domain.tld__ns__svc, domain.tld-ns-svc.
    """
    parts = parse(image).repository.split("/")
    if len(parts) > 1 and ":" in parts[0]:
        parts[0] = parts[0].split(":", 1)[0]
    path = "/".join(parts)
    underscored, dashed = path.replace("/", "__"), path.replace("/", "-")
    return [underscored] if underscored == dashed else [underscored, dashed]


def assign(services: Sequence[tuple[str, list[str]]]) -> list[tuple[list[str], list[str]]]:
    """For each (image, user aliases): (aliases it gets, aliases skipped as taken).

    An alias already used by an earlier service is skipped; a service left with none
    is not started (the docker executor's rule: `mysql` twice without aliases).
    """
    taken: set[str] = set()
    result = []
    for image, user_aliases in services:
        got, skipped = [], []
        for alias in [*default_aliases(image), *user_aliases]:
            if alias in taken:
                skipped.append(alias)
            elif alias not in got:
                got.append(alias)
        taken.update(got)
        result.append((got, skipped))
    return result
