"""Image mode's admin rules: allow-lists, pull policies, users, aliases, credentials."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from driver.errors import ConfigError
from driver.image import aliases, auth, policy
from driver.image.config import ImageSettings
from driver.image.payload import Credential
from driver.image.policy import ImageRefused
from driver.settings import parse_settings


@pytest.mark.parametrize(
    ("name", "patterns", "allowed"),
    [
        ("ruby:3.2", [], True),
        ("ruby:3.2", ["ruby:*"], True),
        ("library/ruby:3.2", ["ruby:*"], False),  # matched as written: no normalisation
        ("ns/app:1", ["*"], False),  # `*` stops at `/`
        ("ns/app:1", ["**"], True),
        ("reg.example:5000/ns/app:1", ["reg.example:5000/**"], True),
        ("docker:24-dind", ["docker:{23,24}-*"], True),
        ("kali:1", ["**", "!*/kali*"], True),  # no negation: `!` is a literal
        ("!kali", ["!kali"], True),
        ("ruby:3.2", ["ruby:?.?"], True),
    ],
)
def test_allowed_images_follow_the_docker_executors_glob_rules(
    name: str, patterns: list[str], allowed: bool
) -> None:
    assert policy.allowed(name, patterns) is allowed


def test_a_refused_image_names_the_setting_and_the_patterns() -> None:
    with pytest.raises(ImageRefused) as refused:
        policy.check_allowed("evil:1", ["ruby:*", "python:*"], "images")
    text = str(refused.value)
    assert '"evil:1" image is not present' in text
    assert "allowed_images" in text and "  - ruby:*" in text
    assert refused.value.exit_code == 1  # a job failure, not a system one


def test_pull_policies_come_from_the_job_then_the_admin_within_the_allowed() -> None:
    admin = ImageSettings(pull_policy=["if-not-present"], allowed_pull_policies=["never", "always"])
    assert policy.pull_policies("x", ["never", "always"], admin) == ["never", "always"]
    assert policy.pull_policies("x", None, ImageSettings()) == ["always"]
    with pytest.raises(ImageRefused, match=r"defined in GitLab pipeline config is not one of"):
        policy.pull_policies("x", ["if-not-present"], admin)
    with pytest.raises(ImageRefused, match=r"\(default\)"):
        policy.pull_policies("x", None, ImageSettings(allowed_pull_policies=["never"]))
    with pytest.raises(ImageRefused, match="invalid pull policy 'sometimes'"):
        policy.pull_policies("x", ["sometimes"], admin)


def test_users_and_executor_options() -> None:
    assert policy.build_user("1000", ImageSettings()) == "1000"
    assert policy.build_user("1000", ImageSettings(user="root")) == "root"
    with pytest.raises(ImageRefused, match='user "root" is not an allowed user'):
        policy.build_user("root", ImageSettings(allowed_users=["1000"]))
    policy.check_docker_options({"platform": "linux/amd64", "user": "1"}, "image")
    with pytest.raises(ImageRefused, match=r"unsupported \"image\" options \['cpus'\]"):
        policy.check_docker_options({"cpus": 2}, "image")


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("postgres:15", ["postgres"]),
        ("tutum/wordpress:latest", ["tutum__wordpress", "tutum-wordpress"]),
        ("docker:24-dind", ["docker"]),
        ("domain.tld:8080/ns/svc:v", ["domain.tld__ns__svc", "domain.tld-ns-svc"]),
        ("redis@sha256:abc", ["redis"]),
    ],
)
def test_service_aliases_as_the_docker_executor_derives_them(
    image: str, expected: list[str]
) -> None:
    assert aliases.default_aliases(image) == expected


def test_taken_aliases_are_skipped_and_a_service_left_without_one_is_dropped() -> None:
    got = aliases.assign([("mysql:8", ["db"]), ("mysql:latest", []), ("pg:1", ["db", "pg2"])])
    assert got == [(["mysql", "db"], []), ([], ["mysql"]), (["pg", "pg2"], ["db"])]


def _auths(entries: dict[str, tuple[str, str]]) -> str:
    return json.dumps(
        {
            "auths": {
                host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
                for host, (u, p) in entries.items()
            }
        }
    )


def test_credentials_take_the_longest_path_and_the_first_source() -> None:
    warnings: list[str] = []
    job = auth.from_docker_config(
        _auths({"reg.example:5000": ("job", "1"), "https://index.docker.io/v1/": ("hub", "2")}),
        "DOCKER_AUTH_CONFIG",
        warnings.append,
    )
    payload = auth.from_credentials(
        [
            Credential(type="registry", url="reg.example:5000", username="ci", password="t"),
            Credential(type="registry", url="reg.example:5000/team", username="t2", password="x"),
        ]
    )
    creds = auth.Credentials([job, payload])
    assert creds.for_image("reg.example:5000/app:1").username == "job"  # type: ignore[union-attr]
    assert creds.for_image("reg.example:5000/team/app").username == "t2"  # type: ignore[union-attr]
    assert creds.for_image("nginx").username == "hub"  # type: ignore[union-attr]
    assert creds.for_image("other.example/x") is None
    assert warnings == []


def test_bad_auth_configs_warn_without_their_values() -> None:
    warnings: list[str] = []
    assert auth.from_docker_config("{not json s3cret", "DOCKER_AUTH_CONFIG", warnings.append) == {}
    auth.from_docker_config('{"credsStore": "pass"}', "DOCKER_AUTH_CONFIG", warnings.append)
    assert len(warnings) == 2 and not any("s3cret" in w for w in warnings)


def test_the_admins_auth_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(_auths({"reg.example": ("admin", "pw")}))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        auth.read_admin_file(path)
    path.chmod(0o600)
    assert "auths" in auth.read_admin_file(path)


def test_shell_mode_is_the_default_and_settings_are_checked() -> None:
    assert parse_settings({}).image.mode == "shell"
    with pytest.raises(ConfigError, match=r"\[image\] volumes"):
        parse_settings({"image": {"volumes": ["relative:/x"]}})
    with pytest.raises(ConfigError, match=r"\[image\] pull_policy"):
        parse_settings({"image": {"pull_policy": ["sometimes"]}})
    parsed = parse_settings(
        {"image": {"mode": "container", "services": [{"name": "postgres:15", "alias": "db"}]}}
    )
    assert parsed.image.services[0].alias == "db"


def test_the_pool_pulls_the_default_and_an_explicit_helper_image() -> None:
    from driver.image.config import pool_images

    assert pool_images(ImageSettings(default="debian:12", helper_image="h:1")) == []  # shell
    container = ImageSettings(mode="container", default="debian:12", helper_image="h:1")
    assert pool_images(container) == ["debian:12", "h:1"]
    versioned = ImageSettings(mode="container", helper_image="h:${CI_RUNNER_VERSION}")
    assert pool_images(versioned) == []
