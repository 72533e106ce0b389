"""What a job's containers bind: the VM's dirs, the admin's volumes, the VM's Docker socket.

Pure: settings and the job's plan in, bind strings and volume names out; the engine
calls are driver/image/containers.py's.

As the docker executor (``createHostConfig*``, ``internal/volumes``), ONE bind list goes
to the helper, the build and every service container: the VM's builds_dir and cache_dir
at the same paths, each ``/host:/path[:mode]`` volume as given, and each ``/path`` volume
as ONE named volume of the job (``<machine>-vol-<hash of the path>``), so what a service
writes there the build reads (docker:dind's client certificates in ``/certs/client``).
The names depend only on the machine and the path: the warm pool's helper, started
before its job, has the same binds as the job's own would (containers._pooled_helper).
The volumes go with the VM, which goes with the job.

The VM's ``/var/run/docker.sock`` goes to the build container only (``[image]
docker_socket``, the driver's default: the VM is the job's boundary), and not when a
service of the job provides Docker (see ``docker_service``): docker's ``docker:cli``
image (its entrypoint) uses that socket whenever it exists and DOCKER_HOST is unset, so
with it a job of GitLab's docker-in-docker template would build and run on the VM's
engine, not in its service, and `docker run -p PORT ...` then `curl docker:PORT` fails.
The docker executor never binds the socket unless the admin's volumes say so.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from driver.image.config import ImageSettings, parse_volume
from driver.image.plan import Plan, ServicePlan

DOCKER_SOCKET = "/var/run/docker.sock"
DOCKER_ALIAS = "docker"  # where docker:cli's entrypoint looks for the daemon
MACHINE_LABEL = "gitlab-machine-driver.machine"
# docker:dind, docker:27-dind, docker:27.3.1-dind-rootless, registry/ns/dind:tag, ...
DIND_IMAGE = re.compile(r"(^|[/:._-])dind([:._-]|$)")


def volume_name(machine: str, path: str) -> str:
    """The job's named volume for a ``/path`` entry of [image] volumes."""
    return f"{machine}-vol-{hashlib.sha256(path.encode()).hexdigest()[:16]}"


def named_volumes(settings: ImageSettings, machine: str) -> list[str]:
    """The named volumes the job's containers bind (created before them, labelled)."""
    paths = [t for h, t, _ in map(parse_volume, settings.volumes) if h is None]
    return [volume_name(machine, path) for path in dict.fromkeys(paths)]


def binds(settings: ImageSettings, machine: str, builds_dir: str, cache_dir: str) -> list[str]:
    """The binds of every container of the job (helper, build, services)."""
    out = [f"{builds_dir}:{builds_dir}:rw", f"{cache_dir}:{cache_dir}:rw"]
    for volume in settings.volumes:
        host, target, mode = parse_volume(volume)
        source = volume_name(machine, target) if host is None else host
        out.append(f"{source}:{target}:{mode}")
    return out


def docker_service(services: Sequence[ServicePlan]) -> ServicePlan | None:
    """The first service that provides Docker to the job: one reached as ``docker``
    (``docker:<v>-dind`` is, by its image name), or whose image is a dind image."""
    for service in services:
        if DOCKER_ALIAS in service.aliases or DIND_IMAGE.search(_last_part(service.image)):
            return service
    return None


def socket_bind(settings: ImageSettings, job: Plan) -> str | None:
    """The VM's Docker socket bind for the build container, or None (see the module)."""
    if not settings.docker_socket or docker_service(job.services) is not None:
        return None
    return f"{DOCKER_SOCKET}:{DOCKER_SOCKET}"


def _last_part(image: str) -> str:
    """``registry:5000/ns/docker:27-dind`` -> ``docker:27-dind`` (name and tag)."""
    return image.rsplit("/", 1)[-1].split("@", 1)[0]
