"""migrate: a docker+machine runner's [runners.docker] becomes the driver's [image]."""

from __future__ import annotations

import tomllib

from driver.commands.migrate import migrate
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
    notes = "\n".join(migration.notes)
    assert "[runners.docker] memory: no equivalent" in notes
    assert "docker_socket" in notes
    assert "VM's shell" not in notes


def test_a_runner_without_runners_docker_keeps_shell_mode() -> None:
    runner = {k: v for k, v in RUNNER.items() if k != "docker"}
    image = parse_settings(tomllib.loads(migrate(runner).driver_config)).image
    assert image.mode == "shell"
