"""A helper container the warm pool started is used only if it is what the job would start."""

from __future__ import annotations

from typing import Any, cast

import pytest
from docker.errors import NotFound

from driver.engine import ContainerAPI, ContainerInfo, Engine
from driver.image import binds
from driver.image.config import ImageSettings
from driver.image.containers import Starter, channel_bind
from driver.image.plan import ContainerPlan, Plan
from driver.image.programs import COMMAND, HELPER_KEEPER, KEEPER_LABEL, digest

HELPER = "reg.example.com/ci/helper:1"
MACHINE = "gmd-p1234"
NAME = f"{MACHINE}-helper"


class FakeEngine:
    """Answers inspect_container from one container record; records removals."""

    def __init__(self, container: dict[str, Any] | None) -> None:
        self.container = container
        self.removed: list[str] = []

    def inspect_container(self, container: str) -> ContainerInfo:
        if self.container is None:
            raise NotFound("no such container")
        return cast(ContainerInfo, self.container)

    def remove_container(self, container: str, *, force: bool) -> None:
        self.removed.append(container)


def connected(job: Starter, engine: FakeEngine) -> FakeEngine:
    """``engine`` as the job's client: it answers the only calls _pooled_helper makes."""
    job.api = cast(ContainerAPI, engine)
    return engine


def starter(volumes: list[str] | None = None) -> Starter:
    settings = ImageSettings(mode="container", helper_image=HELPER, volumes=volumes or [])
    plan = Plan(
        build=ContainerPlan(image="ruby:3", policies=[]),
        services=[],
        helper_image=HELPER,
        helper_policies=[],
        runner_version="",
        variables={},
        credentials=[],
        debug_services=False,
    )
    engine = Engine("tcp://10.0.0.1:2376", "ca", "cert", "key")
    return Starter(
        settings,
        plan,
        machine=MACHINE,
        engine=engine,
        builds_dir="/builds",
        cache_dir="/cache",
        say=print,
        warn=print,
    )


def pooled(**changes: Any) -> dict[str, Any]:
    """The record of a helper as prestart_helper starts it, with `changes`."""
    container: dict[str, Any] = {
        "Image": "sha256:abc",
        "State": {"Running": True},
        "Config": {
            "Image": HELPER,
            "Cmd": COMMAND,
            "Labels": {
                "gitlab-machine-driver.machine": MACHINE,
                KEEPER_LABEL: digest(HELPER_KEEPER),
            },
        },
        "HostConfig": {"Binds": ["/builds:/builds:rw", "/cache:/cache:rw", channel_bind(NAME)]},
    }
    for section, value in changes.items():
        container[section] = {**container[section], **value}
    return container


def test_a_matching_running_helper_is_used() -> None:
    job = starter()
    api = connected(job, FakeEngine(pooled()))
    assert job._pooled_helper(NAME) == "sha256:abc"
    assert api.removed == []


def test_no_helper_from_the_pool_means_none() -> None:
    job = starter()
    api = connected(job, FakeEngine(None))
    assert job._pooled_helper(NAME) == ""
    assert api.removed == []


@pytest.mark.parametrize(
    "changes",
    [
        {"State": {"Running": False}},
        {"Config": {"Image": "reg.example.com/ci/helper:2"}},  # the admin changed it since
        {"Config": {"Cmd": ["sh", "-c", HELPER_KEEPER]}},  # an older driver's way
        {"Config": {"Labels": {KEEPER_LABEL: digest("an older driver's keeper")}}},
        {"Config": {"Labels": {}}},
    ],
    ids=["stopped", "other-image", "keeper-as-command", "other-keeper", "no-keeper-label"],
)
def test_a_helper_that_differs_is_removed_and_not_used(changes: dict[str, Any]) -> None:
    job = starter()
    api = connected(job, FakeEngine(pooled(**changes)))
    assert job._pooled_helper(NAME) == ""
    assert api.removed == [NAME]


def test_other_volumes_since_the_pool_started_it_mean_a_new_helper() -> None:
    job = starter(volumes=["/srv/data:/data:ro"])
    api = connected(job, FakeEngine(pooled()))
    assert job._pooled_helper(NAME) == ""
    assert api.removed == [NAME]


def test_a_helper_the_pool_started_with_a_path_volume_is_the_jobs() -> None:
    """A `/path` volume is the machine's named volume: the same name for the pool's helper
    and the job's, so the pool's is used (and binds the volume the job's services get)."""
    volume = binds.volume_name(MACHINE, "/shared")
    job = starter(volumes=["/shared"])
    api = connected(
        job,
        FakeEngine(
            pooled(
                HostConfig={
                    "Binds": [
                        "/builds:/builds:rw",
                        "/cache:/cache:rw",
                        f"{volume}:/shared:rw",
                        channel_bind(NAME),
                    ]
                }
            )
        ),
    )
    assert job._pooled_helper(NAME) == "sha256:abc"
    assert api.removed == []
