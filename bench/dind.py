"""What docker-in-docker costs a job, beside the same job on the VM's own engine.

    PATH=testing/bin:$PATH .venv/bin/python -m bench.dind [--repeat N]

One job, two ways, interleaved, medians of --repeat runs each, side by side:
  - dind: `image: docker:cli`, `services: [docker:dind]`, DOCKER_TLS_CERTDIR=/certs and
    [image] volumes ["/certs/client"] (GitLab's documented TLS set-up), so the CLI talks
    to the service over TLS and the image is built and run inside it (vfs storage);
  - socket: the same image and script without the service: the CLI uses the VM's
    /var/run/docker.sock ([image] docker_socket, the driver's default).
The script: `docker build` of a small image (FROM scratch, busybox httpd, one page),
`docker run -d -p 8080:8080` it, fetch the page (dind: through the service alias
`docker`; socket: through the per-job network's gateway, the VM). Timed: prepare (the
dind service's start and its wait included), the build_script stage, the whole job.
Machines come from the warm pool with every image pre-pulled, so pulls are not counted.
The docker:dind and docker:cli stand-ins are testing/images.py's (the host's dockerd and
docker CLI); service settings as tests/integration/test_image_dind.py's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable

from testing import images
from testing.runner import Job, JobResult, Service, Variable
from testing.world import destroy_world, new_world, stop_pool
from tests.integration.test_image_dind import DIND_SERVICE_SETTINGS

PAGE = "hello from the benchmark image"
GATEWAY = "$(ip route | awk '/^default/ {print $3}')"


def script(host: str) -> list[str]:
    return [
        "mkdir -p ctx/www && cp /bin/busybox ctx/",
        f"echo '{PAGE}' > ctx/www/index.html",
        "printf 'FROM scratch\\nCOPY busybox /busybox\\nCOPY www /www\\n"
        'CMD ["/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]\\n\' > ctx/Dockerfile',
        "docker build -q -t web:1 ctx > /dev/null",
        "docker run -d -p 8080:8080 web:1 > /dev/null",
        f"for i in $(seq 100); do wget -qO- http://{host}:8080/ && break; sleep 0.1; done",
    ]


def timings(result: JobResult) -> dict[str, float]:
    return {
        "prepare": result.execs("prepare")[0].seconds,
        "build_script": result.stage("build_script").seconds,
        "job": result.seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    world = new_world()
    service = None
    with images.serving(
        "u",
        "p",
        [i for i in images.test_images() if i.name == "ci/helper:1"] + images.dind_images(),
    ) as registry:
        try:
            cli, dind_image = f"{registry.open}/ci/docker:cli", f"{registry.open}/ci/docker:dind"
            world.configure(
                **images.image_mode(registry, **DIND_SERVICE_SETTINGS),
                pool={
                    "idle_count": 2,
                    "check_interval": 0.5,
                    "drain_on_stop": True,
                    "images": [cli, dind_image],
                },
            )
            service = world.start_pool(quiet=True)

            jobs: dict[str, Callable[[], Job]] = {
                "dind (TLS)": lambda: Job(
                    image=cli,
                    services=[Service(dind_image, alias="docker")],
                    variables=[Variable("DOCKER_TLS_CERTDIR", "/certs")],
                    script=script("docker"),
                ),
                "VM socket": lambda: Job(image=cli, script=script(GATEWAY)),
            }
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in jobs}
            for _ in range(args.repeat):
                for name, make in jobs.items():  # interleaved: both see the same load
                    world.wait_ready(1, timeout=600)
                    result = world.runner().run_job(make())
                    if result.outcome != "success" or PAGE not in result.lines("build_script"):
                        print(result.describe())
                        return 1
                    if "from the warm pool" not in result.job_log:
                        print(f"warning: a {name} job did not get a pool machine")
                    samples[name].append(timings(result))

            print(f"medians of {args.repeat} jobs each, seconds")
            print(f"{'':<12} {'prepare':>8} {'build_script':>13} {'whole job':>10}")
            medians: dict[str, dict[str, float]] = {}
            for name, runs in samples.items():
                medians[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                m = medians[name]
                print(
                    f"{name:<12} {m['prepare']:>8.2f} {m['build_script']:>13.2f} {m['job']:>10.2f}"
                )
            dind, socket = medians["dind (TLS)"], medians["VM socket"]
            extra = {key: dind[key] - socket[key] for key in dind}
            print(
                f"{'dind costs':<12} {extra['prepare']:>+8.2f} {extra['build_script']:>+13.2f} "
                f"{extra['job']:>+10.2f}"
            )
        finally:
            if service is not None:
                stop_pool(service, timeout=180)
            destroy_world(world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
