"""Prepare's start of a job's containers on its VM's engine, once the machine is ready.

``start`` pulls the images (driver/image/pull.py, with the job's credentials,
sent only to the engine), makes the per-job network, starts the services and
waits for their ports, starts the helper and build containers and records their
names in ``<job dir>/image.json`` for ``run``. ``prestart_helper`` is the warm
pool's part: a ready machine's network and helper, before a job takes it.

The build and helper containers run a "keeper" (driver/image/programs.py): the
image's ENTRYPOINT (or the job's ``entrypoint:``) gets the docker executor's
``sh -c <detect shell>`` as its arguments and the keeper arrives on the container's
stdin (an attach), as a stage's script does on docker, so every entrypoint docker
accepts works; the keeper prints its PID and waits for stages on a FIFO in its
channel dir, a VM dir bound into the container (driver/image/stage.py). Each
stage's pipes are FIFOs there too (made by the VM-side wrapper in
driver/stages/run.py): no ``docker exec`` per stage, which would cost more than the
rest of the stage. A cancel goes to the keeper, which ends the stage's process group
(a ``docker exec`` signals the container's processes only if it does not answer).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypedDict, TypeVar

from driver import log, ssh
from driver.engine import ContainerAPI, Engine, connect, together
from driver.errors import DriverError
from driver.files import write_private
from driver.image import auth, health, helper
from driver.image.binds import MACHINE_LABEL, binds, docker_service, named_volumes, socket_bind
from driver.image.config import ImageSettings, PullPolicy
from driver.image.host_config import Role, network_options
from driver.image.host_config import for_role as host_config_for
from driver.image.plan import ContainerPlan, Plan
from driver.image.programs import (
    COMMAND,
    HELPER_KEEPER,
    KEEPER,
    KEEPER_LABEL,
    KEEPER_MARK,
    digest,
)
from driver.image.pull import ImageUnavailable, Puller
from driver.image.reference import with_tag
from driver.image.stage import CHANNEL_MOUNT, IMAGE_FILE, channel_dir
from driver.settings import Settings
from driver.state import Address, JobDir, MachineDir, StateDir

Say = Callable[[str], None]
InVm = Callable[[str, float, bool], str]

HELPER_REPOSITORY = "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper"
# `docker info` architecture -> the helper image's tag (gitlab-runner's helperimage).
HELPER_ARCH = {"amd64": "x86_64", "aarch64": "arm64", "armv6l": "arm", "armv7l": "arm"}
# The runtime's words for a container whose command cannot run: the image's fault.
_REFUSED_BY_RUNTIME = re.compile(
    r"executable file not found|no such file or directory|permission denied|"
    r"unable to find user|exec format error|OCI runtime",
    re.IGNORECASE,
)
KEEPER_TIMEOUT = 30.0


class Record(TypedDict):
    """``<job dir>/image.json``, which `run` reads every stage (driver/image/stage.py)."""

    build: str
    helper: str
    keepers: dict[str, int]  # container -> its keeper's PID
    services: list[list[str]]  # [container, its aliases joined by "-"]
    debug_services: bool


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
        self.notice: Say = log.stderr  # a block in the job log's stderr, no prefix
        self.network = f"{machine}-network"
        self.images = Puller(
            auth.collect(job_plan.variables, job_plan.credentials, settings.auth_config_file, warn),
            machine=machine,
            say=say,
            warn=warn,
            timeout=settings.pull_timeout,
        )
        self._api: ContainerAPI | None = None
        self.ready_timeout = 120.0
        self.helper_arch = ""  # set when the helper is the default one

    @property
    def api(self) -> ContainerAPI:
        """The engine's client while connected (``start``, ``prestart_helper``)."""
        if self._api is None:
            raise RuntimeError("not connected to the engine")
        return self._api

    @api.setter
    def api(self, client: ContainerAPI) -> None:
        self._api = client

    # --- containers

    def _binds(self) -> list[str]:
        """Every container's (driver/image/binds): one named volume per ``/path``."""
        return binds(self.settings, self.machine, self.builds_dir, self.cache_dir)

    def _volumes(self) -> None:
        """The job's named volumes, labelled as its other objects (an existing one, the
        pool's, is kept: the same name holds the same volume)."""
        for name in named_volumes(self.settings, self.machine):
            self.api.create_volume(name, labels={MACHINE_LABEL: self.machine})

    def _create(
        self,
        name: str,
        spec: ContainerPlan,
        command: list[str] | None,
        *,
        binds: list[str],
        network_aliases: list[str],
        role: Role,
        stdin: str | None = None,
    ) -> str:
        """``role``: which of the admin's container options apply (driver/image/host_config).
        ``stdin``: a program written to the container's stdin once it starts (the keeper)."""
        api = self.api
        host_config = api.create_host_config(
            binds=binds,
            network_mode=self.network,
            **host_config_for(self.settings, role, image=spec.image),
        )
        networking = api.create_networking_config(
            {self.network: api.create_endpoint_config(aliases=network_aliases or None)}
        )
        kwargs: dict[str, object] = {}
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
            labels={
                MACHINE_LABEL: self.machine,
                **({KEEPER_LABEL: digest(stdin)} if stdin is not None else {}),
            },
            host_config=host_config,
            networking_config=networking,
            platform=spec.platform or None,
            **kwargs,
        )
        self._start(str(container["Id"]), stdin)
        return name

    def _start(self, container: str, stdin: str | None) -> None:
        """Start it; with ``stdin``, attached first and written to as the docker executor
        writes a stage's script. The container's stdin stays open (not stdin-once): the
        keeper's shell never reads an end of its program."""
        if stdin is None:
            self.api.start(container)
            return
        sock = self.api.attach_socket(container, params={"stdin": 1, "stream": 1})
        try:
            self.api.start(container)
            sock.sendall(stdin.encode())
        finally:
            sock.close()

    def _create_helper(self, name: str, image: str) -> str:
        return self._create(
            name,
            ContainerPlan(image=image, policies=[]),
            COMMAND,
            binds=[*self._binds(), channel_bind(name)],
            network_aliases=[],
            role="helper",
            stdin=HELPER_KEEPER,
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
                labels={MACHINE_LABEL: self.machine},
                **network_options(self.settings),
            )

    def _pooled_helper(self, name: str) -> str:
        """The image id of a helper the pool started, if it is running what this job's
        would run (image, command, keeper, binds); "" if none. A stale one is removed."""
        from docker.errors import NotFound

        try:
            info = self.api.inspect_container(name)
        except NotFound:
            return ""
        same = (
            info["State"].get("Running")
            and info["Config"].get("Image") == with_tag(self.plan.helper_image)
            and info["Config"].get("Cmd") == COMMAND
            and (info["Config"].get("Labels") or {}).get(KEEPER_LABEL) == digest(HELPER_KEEPER)
            and info["HostConfig"].get("Binds") == [*self._binds(), channel_bind(name)]
        )
        if same:
            return str(info["Image"])
        self.api.remove_container(name, force=True)
        return ""

    def _ensure(self, image: str, policies: list[PullPolicy], platform: str) -> None:
        """The image on the engine; the default helper from the runner host's prebuilt
        tarball when the engine lacks it (driver/image/helper.py), before any pull."""
        if image == self.plan.helper_image and self.helper_arch:
            tarball = helper.prebuilt_tarball(self.settings.helper_images_dir, self.helper_arch)
            if helper.load_default(self.api, with_tag(image), tarball, self.say, self.warn):
                self.images.pulled.add(with_tag(image))
                return
        self.images.ensure(self.api, image, policies, platform)

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
                    hint="the container runs the docker executor's `sh -c <detect shell>` "
                    "after its ENTRYPOINT and gets its program on stdin, as on docker: the "
                    "image needs `sh`, and its ENTRYPOINT must run its arguments or a shell "
                    "reading stdin (the docker executor fails the same way); the job's "
                    '`entrypoint:` can replace it (`[""]`: none)',
                )
            time.sleep(0.05)

    def start(self, in_vm: InVm) -> Record:
        """Everything on the engine; returns what image.json records.

        ``in_vm(remote command, timeout, check)`` runs a command in the VM (its stdout).
        """
        self.api = connect(self.engine, self.settings.pull_timeout, self.ready_timeout)
        try:
            # CI_DEBUG_SERVICES: every stage follows the services' output into the job log
            # (driver/stages/run.py), the first from their start.
            return self._containers(in_vm)
        finally:
            self.api.close()

    def _containers(self, in_vm: InVm) -> Record:
        """Rounds, each all at once: images, channels, network and volumes; then the
        containers, the build's once the services are up (as on docker, where it is made
        at the first build stage: an entrypoint may look for them, as docker:cli's looks
        for the certificates docker:dind writes into the shared /certs/client)."""
        api, job = self.api, self.plan
        if not job.helper_image:
            arch = str(api.info().get("Architecture", "amd64"))
            self.helper_arch = HELPER_ARCH.get(arch, arch)
            job.helper_image = f"{HELPER_REPOSITORY}:{self.helper_arch}-v{job.runner_version}"
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
        together(
            *(partial(self._ensure, *use) for use in images.values()),
            partial(make_channels, in_vm, [build] if pooled else [helper, build]),
            partial(self._network),
            partial(self._volumes),
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
        socket = socket_bind(self.settings, job)  # the VM's own engine: the VM is the boundary
        if socket:
            build_binds.append(socket)
        elif self.settings.docker_socket and (dind := docker_service(job.services)):
            self.say(
                f"Not binding the VM's Docker socket into the build container: service "
                f"{dind.name} provides Docker (as on the docker executor)"
            )
        create_build = partial(
            self._create,
            build,
            job.build,
            COMMAND,
            binds=build_binds,
            network_aliases=["build"],
            role="build",
            stdin=KEEPER,
        )
        records = [[name, "-".join(s.aliases)] for name, s in services]
        starting(
            *(
                partial(
                    self._create,
                    name,
                    service,
                    service.command,
                    binds=binds,
                    network_aliases=service.aliases,
                    role="service",
                )
                for name, service in services
            ),
            *([] if pooled else [partial(self._create_helper, helper, job.helper_image)]),
            *([] if services else [create_build]),
        )
        if services:
            # docker:cli's entrypoint reads dind's certificates once, at start: the build
            # container starts after the services are up, as on the docker executor.
            self._wait_for_services(records, in_vm)
            starting(create_build)
        helper_pid, build_pid = together(
            partial(self._keeper_pid, helper), partial(self._keeper_pid, build)
        )
        return {
            "build": build,
            "helper": helper,
            "keepers": {helper: helper_pid, build: build_pid},
            "services": records,
            "debug_services": job.debug_services,
        }

    # --- services' health, from the VM (container addresses are only reachable there)

    def _wait_for_services(self, services: list[list[str]], in_vm: InVm) -> None:
        health.wait(
            self.api,
            self.network,
            services,
            self.settings.wait_for_services_timeout,
            in_vm,
            self.say,
            self.notice,
        )


T = TypeVar("T")


def starting(*calls: Callable[[], T]) -> list[T]:
    """``together``, for the calls that create and start containers: the engine refusing
    one (a shell-less image, a bad entrypoint path, an unknown user) gives the daemon's
    own message, as a job failure: a new VM would refuse it the same way."""
    from docker.errors import APIError

    try:
        return together(*calls)
    except APIError as e:
        message = str(e.explanation or e)
        if (e.status_code or 500) < 500 or _REFUSED_BY_RUNTIME.search(message):
            raise ImageUnavailable(
                f"the job's containers could not start: {message}",
                hint="the image needs `sh` on its PATH, and an ENTRYPOINT (or the job's "
                "`entrypoint:`) that exists and runs its arguments, as on the docker executor",
            ) from None
        raise DriverError(
            f"the VM's Docker engine could not start the job's containers: {message}",
            hint="the VM's engine may be failing; the runner retries the job on a new VM",
        ) from None


def prestart_helper(
    settings: Settings,
    machine_dir: MachineDir,
    address: Address,
    machine: str,
    url: Callable[[], str],
) -> bool:
    """The pool's part: a ready machine's per-job network, helper channel and helper
    container, started before a job takes it (none of it depends on the job when
    [image] helper_image names an image without variables). Prepare checks it is still
    what the job would start, else starts its own. False: nothing to do here."""
    image = settings.image
    if not image.container_mode or not image.helper_image or "$" in image.helper_image:
        return False
    engine = _engine(address, url)
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

    starter.api = connect(engine, image.pull_timeout, settings.docker.ready_timeout)
    try:
        name = f"{machine}-helper"
        together(partial(make_channels, in_vm, [name]), starter._network, starter._volumes)
        starter._create_helper(name, helper)
        starter._keeper_pid(name)
    finally:
        starter.api.close()
    return True


def _engine(address: Address, url: Callable[[], str]) -> Engine:
    return Engine(
        url=address.engine_url or url(),
        ca_cert=address.ca_cert,
        client_cert=address.client_cert,
        client_key=address.client_key,
    )


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


def write_record(job_dir: Path, record: Record) -> None:
    """``<job dir>/image.json``, 0600, replaced atomically: `run` reads it every stage."""
    write_private(job_dir / IMAGE_FILE, json.dumps(record))


def start(
    settings: Settings,
    job_dir: JobDir,
    job_plan: Plan,
    machine: str,
    address: Address,
    url: Callable[[], str],
    say: Say,
    warn: Say,
) -> None:
    """Prepare's call once the machine is ready: containers up, image.json written.

    ``address``: the machine's engine URL and TLS files; ``url()`` asks docker-machine
    for the engine's URL when the address does not hold it yet.
    """
    step = time.monotonic()
    engine = _engine(address, url)
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
    write_record(job_dir.path, record)
    # What this job ran: the pool learns the most used and pulls them (driver/image/learn).
    used = [job_plan.helper_image, job_plan.build.image, *(s.image for s in job_plan.services)]
    StateDir(Path(settings.state_dir)).note_images(list(dict.fromkeys(map(with_tag, used))))
    say(f"Job containers are up ({time.monotonic() - step:.2f}s)")
