"""`migrate`'s part for image mode: [runners.docker] becomes the driver's [image] section.

Every key of [runners.docker] is carried over, handled otherwise, or named in a note
with the reason it is not: nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from driver.image.config import PULL_POLICIES, VOLUME, ImageSettings, parse_volume
from driver.parsed import items, tables

DOCKER_SOCKET_BIND = "/var/run/docker.sock:/var/run/docker.sock"
# Same meaning, same name.
SAME = (
    "privileged",
    "allowed_images",
    "allowed_services",
    "allowed_pull_policies",
    "allowed_users",
    "helper_image",
    "user",
    "cap_add",
    "cap_drop",
    "disable_entrypoint_overwrite",
    "services_limit",
    "wait_for_services_timeout",
    # The container options (driver.image.host_config says which container gets which).
    "shm_size",
    "devices",
    "dns",
    "dns_search",
    "extra_hosts",
    "tmpfs",
    "services_tmpfs",
    "memory",
    "memory_swap",
    "memory_reservation",
    "cpus",
    "cpuset_cpus",
    "oom_kill_disable",
    "sysctls",
    "ulimit",
    "network_mtu",
    "security_opt",
    "services_security_opt",
    "services_privileged",
    "allowed_privileged_services",
    "allowed_privileged_images",
)
SERVICE_KEYS = ("name", "alias", "command", "entrypoint", "environment")
# Carried over in their own way (image, pull_policy, volumes, services: see below).
HANDLED = ("image", "pull_policy", "volumes", "services")
# Not needed: what they did, the driver does by itself.
NOT_NEEDED = {
    "tls_verify": "the driver reaches each VM's engine with docker-machine's TLS files",
    "tls_cert_path": "the driver reaches each VM's engine with docker-machine's TLS files",
    "host": "each job's VM has its own engine",
    "disable_cache": "the VM and its volumes go with the job",
    "cache_dir": "cache_dir is the VM's, bound into every container",
    "links": "services are reached by their aliases on the per-job network",
    "helper_image_autoset_arch_and_os": "the default helper's architecture is the VM engine's",
}
# Left out, and why (a key not listed here: no equivalent in image mode).
NO_EQUIVALENT = {
    "hostname": "every container's hostname is the job's machine name",
    "network_mode": "every job gets its own network (the docker executor's "
    "FF_NETWORK_PER_BUILD); other network modes are not supported",
    "enable_ipv6": "the per-job network is IPv4 only",
    "helper_image_flavor": "set helper_image to that flavor's image instead",
    "isolation": "Windows containers only",
    "runtime": "containers use the VM engine's default runtime",
    "gpus": "GPU requests are not supported; use devices",
    "service_memory": "service containers run without resource limits",
    "service_memory_swap": "service containers run without resource limits",
    "service_memory_reservation": "service containers run without resource limits",
    "service_cpus": "service containers run without resource limits",
    "service_cpu_shares": "service containers run without resource limits",
    "service_cpuset_cpus": "service containers run without resource limits",
    "service_cgroup_parent": "service containers run without resource limits",
}


def from_runners_docker(
    docker: Mapping[str, object], cache_dir: str = "/cache", builds_dir: str = "/builds"
) -> tuple[dict[str, object], list[str]]:
    """The [image] section for a [runners.docker] table, and notes on what is not carried
    over, with the reason. ``cache_dir``, ``builds_dir``: the driver's (the VM's), bound
    into every container."""
    if not docker:
        return {}, []
    notes: list[str] = []
    image: dict[str, object] = {"mode": "container"}
    if docker.get("image"):
        image["default"] = str(docker["image"])
    policy = docker.get("pull_policy")
    policies = [policy] if isinstance(policy, str) else [str(p) for p in items(policy)]
    if policies:
        image["pull_policy"] = [p for p in policies if p in PULL_POLICIES]
        for unknown in sorted(set(policies) - set(PULL_POLICIES)):
            notes.append(f"[runners.docker] pull_policy {unknown!r}: not a pull policy; left out")
    for key in SAME:
        if key in docker:
            image[key] = docker[key]
    volumes = _volumes(items(docker.get("volumes")), cache_dir, builds_dir, notes)
    if volumes:
        image["volumes"] = volumes
    services = []
    for service in tables(docker.get("services")):
        services.append({k: service[k] for k in SERVICE_KEYS if service.get(k)})
        extra = sorted(set(service) - set(SERVICE_KEYS))
        if extra:
            notes.append(f"[[runners.docker.services]] {', '.join(extra)}: no equivalent")
    if services:
        image["services"] = services
    notes += _refused(image)
    if image.get("privileged"):
        notes.append(
            'privileged = true: Docker refuses --privileged on some hosts; cap_add = ["ALL"] '
            "(with a cap_drop) and, for dind services, services_security_opt = "
            '["seccomp=unconfined"] are the fallback, and a job can use the VM\'s engine '
            "directly"
        )
    carried = set(SAME) | set(HANDLED) | set(NOT_NEEDED)
    for key in sorted(set(docker) - carried):
        reason = NO_EQUIVALENT.get(key, "no equivalent in image mode")
        notes.append(f"[runners.docker] {key}: left out: {reason}")
    for key in sorted(set(docker) & set(NOT_NEEDED)):
        notes.append(f"[runners.docker] {key}: not needed ({NOT_NEEDED[key]})")
    return image, notes


def _volumes(entries: list[object], cache_dir: str, builds_dir: str, notes: list[str]) -> list[str]:
    volumes = []
    bound = {cache_dir: "cache_dir", builds_dir: "builds_dir"}
    for entry in entries:
        volume = str(entry)
        if volume == DOCKER_SOCKET_BIND:
            notes.append(
                f"[runners.docker] volumes {volume!r}: the VM's own socket is in every build "
                "container already ([image] docker_socket = true), except beside a service "
                "providing Docker (dind)"
            )
        elif not VOLUME.match(volume):
            notes.append(f"[runners.docker] volumes {volume!r}: only /path and /host:/path[:ro]")
        elif (target := parse_volume(volume)[1]) in bound:
            what = bound[target]
            notes.append(
                f"[runners.docker] volumes {volume!r}: not needed: the VM's {what} is bound at "
                f"{target} into every container already"
                + (
                    " (caches there live as long as the VM: one job; see [runners.cache])"
                    if what == "cache_dir"
                    else ""
                )
            )
        else:
            volumes.append(volume)
    return volumes


def _refused(image: dict[str, object]) -> list[str]:
    """Values gitlab-runner takes but the driver would refuse: left out, with the reason,
    so the driver config written still loads."""
    notes = []
    while True:
        try:
            ImageSettings.model_validate(image)
        except ValidationError as e:
            keys = {str(err["loc"][0]) for err in e.errors() if err["loc"]}
            dropped = sorted(k for k in keys if k in image and k != "mode")
            if not dropped:
                raise
            for err in e.errors():
                key = str(err["loc"][0]) if err["loc"] else ""
                if key in dropped:
                    message = str(err["msg"]).removeprefix("Value error, ")
                    notes.append(
                        f"[runners.docker] {key} = {image[key]!r}: left out: {message}; "
                        "set a valid one in [image]"
                    )
            for key in dropped:
                image.pop(key)
            continue
        return notes
