"""What a job's containers bind: one named volume per `/path`, the socket rule for dind."""

from __future__ import annotations

import pytest

from driver.image import binds
from driver.image.config import ImageSettings
from driver.image.plan import ContainerPlan, Plan, ServicePlan

MACHINE = "gmd-p1234"


def job(*services: ServicePlan) -> Plan:
    return Plan(
        build=ContainerPlan(image="docker:27-cli", policies=[]),
        services=list(services),
        helper_image="helper:1",
        helper_policies=[],
        runner_version="",
        variables={},
        credentials=[],
        debug_services=False,
    )


def service(image: str, *aliases: str) -> ServicePlan:
    return ServicePlan(image=image, policies=[], aliases=list(aliases), name=image)


def test_each_path_is_one_named_volume_of_the_machine_in_every_bind_list() -> None:
    settings = ImageSettings(volumes=["/certs/client", "/srv/data:/data:ro", "/shared"])
    certs = binds.volume_name(MACHINE, "/certs/client")
    shared = binds.volume_name(MACHINE, "/shared")
    assert certs.startswith(f"{MACHINE}-vol-") and certs != shared
    assert binds.binds(settings, MACHINE, "/builds", "/cache") == [
        "/builds:/builds:rw",
        "/cache:/cache:rw",
        f"{certs}:/certs/client:rw",
        "/srv/data:/data:ro",
        f"{shared}:/shared:rw",
    ]
    assert binds.named_volumes(settings, MACHINE) == [certs, shared]
    # Another machine (another job): other volumes.
    assert binds.volume_name("gmd-p9999", "/shared") != shared


def test_the_same_path_twice_is_one_volume() -> None:
    settings = ImageSettings(volumes=["/shared", "/shared"])
    assert len(binds.named_volumes(settings, MACHINE)) == 1


@pytest.mark.parametrize(
    ("services", "provider"),
    [
        ([service("docker:27-dind", "docker")], "docker:27-dind"),
        (
            [service("reg.example:5000/ci/docker:dind", "reg.example__ci__docker", "docker")],
            "reg.example:5000/ci/docker:dind",
        ),
        (
            [service("postgres:16", "postgres"), service("mirror/dind:27", "engine")],
            "mirror/dind:27",
        ),
        ([service("docker:27.3.1-dind-rootless", "d")], "docker:27.3.1-dind-rootless"),
        ([service("postgres:16", "postgres"), service("redis:7", "redis")], None),
        ([service("kindest/node:v1", "kind"), service("nodind:1", "x")], None),
        ([], None),
    ],
)
def test_a_service_provides_docker_by_its_alias_or_a_dind_image(
    services: list[ServicePlan], provider: str | None
) -> None:
    found = binds.docker_service(services)
    assert (found.name if found else None) == provider


def test_the_socket_is_bound_unless_off_or_a_service_provides_docker() -> None:
    on, off = ImageSettings(), ImageSettings(docker_socket=False)
    socket = "/var/run/docker.sock:/var/run/docker.sock"
    assert binds.socket_bind(on, job(service("postgres:16", "postgres"))) == socket
    assert binds.socket_bind(on, job(service("docker:27-dind", "docker"))) is None
    assert binds.socket_bind(off, job()) is None
