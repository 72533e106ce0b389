"""The admin's ``[image]`` section: where jobs run and what they may use.

Kept apart from driver.settings (which imports it) so image mode's settings
live beside its code. Shell mode stays the default: an existing config file
keeps running every job in the VM's shell until the admin sets
``mode = "container"``.
"""

from __future__ import annotations

import ipaddress
import re
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

PullPolicy = Literal["always", "if-not-present", "never"]
PULL_POLICIES: tuple[PullPolicy, ...] = ("always", "if-not-present", "never")
# docker's own volume syntax: "/ctr" (a volume) or "host:ctr[:ro|rw]" (a bind mount).
VOLUME = re.compile(r"^(/[^:]*)(?::(/[^:]*))?(?::(ro|rw))?$")
# docker's size strings, as gitlab-runner reads memory* (go-units RAMInBytes): binary units.
MEMORY_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_MEMORY_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
# The engine's names (go-units ulimit names).
ULIMIT_NAMES = (
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
    "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
)  # fmt: skip
ULIMIT = re.compile(r"^(-?\d+)(?::(-?\d+))?$")
# The keys the engine accepts in --security-opt (daemon parseSecurityOpt).
SECURITY_OPT_KEYS = ("label", "apparmor", "seccomp", "no-new-privileges", "writable-cgroups")
CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
DEVICE_PERMISSIONS = re.compile(r"^[rwm]{1,3}$")
SYSCTL = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-/]+)+$")


class _Section(BaseModel):
    # As driver.settings.Section: a typo is an error, not an ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceSettings(_Section):
    """One of [[image.services]]: started for every job, like [[runners.docker.services]]."""

    name: str
    alias: str = ""  # several separated by commas or spaces
    command: list[str] = []
    entrypoint: list[str] = []
    environment: list[str] = []  # "KEY=VALUE", as [[runners.docker.services]] writes them

    @field_validator("environment")
    @classmethod
    def _key_value(cls, environment: list[str]) -> list[str]:
        for entry in environment:
            if "=" not in entry or entry.startswith("="):
                raise ValueError(f"{entry!r} must be KEY=VALUE")
        return environment


class ImageSettings(_Section):
    # "shell": every job in the VM's shell (the original mode, the default).
    # "container": as docker+machine: the job's image:, else `default`; with `default`
    # empty, jobs that name no image keep running in the VM's shell.
    mode: Literal["shell", "container"] = "shell"
    default: str = ""  # [runners.docker] image
    # [runners.docker] helper_image; "" = GitLab's helper for the runner's version and
    # the engine's architecture. ${CI_RUNNER_VERSION} and ${CI_RUNNER_REVISION} are expanded.
    helper_image: str = ""
    # Where gitlab-runner's package installs its prebuilt helper images: the default helper
    # is loaded from there into each VM when its engine lacks it (no registry pull).
    helper_images_dir: Path = Path("/usr/lib/gitlab-runner/helper-images")
    pull_policy: list[PullPolicy] = ["always"]
    allowed_pull_policies: list[PullPolicy] = []  # empty: those in pull_policy
    allowed_images: list[str] = []  # doublestar globs; empty: any
    allowed_services: list[str] = []
    allowed_users: list[str] = []  # for the job's docker:user; empty: any
    user: str = ""  # wins over the job's docker:user
    privileged: bool = False
    cap_add: list[str] = []
    cap_drop: list[str] = []
    docker_socket: bool = True  # the VM's /var/run/docker.sock in the build container
    volumes: list[str] = []  # binds/volumes for the build, helper and service containers
    services: list[ServiceSettings] = []
    services_limit: Annotated[int, Field(ge=-1)] = -1  # -1: no limit
    wait_for_services_timeout: Annotated[float, Field(ge=-1)] = 30.0  # -1: do not wait
    disable_entrypoint_overwrite: bool = False
    # A docker config.json ({"auths": {...}}) on the runner host: the admin's registry
    # credentials, as the runner user's ~/.docker/config.json is for the docker executor.
    auth_config_file: Path | None = None
    pull_timeout: Annotated[float, Field(gt=0)] = 600.0
    # The warm pool also pulls this many of the images recent jobs ran most (within
    # pool_recent_window seconds) into each new machine; 0: only [pool] images and these.
    pool_recent_images: Annotated[int, Field(ge=0)] = 3
    pool_recent_window: Annotated[float, Field(gt=0)] = 86400.0
    # [runners.docker]'s container options, same names and meaning; driver.image.host_config
    # says which container gets which (as the docker executor's createHostConfig*).
    shm_size: Annotated[int, Field(ge=0)] = 0  # bytes; 0: docker's default (64 MiB)
    devices: list[str] = []  # "/dev/host[:/dev/ctr[:rwm]]"
    dns: list[str] = []  # IP addresses
    dns_search: list[str] = []
    extra_hosts: list[str] = []  # "host:ip"
    tmpfs: dict[str, str] = {}  # path -> mount options, build (and helper) container
    services_tmpfs: dict[str, str] = {}  # path -> mount options, service containers
    memory: str = ""  # "512m", "2g": docker sizes, binary units
    memory_swap: str = ""  # memory + swap
    memory_reservation: str = ""  # soft limit
    cpus: str = ""  # "1.5"
    cpuset_cpus: str = ""  # "0-3,5"
    oom_kill_disable: bool = False
    sysctls: dict[str, str] = {}
    ulimit: dict[str, str] = {}  # name -> "soft:hard" or "n"
    network_mtu: int = 0  # the per-job network's MTU; 0: the engine's
    security_opt: list[str] = []
    services_security_opt: list[str] = []  # e.g. seccomp=unconfined for dind without privileged
    services_privileged: bool | None = None  # None: as `privileged`
    allowed_privileged_services: list[str] = []  # doublestar globs; empty: any
    allowed_privileged_images: list[str] = []

    @field_validator("volumes")
    @classmethod
    def _volume_syntax(cls, volumes: list[str]) -> list[str]:
        for volume in volumes:
            if not VOLUME.match(volume):
                raise ValueError(
                    f"volume {volume!r} must be '/path/in/container' or "
                    "'/host/path:/path/in/container[:ro|rw]'"
                )
        return volumes

    @field_validator("devices")
    @classmethod
    def _devices(cls, devices: list[str]) -> list[str]:
        for device in devices:
            parts = device.split(":")
            paths = parts[:2]
            if (
                len(parts) > 3
                or not all(p.startswith("/") for p in paths)
                or (len(parts) == 3 and not DEVICE_PERMISSIONS.match(parts[2]))
            ):
                raise ValueError(
                    f"device {device!r} must be '/dev/host[:/dev/in/container[:permissions]]', "
                    "permissions of r, w, m (e.g. '/dev/fuse' or '/dev/kvm:/dev/kvm:rw')"
                )
        return devices

    @field_validator("dns")
    @classmethod
    def _dns(cls, servers: list[str]) -> list[str]:
        for server in servers:
            if not _is_ip(server):
                raise ValueError(f"DNS server {server!r} must be an IP address, e.g. '10.0.0.2'")
        return servers

    @field_validator("dns_search")
    @classmethod
    def _dns_search(cls, domains: list[str]) -> list[str]:
        for domain in domains:
            if not domain or any(c.isspace() for c in domain):
                raise ValueError(f"search domain {domain!r} must be a domain, e.g. 'example.com'")
        return domains

    @field_validator("extra_hosts")
    @classmethod
    def _extra_hosts(cls, hosts: list[str]) -> list[str]:
        for entry in hosts:
            name, _, address = entry.partition(":")
            if not name or not (address == "host-gateway" or _is_ip(address.strip("[]"))):
                raise ValueError(
                    f"extra host {entry!r} must be 'hostname:IP' (e.g. 'registry.local:10.0.0.5'), "
                    "or 'hostname:host-gateway'"
                )
        return hosts

    @field_validator("tmpfs", "services_tmpfs")
    @classmethod
    def _tmpfs(cls, mounts: dict[str, str]) -> dict[str, str]:
        for path in mounts:
            if not path.startswith("/") or ":" in path:
                raise ValueError(
                    f"tmpfs path {path!r} must be an absolute path in the container, "
                    'e.g. {"/tmp" = "rw,noexec,size=64m"}'
                )
        return mounts

    @field_validator("memory", "memory_swap", "memory_reservation")
    @classmethod
    def _memory(cls, size: str, info: ValidationInfo) -> str:
        if not size:
            return size
        bytes_ = parse_memory(size)
        memory = info.data.get("memory") or ""  # validated first: declared first
        limit = parse_memory(memory) if memory else 0
        if info.field_name == "memory_swap" and not limit:
            raise ValueError("is memory plus swap: set memory too")
        if info.field_name == "memory_swap" and bytes_ < limit:
            raise ValueError(f"is memory plus swap: it must be at least memory ({memory})")
        if info.field_name == "memory_reservation" and limit and bytes_ > limit:
            raise ValueError(f"must not be above memory ({memory})")
        return size

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, cpus: str) -> str:
        if cpus and nano_cpus(cpus) <= 0:
            raise ValueError("must be a number of CPUs above 0, e.g. '1.5'")
        return cpus

    @field_validator("cpuset_cpus")
    @classmethod
    def _cpuset(cls, cpuset: str) -> str:
        if cpuset and not CPUSET.match(cpuset):
            raise ValueError("must list CPUs, e.g. '0-3' or '0,2'")
        return cpuset

    @field_validator("sysctls")
    @classmethod
    def _sysctls(cls, sysctls: dict[str, str]) -> dict[str, str]:
        for key in sysctls:
            if not SYSCTL.match(key):
                raise ValueError(
                    f"sysctl {key!r} must be a dotted kernel parameter, "
                    'e.g. {"net.ipv4.ip_forward" = "1"}'
                )
        return sysctls

    @field_validator("ulimit")
    @classmethod
    def _ulimit(cls, limits: dict[str, str]) -> dict[str, str]:
        for name, value in limits.items():
            if name not in ULIMIT_NAMES:
                raise ValueError(f"ulimit {name!r} is not one of {', '.join(ULIMIT_NAMES)}")
            if not ULIMIT.match(value):
                raise ValueError(
                    f'ulimit {name} = {value!r} must be "soft:hard" or one number, '
                    'e.g. "1024:2048" or "65536" (-1: unlimited)'
                )
            soft, hard = parse_ulimit(value)
            if hard != -1 and (soft == -1 or soft > hard):
                raise ValueError(f"ulimit {name} = {value!r}: the soft limit is above the hard one")
        return limits

    @field_validator("network_mtu")
    @classmethod
    def _mtu(cls, mtu: int) -> int:
        if mtu and not 68 <= mtu <= 65535:
            raise ValueError("must be 0 (the engine's) or 68 to 65535")
        return mtu

    @field_validator("security_opt", "services_security_opt")
    @classmethod
    def _security_opt(cls, options: list[str]) -> list[str]:
        for option in options:
            key = re.split("[=:]", option, maxsplit=1)[0]
            if key not in SECURITY_OPT_KEYS or (key != "no-new-privileges" and key == option):
                raise ValueError(
                    f"security option {option!r} must be KEY=VALUE with KEY one of "
                    f"{', '.join(SECURITY_OPT_KEYS)} (e.g. 'seccomp=unconfined'), or "
                    "'no-new-privileges'"
                )
        return options

    @property
    def container_mode(self) -> bool:
        return self.mode == "container"

    @property
    def effective_allowed_pull_policies(self) -> list[PullPolicy]:
        return list(self.allowed_pull_policies or self.pull_policy)


def parse_volume(volume: str) -> tuple[str | None, str, str]:
    """(host path or None for an anonymous volume, container path, mode)."""
    match = VOLUME.match(volume)
    if match is None:  # validated at load
        raise ValueError(volume)
    first, second, mode = match.groups()
    if second is None:
        return None, first, mode or "rw"
    return first, second, mode or "rw"


def parse_memory(size: str) -> int:
    """Bytes in a docker size ("512m", "1.5g", "1024"): binary units, as gitlab-runner reads
    [runners.docker] memory (go-units RAMInBytes)."""
    match = MEMORY_SIZE.match(size)
    if match is None:
        raise ValueError(
            f"{size!r} must be a size: a number with an optional unit b, k, m, g, t or p "
            "(binary: 1k = 1024 bytes), e.g. '512m' or '2g'"
        )
    return int(float(match[1]) * _MEMORY_UNITS[(match[2] or "").lower()])


def nano_cpus(cpus: str) -> int:
    """Billionths of a CPU, as gitlab-runner reads [runners.docker] cpus ("1.5", "3/2")."""
    try:
        return int(Fraction(cpus.strip()) * 1_000_000_000)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{cpus!r} is not a number of CPUs, e.g. '1.5'") from None


def parse_ulimit(value: str) -> tuple[int, int]:
    """(soft, hard) of "soft:hard" or "n" (both n); validated at load."""
    match = ULIMIT.match(value)
    if match is None:
        raise ValueError(value)
    soft = int(match[1])
    return soft, int(match[2]) if match[2] is not None else soft


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def pool_images(settings: ImageSettings) -> list[str]:
    """What the warm pool pulls into each machine for image mode: the default image and an
    explicit helper image (the default helper's tag depends on the runner's version, which
    only a job tells)."""
    if not settings.container_mode:
        return []
    images = [settings.default] if settings.default else []
    if settings.helper_image and "$" not in settings.helper_image:
        images.append(settings.helper_image)
    return images
