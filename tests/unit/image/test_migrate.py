"""migrate: a docker+machine runner's [runners.docker] becomes the driver's [image]."""

from __future__ import annotations

import tomllib
from typing import Any

from driver.commands.migrate import migrate
from driver.image import host_config
from driver.image.migrate import SAME
from driver.settings import parse_settings

RUNNER = {
    "name": "ci",
    "executor": "docker+machine",
    "machine": {"MachineDriver": "amazonec2", "MachineName": "ci-%s", "MaxBuilds": 1},
    "docker": {
        "image": "ruby:3.2",
        "privileged": True,
        "volumes": ["/cache", "/var/run/docker.sock:/var/run/docker.sock", "/srv:/srv:ro"],
        "pull_policy": "if-not-present",
        "allowed_images": ["ruby:*"],
        "helper_image": "registry.example/helper:x86_64-v17.9.0",
        "services": [{"name": "postgres:15", "alias": "db", "environment": ["A=b"]}],
        "memory": "1g",
    },
}


def test_runners_docker_maps_to_a_valid_image_section_naming_what_has_no_equivalent() -> None:
    migration = migrate(RUNNER)
    image = parse_settings(tomllib.loads(migration.driver_config)).image
    assert image.mode == "container"
    assert (image.default, image.privileged) == ("ruby:3.2", True)
    assert image.pull_policy == ["if-not-present"]
    assert image.allowed_images == ["ruby:*"]
    assert image.helper_image == "registry.example/helper:x86_64-v17.9.0"
    assert image.volumes == ["/srv:/srv:ro"]  # /cache is bound already; the socket too
    assert [(s.name, s.alias, s.environment) for s in image.services] == [
        ("postgres:15", "db", ["A=b"])
    ]
    assert image.memory == "1g"
    notes = "\n".join(migration.notes)
    assert "memory" not in notes
    assert (
        "[runners.docker] volumes '/cache': not needed: the VM's cache_dir is bound at /cache "
        "into every container already" in notes
    )
    assert "docker_socket" in notes
    assert "VM's shell" not in notes


def test_a_runner_without_runners_docker_keeps_shell_mode() -> None:
    runner = {k: v for k, v in RUNNER.items() if k != "docker"}
    image = parse_settings(tomllib.loads(migrate(runner).driver_config)).image
    assert image.mode == "shell"


# A [runners.docker] with every container option, as gitlab-runner's docs write them.
CONTAINER_OPTIONS: dict[str, Any] = {
    "shm_size": 300000000,
    "devices": ["/dev/fuse", "/dev/kvm:/dev/kvm:rw"],
    "dns": ["10.0.0.2", "10.0.0.3"],
    "dns_search": ["corp.example"],
    "extra_hosts": ["registry.local:10.0.0.5"],
    "tmpfs": {"/tmp": "rw,noexec"},
    "services_tmpfs": {"/var/lib/mysql": "rw,noexec"},
    "memory": "4g",
    "memory_swap": "6g",
    "memory_reservation": "2g",
    "cpus": "1.5",
    "cpuset_cpus": "0-1",
    "oom_kill_disable": True,
    "sysctls": {"net.ipv4.ip_forward": "1"},
    "ulimit": {"nofile": "1024:2048", "nproc": "4096"},
    "network_mtu": 1400,
    "security_opt": ["seccomp=unconfined"],
    "services_privileged": False,
    "allowed_privileged_services": ["docker:*-dind"],
    "allowed_privileged_images": ["docker:*"],
}


def migrated(docker: dict[str, Any], **runner: Any) -> tuple[Any, str]:
    migration = migrate({**RUNNER, "docker": docker, **runner})
    image = parse_settings(tomllib.loads(migration.driver_config)).image
    return image, "\n".join(migration.notes)


def test_every_container_option_is_carried_over_under_its_own_name() -> None:
    image, notes = migrated({"image": "ruby:3.2", "privileged": True, **CONTAINER_OPTIONS})
    assert {key: getattr(image, key) for key in CONTAINER_OPTIONS} == CONTAINER_OPTIONS
    assert set(CONTAINER_OPTIONS) <= set(SAME)
    for key in CONTAINER_OPTIONS:
        assert f"[runners.docker] {key}" not in notes
    # ... and reaches the containers: the build container's limits, dind's privilege.
    build = host_config.for_role(image, "build", image="docker:24-cli")
    assert (build["mem_limit"], build["privileged"]) == (4 * 1024**3, True)
    assert host_config.for_role(image, "service", image="docker:24-dind")["privileged"] is False
    assert host_config.network_options(image) == {
        "options": {"com.docker.network.driver.mtu": "1400"}
    }


def test_every_key_left_out_is_named_with_the_reason() -> None:
    _, notes = migrated(
        {
            "image": "ruby:3.2",
            "hostname": "ci",
            "network_mode": "host",
            "service_memory": "1g",
            "runtime": "runsc",
            "volume_driver": "local",
            "tls_verify": False,
            "links": ["mysql:db"],
        }
    )
    assert "[runners.docker] hostname: left out: every container's hostname is the job's" in notes
    assert "[runners.docker] network_mode: left out: every job gets its own network" in notes
    assert "[runners.docker] service_memory: left out: service containers run without" in notes
    assert "[runners.docker] runtime: left out: containers use the VM engine's default" in notes
    assert "[runners.docker] volume_driver: left out: no equivalent in image mode" in notes
    assert "[runners.docker] tls_verify: not needed" in notes
    assert "[runners.docker] links: not needed (services are reached by their aliases" in notes


def test_a_value_the_driver_refuses_is_left_out_with_the_reason_and_the_config_loads() -> None:
    image, notes = migrated({"image": "ruby:3.2", "memory": "4g", "ulimit": {"nofile": "x"}})
    assert image.memory == "4g"
    assert image.ulimit == {}
    assert "[runners.docker] ulimit = {'nofile': 'x'}: left out: ulimit nofile = 'x' must be" in (
        notes
    )


def test_cache_and_builds_volumes_are_the_vms_own_dirs() -> None:
    image, notes = migrated(
        {"volumes": ["/cache", "/srv/cache:/cache", "/builds", "/data", "/certs/client"]}
    )
    assert image.volumes == ["/data", "/certs/client"]
    assert "volumes '/srv/cache:/cache': not needed: the VM's cache_dir is bound at /cache" in (
        notes
    )
    assert "volumes '/builds': not needed: the VM's builds_dir is bound at /builds" in notes
    assert "(caches there live as long as the VM: one job; see [runners.cache])" in notes
    # With its own cache_dir, the runner's "/cache" volume is just a volume.
    image, notes = migrated({"volumes": ["/cache"]}, cache_dir="/var/cache/ci")
    assert image.volumes == ["/cache"]
