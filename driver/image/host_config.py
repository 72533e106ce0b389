"""Which of the admin's [image] container options each container gets, as docker-py arguments.

Pure: settings in, keyword arguments for docker-py's ``APIClient.create_host_config`` out,
so creating a container reads::

    api.create_host_config(
        binds=binds, network_mode=network, **host_config.for_role(settings, "build", image=name)
    )

and the per-job network::

    api.create_network(name, driver="bridge", labels=..., **host_config.network_options(settings))

The scope is the docker executor's (gitlab-runner ``executors/docker/docker.go``):
``createHostConfig`` makes the host config of both the build and the helper ("predefined")
container, ``createHostConfigForService`` that of every service.

=====================================  =========  =========  =========
[image] setting                        build      helper     service
=====================================  =========  =========  =========
shm_size, dns, dns_search, extra_hosts yes        yes        yes
tmpfs                                  yes        yes        no
services_tmpfs                         no         no         yes
memory, memory_swap,                   yes        yes        no [1]
memory_reservation, cpus, cpuset_cpus
devices, oom_kill_disable, ulimit,     yes        yes        no [2]
sysctls, security_opt
services_security_opt                  no         no         yes
privileged                             [3]        no [4]     [5]
cap_add, cap_drop                      yes        no [4]     yes [6]
=====================================  =========  =========  =========

1. gitlab-runner has service_memory, service_cpus, ... for services; the driver has not.
2. Services have their own services_security_opt, as in gitlab-runner.
3. ``privileged``, and only if the image matches ``allowed_privileged_images`` (empty: any).
4. The driver never elevates the helper: it runs only the runner's git, cache and artifact
   stages. (gitlab-runner gives it the build container's privileged, matching
   allowed_privileged_images against the helper's image id, and cap_add/cap_drop.)
5. ``services_privileged`` (unset: ``privileged``), and only if the service's image matches
   ``allowed_privileged_services`` (empty: any).
6. The driver's own choice since image mode began (gitlab-runner gives services no cap_add
   or cap_drop): ``cap_add = ["ALL"]`` is the fallback for dind where the engine refuses
   --privileged.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from driver.image.config import ImageSettings, nano_cpus, parse_memory, parse_ulimit
from driver.image.policy import allowed

Role = Literal["build", "service", "helper"]
ROLES: tuple[Role, ...] = ("build", "service", "helper")
MTU_OPTION = "com.docker.network.driver.mtu"


class Ulimit(TypedDict):
    """What docker-py's create_host_config takes in ``ulimits`` (it makes docker.types.Ulimit)."""

    name: str
    soft: int
    hard: int


class HostConfigArgs(TypedDict, total=False):
    """Keyword arguments of docker-py's ``APIClient.create_host_config``; unset: not passed."""

    privileged: bool
    cap_add: list[str]
    cap_drop: list[str]
    shm_size: int
    dns: list[str]
    dns_search: list[str]
    extra_hosts: list[str]
    tmpfs: dict[str, str]
    mem_limit: int
    memswap_limit: int
    mem_reservation: int
    nano_cpus: int
    cpuset_cpus: str
    devices: list[str]
    oom_kill_disable: bool
    sysctls: dict[str, str]
    ulimits: list[Ulimit]
    security_opt: list[str]


class NetworkArgs(TypedDict, total=False):
    """Keyword arguments of docker-py's ``APIClient.create_network``."""

    options: dict[str, str]


def for_role(settings: ImageSettings, role: Role, *, image: str) -> HostConfigArgs:
    """The host config arguments for one container of a job.

    ``image``: the container's image as the job (or [image]) names it, after variable
    expansion: allowed_privileged_images and allowed_privileged_services match it, as
    gitlab-runner matches them. Not used for the helper.
    """
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    args: HostConfigArgs = {"privileged": privileged(settings, role, image)}
    if role != "helper":
        if settings.cap_add:
            args["cap_add"] = list(settings.cap_add)
        if settings.cap_drop:
            args["cap_drop"] = list(settings.cap_drop)
    # Every container, services too.
    if settings.shm_size:
        args["shm_size"] = settings.shm_size
    if settings.dns:
        args["dns"] = list(settings.dns)
    if settings.dns_search:
        args["dns_search"] = list(settings.dns_search)
    if settings.extra_hosts:
        args["extra_hosts"] = list(settings.extra_hosts)
    if role == "service":
        if settings.services_tmpfs:
            args["tmpfs"] = dict(settings.services_tmpfs)
        if settings.services_security_opt:
            args["security_opt"] = list(settings.services_security_opt)
        return args
    # The build and the helper container: createHostConfig.
    if settings.tmpfs:
        args["tmpfs"] = dict(settings.tmpfs)
    if settings.memory:
        args["mem_limit"] = parse_memory(settings.memory)
    if settings.memory_swap:
        args["memswap_limit"] = parse_memory(settings.memory_swap)
    if settings.memory_reservation:
        args["mem_reservation"] = parse_memory(settings.memory_reservation)
    if settings.cpus:
        args["nano_cpus"] = nano_cpus(settings.cpus)
    if settings.cpuset_cpus:
        args["cpuset_cpus"] = settings.cpuset_cpus
    if settings.devices:
        args["devices"] = list(settings.devices)
    if settings.oom_kill_disable:
        args["oom_kill_disable"] = True
    if settings.sysctls:
        args["sysctls"] = dict(settings.sysctls)
    if settings.ulimit:
        args["ulimits"] = [_ulimit(name, value) for name, value in sorted(settings.ulimit.items())]
    if settings.security_opt:
        args["security_opt"] = list(settings.security_opt)
    return args


def privileged(settings: ImageSettings, role: Role, image: str) -> bool:
    """Whether the container runs --privileged (see the module's table)."""
    if role == "build":
        return settings.privileged and allowed(image, settings.allowed_privileged_images)
    if role == "service":
        wanted = (
            settings.privileged
            if settings.services_privileged is None
            else settings.services_privileged
        )
        return wanted and allowed(image, settings.allowed_privileged_services)
    return False


def network_options(settings: ImageSettings) -> NetworkArgs:
    """The per-job network's driver options: network_mtu (0: the engine's own MTU)."""
    if not settings.network_mtu:
        return {}
    return {"options": {MTU_OPTION: str(settings.network_mtu)}}


def _ulimit(name: str, value: str) -> Ulimit:
    soft, hard = parse_ulimit(value)
    return {"name": name, "soft": soft, "hard": hard}
