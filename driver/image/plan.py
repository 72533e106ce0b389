"""Prepare's plan of a job's containers: what it runs in, checked against the admin's lists.

Pure: it reads the payload gitlab-runner wrote and the runner's environment, and
talks to no engine, so it runs before any machine exists and a refused image
costs no VM. driver/image/containers.py starts the plan once the VM is ready.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from driver.contract import JOB_VARIABLE_PREFIX, RESPONSE_FILE_ENV
from driver.errors import DriverError, JobError
from driver.image import aliases, policy
from driver.image.config import ImageSettings, PullPolicy
from driver.image.payload import Credential, ImageSpec, ImageVariable
from driver.image.policy import ImageRefused
from driver.payload import JobResponse

Say = Callable[[str], None]

DEBUG_SERVICES_VARIABLE = "CI_DEBUG_SERVICES"


@dataclass
class ContainerPlan:
    image: str
    policies: list[PullPolicy]
    entrypoint: list[str] | None = None  # None: the image's own
    command: list[str] | None = None
    user: str = ""
    platform: str = ""
    environment: dict[str, str] = field(default_factory=dict)


@dataclass
class ServicePlan(ContainerPlan):
    aliases: list[str] = field(default_factory=list)
    name: str = ""  # as the job wrote it, for the log


@dataclass
class Plan:
    build: ContainerPlan
    services: list[ServicePlan]
    helper_image: str  # "" until the engine's architecture is known (the default helper)
    helper_policies: list[PullPolicy]
    runner_version: str
    variables: dict[str, str]
    credentials: list[Credential]
    debug_services: bool


def load_payload(path: str | None = None) -> JobResponse:
    """The response file gitlab-runner wrote for the job (its path from the environment)."""
    path = path or os.environ.get(RESPONSE_FILE_ENV)
    if not path:
        raise JobError(f"{RESPONSE_FILE_ENV} is not set: the job's image is unknown")
    try:
        return JobResponse.model_validate_json(Path(path).read_bytes())
    except (OSError, ValidationError) as e:
        raise JobError(f"cannot read the job's image and services from {path}: {e}") from None


def plan(
    settings: ImageSettings,
    say: Say,
    payload: JobResponse | None = None,
    environ: Mapping[str, str] | None = None,
) -> Plan | None:
    """What this job runs in, checked against the admin's lists; None: the VM's shell.

    ``payload``: the parsed response file; ``environ``: the runner's environment.
    """
    if not settings.container_mode:
        return None
    payload = payload if payload is not None else load_payload()
    variables, public = job_variables(payload, os.environ if environ is None else environ)
    spec: ImageSpec = payload.image or ImageSpec()
    requested_services = [s for s in payload.services or [] if s.name]
    name = spec.name or settings.default
    if not name:
        if requested_services:
            say(
                "WARNING: this job names no image and the runner has no default image "
                "([image] default): it runs in the VM's shell and its services are not started"
            )
        return None
    if spec.name:  # the admin's default image is always allowed
        policy.check_allowed(name, settings.allowed_images, "images")
    policy.check_docker_options(spec.docker_options, "image")
    options = spec.docker_options
    build = ContainerPlan(
        image=name,
        policies=policy.pull_policies(name, spec.pull_policy if spec.name else None, settings),
        entrypoint=_entrypoint(spec.entrypoint if spec.name else None, settings, say),
        # docker: user and platform are expanded at use time, as the docker executor does.
        user=policy.build_user(_expand(str(options.get("user") or ""), variables), settings),
        platform=_expand(str(options.get("platform") or ""), variables),
        environment=public,
    )
    services = _plan_services(settings, requested_services, public, variables, say)
    # The runner's version reaches a driver only in its environment (never in the
    # payload): the default helper is the runner's own version, as on docker.
    runner_version = variables.get("CI_RUNNER_VERSION", "")
    helper = settings.helper_image
    if helper:
        helper = _expand(helper, variables)
        helper_policies = list(settings.pull_policy)
    else:
        helper_policies = ["if-not-present"]
        if not re.fullmatch(r"\d+\.\d+\.\d+", runner_version):
            raise DriverError(
                f"cannot tell gitlab-runner's version (CUSTOM_ENV_CI_RUNNER_VERSION is "
                f"{runner_version!r}) to pick its helper image",
                hint="gitlab-runner sets it for every stage; when running a stage by hand, "
                "export it, or set [image] helper_image in the driver's config",
            )
    return Plan(
        build=build,
        services=services,
        helper_image=helper,
        helper_policies=helper_policies,
        runner_version=runner_version,
        variables=variables,
        credentials=list(payload.credentials or []),
        debug_services=variables.get(DEBUG_SERVICES_VARIABLE, "").lower() in ("true", "1"),
    )


def job_variables(
    payload: JobResponse, environ: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(all, public): the job's variables as the runner resolved them for this job.

    The payload holds what GitLab sent; the runner adds its own (its version,
    ``[[runners]] environment``, CI_PROJECT_DIR, feature flags, ...) to the
    environment only, as ``CUSTOM_ENV_*``, where each key holds its final value.
    "public" is what the docker executor gives services: the payload's public
    variables, and the runner's own (all internal); never masked or file ones, nor a
    ``secrets:`` value (those are only in the environment too).
    """
    prefix = JOB_VARIABLE_PREFIX
    flags = {var.key: var for var in payload.variables}
    secrets = set(payload.secrets or {})
    variables = {var.key: var.value for var in payload.variables}
    public = {
        var.key: var.value
        for var in payload.variables
        if var.public and not var.masked and not var.file
    }
    for name, value in environ.items():
        if not name.startswith(prefix) or name == prefix + "CI_JOB_SERVICES":
            continue
        key = name[len(prefix) :]
        variables[key] = value
        if key not in secrets and (key not in flags or key in public):
            public[key] = value
    return variables, public


def _plan_services(
    settings: ImageSettings,
    requested: Sequence[ImageSpec],
    public: dict[str, str],
    variables: dict[str, str],
    say: Say,
) -> list[ServicePlan]:
    wanted: list[tuple[ImageSpec, bool]] = [
        (
            ImageSpec(
                name=s.name,
                alias=s.alias,
                command=s.command or None,
                entrypoint=s.entrypoint or None,
                variables=[
                    ImageVariable(key=k, value=v)
                    for k, _, v in (e.partition("=") for e in s.environment)
                ],
            ),
            True,
        )
        for s in settings.services
    ]
    wanted += [(s, False) for s in requested]
    limit = settings.services_limit
    if limit >= 0 and len(wanted) > limit:
        raise ImageRefused(
            f"too many services requested: {len(wanted)}, only {limit} allowed",
            hint="use fewer services, or ask the runner's admin to raise [image] services_limit",
        )
    for spec, from_admin in wanted:
        if not from_admin:
            policy.check_allowed(spec.name, settings.allowed_services, "services")
        policy.check_docker_options(spec.docker_options, "services")
    assigned = aliases.assign([(spec.name, spec.aliases()) for spec, _ in wanted])
    result = []
    for index, ((spec, from_admin), (names, skipped)) in enumerate(
        zip(wanted, assigned, strict=True)
    ):
        for alias in skipped:
            say(
                f'WARNING: Skipping alias "{alias}" for service "{spec.name}" '
                f"(services[{index}]): alias is already in use by another service."
            )
        if not names:
            say(f"Service {spec.name} is already created. Ignoring.")
            continue
        environment = dict(public)
        for var in spec.variables or []:
            environment[var.key] = _expand(var.value, {**variables, **environment})
        options = spec.docker_options
        result.append(
            ServicePlan(
                image=spec.name,
                name=spec.name,
                policies=policy.pull_policies(
                    spec.name, None if from_admin else spec.pull_policy, settings
                ),
                entrypoint=_entrypoint(spec.entrypoint, settings, say),
                command=spec.command or None,
                user=_expand(str(options.get("user") or ""), variables),
                platform=_expand(str(options.get("platform") or ""), variables),
                environment=environment,
                aliases=names,
            )
        )
    return result


def _entrypoint(wanted: list[str] | None, settings: ImageSettings, say: Say) -> list[str] | None:
    """A job's (or [[image.services]]') non-empty ``entrypoint:`` replaces the image's,
    unless the admin disabled that: for the build image and services alike, as on docker."""
    if not wanted:
        return None
    if settings.disable_entrypoint_overwrite:
        say("Entrypoint override disabled")
        return None
    return wanted


def _expand(text: str, variables: dict[str, str]) -> str:
    """$VAR and ${VAR} from the job's variables, as the runner expands service variables."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1) or match.group(2)
        return variables.get(key, "")

    return re.sub(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", value, text)
