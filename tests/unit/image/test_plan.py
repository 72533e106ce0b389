"""What prepare plans for a job, from the payload gitlab-runner writes (runner emulation)."""

from __future__ import annotations

from typing import Any

import pytest

from driver.image import plan as image_plan
from driver.image.config import ImageSettings
from driver.image.policy import ImageRefused
from driver.payload import JobResponse
from testing.runner import BuildContext, Job, Service, Variable
from testing.runner.job import job_payload, job_variables

CTX = BuildContext(builds_dir="/builds", cache_dir="/cache", hostname="runner")


def payload(job: Job) -> Any:
    return JobResponse.model_validate(job_payload(job, CTX))


def environ(job: Job) -> dict[str, str]:
    """What the runner gives the driver's executables: every variable as CUSTOM_ENV_*."""
    return {"CUSTOM_ENV_" + v.key: v.value for v in job_variables(job, CTX)}


def plan(job: Job, **image: Any) -> image_plan.Plan | None:
    said: list[str] = []
    settings = ImageSettings(mode="container", **image)
    return image_plan.plan(settings, said.append, payload(job), environ(job))


def test_shell_mode_plans_nothing_whatever_the_job_asks() -> None:
    assert image_plan.plan(ImageSettings(), print, payload(Job(image="ruby:3.2"))) is None


def test_the_default_image_serves_jobs_without_one_and_is_always_allowed() -> None:
    got = plan(Job(), default="debian:12", allowed_images=["ruby:*"])
    assert got is not None and got.build.image == "debian:12"
    assert plan(Job()) is None  # no default: the VM's shell


def test_the_jobs_image_options_are_carried_and_checked() -> None:
    job = Job(
        image="ruby:3.2",
        image_entrypoint=[""],
        image_pull_policy=["if-not-present"],
        image_docker={"user": "1000", "platform": "linux/arm64"},
    )
    got = plan(job, pull_policy=["if-not-present"])
    assert got is not None
    assert (got.build.entrypoint, got.build.user, got.build.platform) == (
        [""],
        "1000",
        "linux/arm64",
    )
    assert got.build.policies == ["if-not-present"]
    assert got.runner_version == "17.9.0"
    # Secrets stay out of the containers' environment: the script exports them.
    assert "CI_JOB_TOKEN" not in got.build.environment
    assert got.build.environment["CI_JOB_NAME"] == "test-job"
    with pytest.raises(ImageRefused, match="allowed_images"):
        plan(job, allowed_images=["python:*"])


def test_docker_user_and_platform_expand_the_jobs_variables() -> None:
    job = Job(
        image="ruby:3.2",
        variables=[Variable("BUILD_UID", "1000"), Variable("ARCH", "arm64")],
        image_docker={"user": "${BUILD_UID}:$BUILD_UID", "platform": "linux/${ARCH}"},
    )
    got = plan(job)
    assert got is not None
    assert (got.build.user, got.build.platform) == ("1000:1000", "linux/arm64")
    # allowed_users is checked on the expanded user, as docker checks it.
    with pytest.raises(ImageRefused):
        plan(job, allowed_users=["${BUILD_UID}:$BUILD_UID"])
    assert plan(job, allowed_users=["1000:1000"]) is not None


def test_services_get_aliases_expanded_variables_and_admin_limits() -> None:
    job = Job(
        image="ruby:3.2",
        services=[
            Service("postgres:15", variables=[Variable("DB", "db-$CI_JOB_NAME")]),
            Service("tutum/wordpress", alias="wp,blog"),
            "postgres:16",  # its only alias is taken: not started
        ],
    )
    got = plan(job)
    assert got is not None
    assert [s.aliases for s in got.services] == [
        ["postgres"],
        ["tutum__wordpress", "tutum-wordpress", "wp", "blog"],
    ]
    assert got.services[0].environment["DB"] == "db-test-job"
    with pytest.raises(ImageRefused, match="too many services requested: 3, only 2"):
        plan(job, services_limit=2)
    with pytest.raises(ImageRefused, match="allowed_services"):
        plan(job, allowed_services=["postgres:*"])


def test_the_default_helper_is_the_runners_version_from_the_environment() -> None:
    # gitlab-runner never puts its version in the payload: only CUSTOM_ENV_CI_RUNNER_VERSION.
    job = Job(image="ruby:3.2")
    assert "CI_RUNNER_VERSION" not in {v.key for v in payload(job).variables}
    got = plan(job)
    assert got is not None and got.runner_version == "17.9.0"
    settings = ImageSettings(mode="container")
    with pytest.raises(Exception, match=r"CUSTOM_ENV_CI_RUNNER_VERSION is ''"):
        image_plan.plan(settings, print, payload(job), {})  # a stage run by hand, say
    dev = {**environ(job), "CUSTOM_ENV_CI_RUNNER_VERSION": "dev"}  # a runner built from source
    with pytest.raises(Exception, match=r"set \[image\] helper_image"):
        image_plan.plan(settings, print, payload(job), dev)
    versioned = ImageSettings(mode="container", helper_image="helper:${CI_RUNNER_VERSION}")
    got = image_plan.plan(versioned, print, payload(job), dev)
    assert got is not None and got.helper_image == "helper:dev"


def test_services_get_the_runners_variables_but_no_secret() -> None:
    # The docker executor gives services the public and internal variables
    # (common/build.go GetServiceVariables): the runner's own are internal.
    job = Job(
        image="ruby:3.2",
        services=["postgres:16"],
        variables=[Variable("SECRET", "s3cret", masked=True, public=False)],
    )
    got = plan(job)
    assert got is not None
    env = got.services[0].environment
    assert env["CI_PROJECT_DIR"] == "/builds/group/project"
    assert env["CI_RUNNER_VERSION"] == "17.9.0" and env["CI_JOB_NAME"] == "test-job"
    assert "SECRET" not in env and "CI_JOB_TOKEN" not in env


def test_disable_entrypoint_overwrite_keeps_every_images_own() -> None:
    """As the docker executor: for the build image and each service, the admin's too."""
    job = Job(
        image="ruby:3.2",
        image_entrypoint=["/bin/sh", "-c"],
        services=[Service("postgres:15", entrypoint=["/custom-entry"])],
    )
    admin = [{"name": "redis:7", "entrypoint": ["/admin-entry"]}]
    got = plan(job, services=admin)
    assert got is not None
    assert [got.build.entrypoint, *(s.entrypoint for s in got.services)] == [
        ["/bin/sh", "-c"],
        ["/admin-entry"],
        ["/custom-entry"],
    ]
    said: list[str] = []
    settings = ImageSettings(mode="container", services=admin, disable_entrypoint_overwrite=True)
    got = image_plan.plan(settings, said.append, payload(job), environ(job))
    assert got is not None
    assert [got.build.entrypoint, *(s.entrypoint for s in got.services)] == [None, None, None]
    assert said.count("Entrypoint override disabled") == 3
