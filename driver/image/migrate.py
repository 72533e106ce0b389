"""`migrate`'s part for image mode: [runners.docker] becomes the driver's [image] section."""

from __future__ import annotations

from typing import Any

from driver.image.config import PULL_POLICIES, VOLUME

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
)
SERVICE_KEYS = ("name", "alias", "command", "entrypoint", "environment")
# Handled elsewhere or meaningless with one VM per job.
IGNORED = {
    "image": "",
    "volumes": "",
    "pull_policy": "",
    "services": "",
    "tls_verify": "the driver reaches each VM's engine with docker-machine's TLS files",
    "host": "each job's VM has its own engine",
    "disable_cache": "the VM and its volumes go with the job",
    "cache_dir": "cache_dir is the VM's, bound into every container",
    "shm_size": "",
}


def from_runners_docker(docker: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The [image] section for a [runners.docker] table, and what has no equivalent."""
    if not docker:
        return {}, []
    notes: list[str] = []
    image: dict[str, Any] = {"mode": "container"}
    if docker.get("image"):
        image["default"] = str(docker["image"])
    policy = docker.get("pull_policy")
    policies = [policy] if isinstance(policy, str) else list(policy or [])
    if policies:
        image["pull_policy"] = [p for p in policies if p in PULL_POLICIES]
    for key in SAME:
        if key in docker:
            image[key] = docker[key]
    volumes = []
    for volume in docker.get("volumes", []):
        volume = str(volume)
        if volume == DOCKER_SOCKET_BIND:
            notes.append(
                f"[runners.docker] volumes {volume!r}: the VM's own socket is in every build "
                "container already ([image] docker_socket = true)"
            )
        elif volume in ("/cache", "/builds"):
            continue  # the VM's cache_dir and builds_dir are bound into every container
        elif VOLUME.match(volume):
            volumes.append(volume)
        else:
            notes.append(f"[runners.docker] volumes {volume!r}: only /path and /host:/path[:ro]")
    if volumes:
        image["volumes"] = volumes
    services = []
    for service in docker.get("services", []):
        services.append({k: service[k] for k in SERVICE_KEYS if service.get(k)})
        unknown = sorted(set(service) - set(SERVICE_KEYS))
        if unknown:
            notes.append(f"[[runners.docker.services]] {', '.join(unknown)}: no equivalent")
    if services:
        image["services"] = services
    if image.get("privileged"):
        notes.append(
            'privileged = true: Docker refuses --privileged on some hosts; cap_add = ["ALL"] '
            "(with a cap_drop) is the fallback, and a job can use the VM's engine directly"
        )
    for key in sorted(set(docker) - set(SAME) - set(IGNORED)):
        notes.append(f"[runners.docker] {key}: no equivalent in image mode; left out")
    for key in sorted(set(docker) & set(IGNORED)):
        if IGNORED[key]:
            notes.append(f"[runners.docker] {key}: not needed ({IGNORED[key]})")
    return image, notes
