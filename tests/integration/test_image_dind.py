"""docker:dind as a service, in both of GitLab's documented set-ups, with the job's
`.gitlab-ci.yml` as GitLab's docs write it: the job builds an image in the service,
runs it with a published port and reaches that port through the service's alias.

The images are stand-ins for docker's `docker:dind` and `docker:cli` made from the
host's dockerd and docker CLI, with docker's entrypoint logic (testing/images.py). The
host refuses `docker run --privileged` (its capability bounding set lacks
CAP_SYS_RESOURCE), so the admin's settings give the service what dind needs without it:
every other capability and no seccomp profile (runc makes a session keyring); the
stand-in remounts its cgroups writable, as --privileged would have left them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from testing import images
from testing.runner import Job, Service, Variable
from testing.world import Env
from tests.integration.test_image_mode import image_world

pytestmark = pytest.mark.skipif(
    not images.dind_available(), reason="needs root, docker.io, docker-registry, busybox-static"
)
# What an admin sets for docker-in-docker where --privileged is refused; where it is not,
# services_privileged = true (with allowed_privileged_services) is the documented way.
DIND_SERVICE_SETTINGS: dict[str, Any] = {
    "volumes": ["/certs/client"],  # GitLab's docs: the client certificates, shared
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "services_security_opt": ["seccomp=unconfined"],
    "wait_for_services_timeout": 60,
}
PAGE = "hello from an image built in dind"
# The job's script: what GitLab's docker-in-docker examples do, and what shows where the
# docker CLI went (the service's engine stores on vfs; the VM's on overlay2).
SCRIPT = [
    'echo "host=$DOCKER_HOST verify=${DOCKER_TLS_VERIFY:-} certs=${DOCKER_CERT_PATH:-}"',
    "if test -S /var/run/docker.sock; then echo vm-socket-here; else echo no-vm-socket; fi",
    "docker info --format 'storage={{.Driver}}'",
    "mkdir -p ctx/www && cp /bin/busybox ctx/",
    f"echo '{PAGE}' > ctx/www/index.html",
    "printf 'FROM scratch\\nCOPY busybox /busybox\\nCOPY www /www\\n"
    'CMD ["/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]\\n\' > ctx/Dockerfile',
    "docker build -q -t web:1 ctx > /dev/null",
    "docker run -d -p 8080:8080 web:1 > /dev/null",
    "for i in $(seq 40); do wget -qO- http://docker:8080/ && break; sleep 0.25; done",
]


@pytest.fixture(scope="module")
def registry() -> Iterator[images.Registry]:
    wanted = [i for i in images.test_images() if i.name == "ci/helper:1"]
    with images.serving("u", "p", wanted + images.dind_images()) as reg:
        yield reg


def dind_job(registry: images.Registry, *variables: Variable) -> Job:
    return Job(
        image=f"{registry.open}/ci/docker:cli",
        # The stand-in's name does not make the alias `docker` as `docker:27-dind` does.
        services=[Service(f"{registry.open}/ci/docker:dind", alias="docker")],
        variables=list(variables),
        script=SCRIPT,
    )


def test_dind_with_tls_builds_runs_and_serves_through_the_alias(
    env: Env, registry: images.Registry
) -> None:
    image_world(env, registry, **DIND_SERVICE_SETTINGS)
    job = dind_job(registry, Variable("DOCKER_TLS_CERTDIR", "/certs"))
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    build = result.lines("build_script")
    # docker:cli's entrypoint found dind's client certificates in the shared volume.
    assert "host=tcp://docker:2376 verify=1 certs=/certs/client" in build, build
    assert "no-vm-socket" in build  # the driver did not bind the VM's socket...
    assert "storage=vfs" in build  # ...and the CLI talks to the service's engine
    assert PAGE in build
    assert "provides Docker" in result.job_log  # why there is no socket, said once
    env.assert_nothing_left()


def test_dind_without_tls_builds_runs_and_serves_through_the_alias(
    env: Env, registry: images.Registry
) -> None:
    image_world(env, registry, **DIND_SERVICE_SETTINGS)
    job = dind_job(
        registry,
        Variable("DOCKER_HOST", "tcp://docker:2375"),
        Variable("DOCKER_TLS_CERTDIR", ""),
    )
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    build = result.lines("build_script")
    assert "host=tcp://docker:2375 verify= certs=" in build, build
    assert "no-vm-socket" in build
    assert "storage=vfs" in build
    assert PAGE in build
    env.assert_nothing_left()
