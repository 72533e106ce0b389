"""Prepare's part of image mode: plan the job's containers, then start them in its VM.

``plan`` runs before any machine exists, so a refused image costs no VM.
``start`` runs once the VM is ready: it pulls the images (with the job's
credentials, sent only to the engine), makes the per-job network, starts the
services and waits for their ports, starts the helper and build containers
and records their names in ``<job dir>/image.json`` for ``run``.

The build and helper containers run a "keeper": the image's ENTRYPOINT (or
the job's ``entrypoint:``) with ``sh -c <keeper>`` as its arguments, as the
docker executor passes ``sh -c <detect shell>``; the keeper prints its PID and
waits for stages on a FIFO in its channel dir, a VM dir bound into the container
(driver/image/stage.py). Each stage's pipes are FIFOs there too (made by the
VM-side wrapper in driver/stages/run.py): no ``docker exec`` per stage, which
would cost more than the rest of the stage. A cancel stops every process in the
container but PID 1 and the keeper.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from driver.contract import JOB_VARIABLE_PREFIX, RESPONSE_FILE_ENV
from driver.errors import DriverError, JobError
from driver.image import aliases, auth, policy
from driver.image.config import ImageSettings, PullPolicy, parse_volume
from driver.image.payload import Credential, ImageSpec, ImageVariable
from driver.image.policy import ImageRefused
from driver.image.stage import CHANNEL_MOUNT, IMAGE_FILE, channel_dir

Say = Callable[[str], None]
InVm = Callable[[str, float, bool], str]

HELPER_REPOSITORY = "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper"
# `docker info` architecture -> the helper image's tag (gitlab-runner's helperimage).
HELPER_ARCH = {"amd64": "x86_64", "aarch64": "arm64", "armv6l": "arm", "armv7l": "arm"}
DOCKER_SOCKET = "/var/run/docker.sock"
KEEPER_MARK = "gmd-keeper"
# The docker executor's detect script: the first shell found reads the stage from stdin.
# Through setsid where the image has it: the stage gets its own process group, so a
# script's `kill 0` (a common cleanup trap) cannot take the keeper with it.
DETECT_SHELL = (
    "for s in /usr/local/bin/bash /usr/bin/bash /bin/bash /usr/local/bin/sh /usr/bin/sh "
    "/bin/sh /busybox/sh; do if [ -x $s ]; then exec $g $s; fi; done; "
    "echo shell not found >&2; exit 1"
)


def keeper(channel: str = CHANNEL_MOUNT) -> str:
    """Run each stage whose token arrives on <channel>/ctl, one at a time (POSIX sh).

    The stage runs in a foreground command substitution, not `&`: an asynchronous list
    would start with SIGINT and SIGQUIT ignored, for good. Its FIFOs open first (the
    wrapper in the VM waits for "started" on rc to know they are open), then its exit
    code is written to rc. No channel (not bound): wait on the container's stdin, which
    never delivers.

    The substitution prints its PID (the stage's process group under setsid), then execs
    the shell; once the shell exits, what is left in that group is killed, as docker
    ends a container with its shell. Else a background process still holding the
    stage's output keeps the stage open, even one the script's `trap 'kill 0' EXIT`
    meant to end: bash loses a SIGTERM that reaches its forked child before the exec.
    """
    return (
        f'echo "{KEEPER_MARK} $$"; d={channel} g=\n'
        "if command -v setsid >/dev/null 2>&1; then g=setsid; fi\n"
        'while [ -p "$d/ctl" ]; do\n'
        '  IFS= read -r t < "$d/ctl" || continue\n'
        '  case $t in "" | *[!0-9a-f]*) continue;; esac\n'
        "  c=$d/$t\n"
        '  (exec 9> "$c.rc" < "$c.in" 3> "$c.out" 2> "$c.err"; echo started >&9\n'
        '   p=$(p=; read -r p _ 2>/dev/null < /proc/self/stat; echo "$p"\n'
        f"     exec >&3 3>&- 9>&-; {DETECT_SHELL}); rc=$?\n"
        '   if [ -n "$g" ] && [ -n "$p" ]; then kill -KILL -"$p" 2>/dev/null; fi\n'
        "   echo $rc >&9)\n"
        "done\n"
        "read -r _\n"
    )


KEEPER = keeper()
# The helper image has gitlab-runner-helper; the runner's scripts call gitlab-runner.
# umask 0000 as the helper's gitlab-runner-build sets it: a non-root build image can
# write to the clone, caches and artifacts.
HELPER_KEEPER = (
    "command -v gitlab-runner >/dev/null 2>&1 || { h=$(command -v gitlab-runner-helper) && "
    'mkdir -p /usr/local/bin && ln -sf "$h" /usr/local/bin/gitlab-runner; }; umask 0000; ' + KEEPER
)
KEEPER_TIMEOUT = 30.0
MAX_HEALTH_PORTS = 20
HEALTHCHECK_PORT_VARIABLE = "HEALTHCHECK_TCP_PORT"
DEBUG_SERVICES_VARIABLE = "CI_DEBUG_SERVICES"
SERVICE_LOG_BYTES = 64 * 1024
# API 1.41 (Docker 20.10) for `platform` on create; newer engines speak it too.
API = "1.41"
_JOB_FAULT = re.compile(
    r"not found|manifest unknown|pull access denied|unauthorized|authentication required|"
    r"no basic auth credentials|denied|invalid reference format|repository name must",
    re.IGNORECASE,
)
# Runs in the VM (bash): for each "index:ip:port,port" print "up <index>" once any port
# accepts a connection; stop at the deadline (the caller warns about the others).
WAIT_PORTS = r"""
end=$((SECONDS + $1)); shift; left="$*"
while :; do
  next=""
  for e in $left; do
    IFS=: read -r i ip ports <<< "$e"
    up=""
    for p in ${ports//,/ }; do
      if (exec 3<>"/dev/tcp/$ip/$p") 2>/dev/null; then up=1; break; fi
    done
    if [ -n "$up" ]; then echo "up $i"; else next="$next $e"; fi
  done
  left=$next
  if [ -z "${left// /}" ] || [ $SECONDS -ge $end ]; then exit 0; fi
  sleep 1
done
"""
assert "'" not in WAIT_PORTS


class ImageUnavailable(ImageRefused):
    """The image cannot be had (missing, refused by the registry): the job's to fix."""


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


@dataclass(frozen=True)
class Engine:
    """Where the VM's engine answers, and the TLS files docker-machine made for it."""

    url: str
    ca_cert: str
    client_cert: str
    client_key: str


def load_payload(path: str | None = None) -> Any:
    from pydantic import ValidationError

    from driver.payload import JobResponse

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
    payload: Any = None,
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
    entrypoint = spec.entrypoint if spec.entrypoint and spec.name else None
    if entrypoint is not None and settings.disable_entrypoint_overwrite:
        say("Entrypoint override disabled")
        entrypoint = None
    build = ContainerPlan(
        image=name,
        policies=policy.pull_policies(name, spec.pull_policy if spec.name else None, settings),
        entrypoint=entrypoint,
        user=policy.build_user(str(options.get("user") or ""), settings),
        platform=str(options.get("platform") or ""),
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
    warm_up()  # the SDK loads while the machine is claimed or created
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
    payload: Any, environ: Mapping[str, str]
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
                entrypoint=spec.entrypoint or None,
                command=spec.command or None,
                user=str(options.get("user") or ""),
                platform=str(options.get("platform") or ""),
                environment=environment,
                aliases=names,
            )
        )
    return result


def _expand(text: str, variables: dict[str, str]) -> str:
    """$VAR and ${VAR} from the job's variables, as the runner expands service variables."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1) or match.group(2)
        return variables.get(key, "")

    return re.sub(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", value, text)


def with_tag(image: str) -> str:
    """`:latest` when the name has neither tag nor digest, as docker pulls it."""
    last = image.rsplit("/", 1)[-1]
    return image if ("@" in image or ":" in last) else f"{image}:latest"


# --- on the VM's engine -------------------------------------------------------------------


def _connect(engine: Engine, timeout: float, ready_timeout: float) -> Any:
    """One API client at a fixed API version (no version negotiation: a round trip and a
    second TLS handshake saved on every prepare); waits for the engine to answer."""
    import docker
    from requests.exceptions import RequestException

    tls = docker.tls.TLSConfig(
        client_cert=(engine.client_cert, engine.client_key), ca_cert=engine.ca_cert, verify=True
    )
    api = docker.APIClient(base_url=engine.url, tls=tls, timeout=int(timeout), version=API)
    # Neither a CA bundle nor a proxy from our environment belongs between us and the VM.
    api.trust_env = False
    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            api.ping()
            return api
        except docker.errors.APIError as e:
            api.close()
            if "too new" in str(e) or e.status_code == 400:
                raise DriverError(
                    f"the VM's Docker engine does not speak API {API}: {_first(e)}; image "
                    "mode needs Docker 20.10 or newer",
                    hint="provision VMs with a newer Docker ([machine] engine_install_url)",
                ) from None
            failure: Exception = e
        except (docker.errors.DockerException, RequestException, OSError) as e:
            failure = e
        if time.monotonic() > deadline:
            api.close()
            raise DriverError(
                f"the VM's Docker engine at {engine.url} did not answer within "
                f"{ready_timeout:g}s: {_first(failure)}",
                hint="image mode needs the engine docker-machine set up in the VM",
            )
        time.sleep(0.5)


def warm_up() -> None:
    """Import the docker SDK in the background (a third of a second, more on a busy host)
    while prepare claims or creates the machine; `_connect` then finds it imported."""
    import threading

    def load() -> None:
        with contextlib.suppress(Exception):  # the real import, in _connect, will say why
            import docker  # noqa: F401

    threading.Thread(target=load, name="docker-sdk-import", daemon=True).start()


def _together(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at once (each mostly waits on the engine or ssh); their results in
    order, or the first failure in that order once all have ended."""
    import threading

    results: list[Any] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            results[index] = call()
        except BaseException as e:  # handed to the caller below
            errors[index] = e

    threads = [
        threading.Thread(target=run, args=(i, call), daemon=True) for i, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # interruptible: a cancel's SIGTERM still raises in this thread
    for error in errors:
        if error is not None:
            raise error
    return results


class Starter:
    """One job's containers on its VM's engine."""

    def __init__(
        self,
        settings: ImageSettings,
        job_plan: Plan,
        *,
        machine: str,
        engine: Engine,
        builds_dir: str,
        cache_dir: str,
        say: Say,
        warn: Say,
    ) -> None:
        self.settings = settings
        self.plan = job_plan
        self.machine = machine
        self.engine = engine
        self.builds_dir = builds_dir
        self.cache_dir = cache_dir
        self.say = say
        self.warn = warn
        self.network = f"{machine}-network"
        self.pulled: set[str] = set()
        self.credentials = auth.collect(
            job_plan.variables, job_plan.credentials, settings.auth_config_file, warn
        )
        self.api: Any = None
        self.ready_timeout = 120.0

    # --- images

    def ensure_image(self, image: str, policies: Sequence[PullPolicy], platform: str) -> None:
        from docker.errors import DockerException, ImageNotFound

        ref = with_tag(image)
        if ref in self.pulled:
            return
        self.say(f"Using effective pull policy of [{', '.join(policies)}] for container {ref}")
        failure: Exception | None = None
        for attempt, pull_policy in enumerate(policies, start=1):
            if attempt > 1:
                self.say(f'Attempt #{attempt}: Trying "{pull_policy}" pull policy')
            try:
                if pull_policy != "always":
                    try:
                        self.api.inspect_image(ref)
                        self.say(f"Using locally found image {ref}")
                        self.pulled.add(ref)
                        return
                    except ImageNotFound:
                        if pull_policy == "never":
                            raise ImageUnavailable(
                                f'image "{ref}" is not on the machine and its pull policy is '
                                '"never"',
                                hint='use pull_policy "if-not-present" or "always", or have '
                                "the runner's admin pre-pull it ([pool] images)",
                            ) from None
                self._pull(ref, platform)
                self.pulled.add(ref)
                return
            except (ImageRefused, DriverError, DockerException) as e:
                failure = e
                if len(policies) > attempt:
                    self.warn(f'Failed to pull image with policy "{pull_policy}": {_first(e)}')
        assert failure is not None
        raise failure

    def _pull(self, ref: str, platform: str) -> None:
        from docker.errors import DockerException

        login = self.credentials.for_image(ref)
        if login is not None:
            self.say(f"Authenticating with credentials from {login.source}")
        self.say(f"Pulling docker image {ref} ...")
        repository, tag = _split_reference(ref)
        error = ""
        try:
            for event in self.api.pull(
                repository,
                tag=tag,
                stream=True,
                decode=True,
                auth_config=login.auth_config() if login else None,
                platform=platform or None,
            ):
                if isinstance(event, dict) and event.get("error"):
                    error = str(event["error"])
        except DockerException as e:
            error = _first(e)
        if not error:
            image = self.api.inspect_image(ref)
            self.say(f"Using docker image {image.get('Id', '?')} for {ref} ...")
            return
        if _JOB_FAULT.search(error):
            raise ImageUnavailable(
                f"pulling image {ref} failed: {error}",
                hint="check the image's name and tag, and the registry credentials "
                "(DOCKER_AUTH_CONFIG, or the job token for GitLab's registry)",
            )
        raise DriverError(
            f"pulling image {ref} into {self.machine} failed: {error}",
            hint="the registry may be unreachable from the VM; the runner may retry the job",
        )

    # --- containers

    def _binds(self) -> list[str]:
        binds = [f"{self.builds_dir}:{self.builds_dir}:rw", f"{self.cache_dir}:{self.cache_dir}:rw"]
        for volume in self.settings.volumes:
            host, target, mode = parse_volume(volume)
            if host is not None:
                binds.append(f"{host}:{target}:{mode}")
        return binds

    def _anonymous_volumes(self) -> list[str]:
        return [t for h, t, _ in map(parse_volume, self.settings.volumes) if h is None]

    def _create(
        self,
        name: str,
        spec: ContainerPlan,
        command: list[str] | None,
        *,
        binds: list[str],
        network_aliases: list[str],
        elevated: bool,
    ) -> str:
        """``elevated``: the admin's privileged, cap_add and cap_drop apply (not the helper)."""
        api = self.api
        settings = self.settings
        host_config = api.create_host_config(
            binds=binds,
            privileged=elevated and settings.privileged,
            cap_add=list(settings.cap_add) if elevated and settings.cap_add else None,
            cap_drop=list(settings.cap_drop) if elevated and settings.cap_drop else None,
            network_mode=self.network,
        )
        networking = api.create_networking_config(
            {self.network: api.create_endpoint_config(aliases=network_aliases or None)}
        )
        kwargs: dict[str, Any] = {}
        if spec.entrypoint is not None:
            kwargs["entrypoint"] = spec.entrypoint
        container = api.create_container(
            with_tag(spec.image),
            command=command,
            name=name,
            hostname=self.machine,
            user=spec.user or None,
            environment=[f"{k}={v}" for k, v in spec.environment.items()],
            stdin_open=True,
            tty=False,
            volumes=self._anonymous_volumes() or None,
            labels={"gitlab-machine-driver.machine": self.machine},
            host_config=host_config,
            networking_config=networking,
            platform=spec.platform or None,
            **kwargs,
        )
        api.start(container["Id"])
        return name

    def _create_helper(self, name: str, image: str) -> str:
        return self._create(
            name,
            ContainerPlan(image=image, policies=[]),
            ["sh", "-c", HELPER_KEEPER],
            binds=[*self._binds(), channel_bind(name)],
            network_aliases=[],
            elevated=False,
        )

    def _network(self) -> None:
        """The per-job network, unless the pool made it (one name, one network)."""
        from docker.errors import NotFound

        try:
            self.api.inspect_network(self.network)
        except NotFound:
            self.api.create_network(
                self.network,
                driver="bridge",
                labels={"gitlab-machine-driver.machine": self.machine},
            )

    def _pooled_helper(self, name: str) -> str:
        """The image id of a helper the pool started, if it is running what this job's
        would run (image, command, binds); "" if none. A stale one is removed."""
        from docker.errors import NotFound

        try:
            info = self.api.inspect_container(name)
        except NotFound:
            return ""
        same = (
            info["State"].get("Running")
            and info["Config"].get("Image") == with_tag(self.plan.helper_image)
            and info["Config"].get("Cmd") == ["sh", "-c", HELPER_KEEPER]
            and info["HostConfig"].get("Binds") == [*self._binds(), channel_bind(name)]
        )
        if same:
            return str(info["Image"])
        self.api.remove_container(name, force=True)
        return ""

    def _keeper_pid(self, name: str) -> int:
        """The keeper's PID in its container, which it prints first thing."""
        deadline = time.monotonic() + KEEPER_TIMEOUT
        while True:
            logs = self.api.logs(name, stdout=True, stderr=True).decode("utf-8", "replace")
            found = re.search(rf"^{KEEPER_MARK} (\d+)$", logs, re.MULTILINE)
            if found:
                return int(found.group(1))
            state = self.api.inspect_container(name)["State"]
            if not state.get("Running") or time.monotonic() > deadline:
                why = "exited" if not state.get("Running") else "did not start its command"
                raise ImageUnavailable(
                    f"container {name} ({self.api.inspect_container(name)['Config']['Image']}) "
                    f"{why} (exit code {state.get('ExitCode')}); its output:\n"
                    + "\n".join(logs.splitlines()[-20:]),
                    hint="the image needs `sh`, and its ENTRYPOINT must run its arguments "
                    "(as on the docker executor); the job's `entrypoint:` can replace it",
                )
            time.sleep(0.05)

    def start(self, in_vm: InVm) -> dict[str, Any]:
        """Everything on the engine; returns what image.json records.

        ``in_vm(remote command, timeout, check)`` runs a command in the VM (its stdout).
        """
        self.api = _connect(self.engine, self.settings.pull_timeout, self.ready_timeout)
        try:
            record = self._containers(in_vm)
            self._wait_for_services(record["services"], in_vm)
            # CI_DEBUG_SERVICES: every stage follows the services' output into the job log
            # (driver/stages/run.py), the first from their start.
            return record
        finally:
            self.api.close()

    def _containers(self, in_vm: InVm) -> dict[str, Any]:
        """Two rounds, each all at once: images, channels and network; then containers."""
        api, job = self.api, self.plan
        if not job.helper_image:
            arch = str(api.info().get("Architecture", "amd64"))
            job.helper_image = (
                f"{HELPER_REPOSITORY}:{HELPER_ARCH.get(arch, arch)}-v{job.runner_version}"
            )
        self.say(f"Using docker image {job.build.image} for the job's scripts")
        helper, build = f"{self.machine}-helper", f"{self.machine}-build"
        # An image used twice in a job is pulled once, under its first use's policy.
        images: dict[str, tuple[str, list[PullPolicy], str]] = {}
        uses = [
            (job.helper_image, job.helper_policies, ""),
            (job.build.image, job.build.policies, job.build.platform),
        ]
        uses += [(s.image, s.policies, s.platform) for s in job.services]
        for image, policies, platform in uses:
            images.setdefault(with_tag(image), (image, policies, platform))
        pooled = self._pooled_helper(helper)  # the pool may have started it already
        _together(
            *(partial(self.ensure_image, *use) for use in images.values()),
            partial(make_channels, in_vm, [build] if pooled else [helper, build]),
            partial(self._network),
        )
        if pooled and pooled != api.inspect_image(with_tag(job.helper_image))["Id"]:
            api.remove_container(helper, force=True)  # pulled anew since: start it afresh
            make_channels(in_vm, [helper])
            pooled = ""
        if pooled:
            self.say(f"Using the helper container the warm pool started ({helper})")
        services = [(f"{self.machine}-svc-{i}", s) for i, s in enumerate(job.services)]
        for _, service in services:
            self.say(f"Starting service {service.name}...")
        binds = self._binds()
        build_binds = [*binds, channel_bind(build)]
        if self.settings.docker_socket:  # the VM's own engine: the VM is the boundary
            build_binds.append(f"{DOCKER_SOCKET}:{DOCKER_SOCKET}")
        _together(
            *(
                partial(
                    self._create,
                    name,
                    service,
                    service.command,
                    binds=binds,
                    network_aliases=service.aliases,
                    elevated=True,
                )
                for name, service in services
            ),
            *([] if pooled else [partial(self._create_helper, helper, job.helper_image)]),
            partial(
                self._create,
                build,
                job.build,
                ["sh", "-c", KEEPER],
                binds=build_binds,
                network_aliases=["build"],
                elevated=True,
            ),
        )
        helper_pid, build_pid = _together(
            partial(self._keeper_pid, helper), partial(self._keeper_pid, build)
        )
        return {
            "build": build,
            "helper": helper,
            "keepers": {helper: helper_pid, build: build_pid},
            "services": [[name, "-".join(s.aliases)] for name, s in services],
            "debug_services": job.debug_services,
        }

    # --- services' health, from the VM (container addresses are only reachable there)

    def _wait_for_services(self, services: list[list[str]], in_vm: InVm) -> None:
        timeout = self.settings.wait_for_services_timeout
        if not services or timeout < 0:
            return
        timeout = timeout or 30.0
        targets = self.health_targets(services)
        if not targets:
            return
        self.say(f"Waiting for services to be up and running (timeout {timeout:g} seconds)...")
        entries = " ".join(f"{i}:{ip}:{','.join(map(str, ports))}" for i, ip, ports in targets)
        output = in_vm(f"bash -c '{WAIT_PORTS}' gmd-wait {int(timeout)} {entries}", timeout, False)
        up = {int(line.split()[1]) for line in output.splitlines() if line.startswith("up ")}
        for index, ip, ports in targets:
            if index in up:
                continue
            name = services[index][0]
            self.warn(
                f"Service {name} probably didn't start properly.\n"
                f"Health check error: no answer on {ip} port(s) "
                f"{', '.join(map(str, ports))} within {timeout:g}s\n"
                "Service container logs:\n" + service_logs(self.api, name).rstrip()
            )

    def health_targets(self, services: list[list[str]]) -> list[tuple[int, str, list[int]]]:
        targets = []
        for index, (name, _) in enumerate(services):
            info = self.api.inspect_container(name)
            if not info["State"].get("Running"):
                continue
            network = info["NetworkSettings"]["Networks"].get(self.network) or {}
            env = dict(e.split("=", 1) for e in info["Config"].get("Env") or [] if "=" in e)
            if env.get(HEALTHCHECK_PORT_VARIABLE, "").isdigit():
                ports = [int(env[HEALTHCHECK_PORT_VARIABLE])]
            else:
                exposed = info["Config"].get("ExposedPorts") or {}
                ports = sorted(int(p.split("/")[0]) for p in exposed if p.endswith("/tcp"))
            if ports and network.get("IPAddress"):
                targets.append((index, network["IPAddress"], ports[:MAX_HEALTH_PORTS]))
        return targets


def prestart_helper(
    settings: Any, machine_dir: Any, address: Any, machine: str, url: Callable[[], str]
) -> bool:
    """The pool's part: a ready machine's per-job network, helper channel and helper
    container, started before a job takes it (none of it depends on the job when
    [image] helper_image names an image without variables). Prepare checks it is still
    what the job would start, else starts its own. False: nothing to do here."""
    from driver import ssh

    image = settings.image
    if not image.container_mode or not image.helper_image or "$" in image.helper_image:
        return False
    engine = Engine(
        address.engine_url or url(), address.ca_cert, address.client_cert, address.client_key
    )
    helper = image.helper_image
    plan = Plan(
        build=ContainerPlan(image=helper, policies=[]),
        services=[],
        helper_image=helper,
        helper_policies=[],
        runner_version="",
        variables={},
        credentials=[],
        debug_services=False,
    )
    starter = Starter(
        image,
        plan,
        machine=machine,
        engine=engine,
        builds_dir=settings.builds_dir,
        cache_dir=settings.cache_dir,
        say=lambda _: None,
        warn=lambda _: None,
    )

    def in_vm(command: str, timeout: float, check: bool) -> str:
        return str(ssh.run(machine_dir, command, timeout=timeout + 15, check=check).stdout)

    starter.api = _connect(engine, image.pull_timeout, settings.docker.ready_timeout)
    try:
        name = f"{machine}-helper"
        _together(partial(make_channels, in_vm, [name]), starter._network)
        starter._create_helper(name, helper)
        starter._keeper_pid(name)
    finally:
        starter.api.close()
    return True


def make_channels(in_vm: InVm, containers: Sequence[str]) -> None:
    """Each keeper's channel dir in the VM, owned by the SSH user: 0711, so nobody but
    that user lists the stage tokens in it, with the keeper's `ctl` FIFO."""
    dirs = [channel_dir(name) for name in containers]
    in_vm(
        " && ".join(f"rm -rf {d} && mkdir -m 711 {d} && mkfifo -m 644 {d}/ctl" for d in dirs),
        30.0,
        True,
    )


def channel_bind(container: str) -> str:
    return f"{channel_dir(container)}:{CHANNEL_MOUNT}:ro"


def service_logs(api: Any, name: str, limit: int = SERVICE_LOG_BYTES) -> str:
    data: bytes = api.logs(name, stdout=True, stderr=True)
    return data[-limit:].decode("utf-8", "replace")


def _split_reference(ref: str) -> tuple[str, str | None]:
    if "@" in ref:
        return ref, None
    repository, _, tag = ref.rpartition(":")
    return repository, tag


def _first(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.splitlines()[0] if text else type(error).__name__


def write_record(job_dir: Path, record: dict[str, Any]) -> None:
    """``<job dir>/image.json``, 0600, replaced atomically: `run` reads it every stage."""
    path = job_dir / IMAGE_FILE
    tmp = path.with_name(f".{IMAGE_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def start(
    settings: Any,
    job_dir: Any,
    job_plan: Plan,
    machine: str,
    address: Any,
    url: Callable[[], str],
    say: Say,
    warn: Say,
) -> None:
    """Prepare's call once the machine is ready: containers up, image.json written.

    ``settings``: driver.settings.Settings; ``job_dir``: the job's state dir (``.path``);
    ``address``: the machine's engine URL and TLS files; ``url()`` asks docker-machine
    for the engine's URL when the address does not hold it yet.
    """
    from driver import ssh
    from driver.state import StateDir

    step = time.monotonic()
    engine = Engine(
        url=address.engine_url or url(),
        ca_cert=address.ca_cert,
        client_cert=address.client_cert,
        client_key=address.client_key,
    )
    starter = Starter(
        settings.image,
        job_plan,
        machine=machine,
        engine=engine,
        builds_dir=settings.builds_dir,
        cache_dir=settings.cache_dir,
        say=say,
        warn=warn,
    )

    def run_in_vm(command: str, timeout: float, check: bool) -> str:
        return str(
            ssh.run(
                job_dir,
                command,
                timeout=timeout + 15,
                check=check,
                what="preparing the job's containers in the VM",
            ).stdout
        )

    starter.ready_timeout = settings.docker.ready_timeout
    record = starter.start(run_in_vm)
    write_record(Path(job_dir.path), record)
    # What this job ran: the pool learns the most used and pulls them (driver/image/learn).
    used = [job_plan.helper_image, job_plan.build.image, *(s.image for s in job_plan.services)]
    StateDir(Path(settings.state_dir)).note_images(list(dict.fromkeys(map(with_tag, used))))
    say(f"Job containers are up ({time.monotonic() - step:.2f}s)")
