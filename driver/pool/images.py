"""The images the pool pulls into a machine it makes ready: as a job's prepare pulls.

Under ``[image] pull_policy``, as the job would: with ``if-not-present`` an image
the VM's engine already has is not asked of the registry again.

The same Puller (driver.image.pull: retries of transient errors, ``[image]
pull_timeout``, progress) and the same engine client (driver.engine); the
credentials are the admin's: ``[image] auth_config_file``, and ``[pool]
registry_username`` for any registry that file does not name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from driver.engine import Engine, connect
from driver.image.auth import Credentials, Login, from_docker_config, read_admin_file
from driver.image.policy import ImageRefused
from driver.image.pull import Puller
from driver.settings import Settings
from driver.state import Address, PoolPhase, StateDir

Say = Callable[[str], None]


def credentials(settings: Settings, warn: Say) -> Credentials:
    sources = []
    if settings.image.auth_config_file is not None:
        text = read_admin_file(settings.image.auth_config_file)
        sources.append(from_docker_config(text, "[image] auth_config_file", warn))
    pool = settings.pool
    fallback = None
    if pool.registry_username and pool.registry_password_file is not None:
        password = pool.registry_password_file.read_text().strip()
        fallback = Login(pool.registry_username, password, "[pool] registry_username")
    return Credentials(sources, fallback)


def pull(
    name: str,
    address: Address,
    images: Sequence[str],
    settings: Settings,
    *,
    say: Say,
    skipped: Callable[[str, str], None] | None = None,
) -> list[str]:
    """Pull ``images`` into machine ``name``'s engine; the images it now has.

    An image that cannot be had raises ImageRefused, unless ``skipped`` is given: then
    it is reported there (image, why) and the next one is pulled. Losing the engine
    itself always raises (DriverError).
    """
    puller = Puller(
        credentials(settings, say),
        machine=name,
        say=say,
        warn=say,
        timeout=settings.image.pull_timeout,
    )
    api = connect(Engine.of(address), settings.image.pull_timeout, settings.docker.ready_timeout)
    pulled = []
    try:
        for image in images:
            try:
                puller.ensure(api, image, settings.image.pull_policy, "")
            except ImageRefused as e:
                if skipped is None:
                    raise
                skipped(image, e.message)
                continue
            pulled.append(image)
    finally:
        api.close()
    return pulled


def pull_while_ready(
    state: StateDir,
    name: str,
    address: Address,
    images: Sequence[str],
    settings: Settings,
    *,
    say: Say,
    skipped: Callable[[str, str], None],
) -> list[str]:
    """Pull ``images`` into a machine already ready, one at a time while it stays ready:
    a claim never waits for it. Once a job claimed it, the rest is abandoned (the
    job pulls what it needs); an image in flight then simply finishes."""
    pulled = []
    for image in images:
        if state.pool_phase(name) != PoolPhase.READY:
            break
        pulled += pull(name, address, [image], settings, say=say, skipped=skipped)
    return pulled
