"""Image mode's costs beside shell mode's, on the local default (the docker-machine double).

    make bench            # or: PATH=testing/bin:$PATH .venv/bin/python -m bench.image

In one run, side by side, medians of --repeat interleaved runs:
  - `run` of an empty stage in a shell-mode job and in an image-mode job (busybox image):
    the per-stage overhead of image mode (target: at most 150 ms more at the median);
  - the time from prepare's start to the first line of the user script, with a warm-pool
    hit and the image pre-pulled ([pool] images, helper_image): target under 2.5 s;
  - the image pull time per job (a job's image not in [pool] images) without and with the
    pool learning the images recent jobs ran ([image] pool_recent_images 0, then 3).
Images come from a registry on a test host of the double (testing/images.py).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from testing import images
from testing.runner import Job
from testing.world import Env, destroy_world, new_world, stop_pool

DRIVER = [str(Path(sys.executable).parent / "gitlab-machine-driver")]
MARK = "first-line-of-the-user-script"


def timed_run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def pull_seconds(world: Env, job: Job, image: str) -> float | None:
    """How long the job's prepare spent pulling `image`, from its log lines' arrival:
    "Pulling docker image X" to "Using docker image <id> for X"; 0 if found locally."""
    arrivals: list[tuple[float, str]] = []

    def on_log(text: str) -> None:
        now = time.monotonic()
        arrivals.extend((now, line) for line in text.splitlines())

    result = world.runner().new_run(job, on_log=on_log).run()
    if result.outcome != "success" or "from the warm pool" not in result.job_log:
        print(result.describe())
        return None
    began = [at for at, line in arrivals if f"Pulling docker image {image} ..." in line]
    done = [at for at, line in arrivals if "Using docker image sha256:" in line and image in line]
    if not began:
        return 0.0  # "Using locally found image": the pool had pulled it
    return done[0] - began[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=5, help="jobs timed to their first line")
    parser.add_argument(
        "--learn-jobs", type=int, default=4, help="jobs timed for pulls, without and with"
    )
    args = parser.parse_args()

    world = new_world()
    service = None
    with images.serving(
        "u", "p", [i for i in images.test_images() if "web" not in i.name]
    ) as registry:
        try:
            busybox = f"{registry.open}/ci/busybox:1"
            world.configure(
                **images.image_mode(registry),
                pool={
                    "idle_count": 2,
                    "check_interval": 0.5,
                    "drain_on_stop": True,
                    "images": [busybox],
                },
            )
            service = world.start_pool(quiet=True)

            # --- from prepare's start to the user script's first line, pool hit, image there
            firsts: list[float] = []
            for _ in range(args.jobs):
                world.wait_ready(2, timeout=300)
                seen: list[float] = []
                lock = threading.Lock()

                def on_log(
                    text: str, seen: list[float] = seen, lock: threading.Lock = lock
                ) -> None:
                    with lock:
                        if not seen and any(line.strip() == MARK for line in text.splitlines()):
                            seen.append(time.monotonic())

                job = Job(image=busybox, script=[f"echo {MARK}"])
                run = world.runner().new_run(job, on_log=on_log)
                start = time.monotonic()
                result = run.run()
                if result.outcome != "success" or "from the warm pool" not in result.job_log:
                    print(result.describe())
                    return 1
                prepare_start = start + result.execs("prepare")[0].started
                firsts.append(seen[0] - prepare_start)

            # --- per-stage overhead, shell vs image mode, on two prepared jobs
            world.wait_ready(2, timeout=300)
            shell_job = world.runner().prepare_only(Job())
            image_job = world.runner().prepare_only(Job(image=busybox))
            if not (shell_job.ok and image_job.ok):
                print(shell_job.job_log, image_job.job_log)
                return 1
            empty = world.base / "empty.sh"
            empty.write_text("true\n")
            stage = [*DRIVER, "--config", str(world.config_path), "run", str(empty), "build_script"]
            samples: dict[str, list[float]] = {"shell mode": [], "image mode": []}
            for _ in range(args.repeat):  # interleaved: both see the same machine load
                samples["shell mode"].append(timed_run(stage, shell_job.env))
                samples["image mode"].append(timed_run(stage, image_job.env))
            shell_job.cleanup()
            image_job.cleanup()

            # --- a job's image pull, without and with the pool learning recent jobs' images
            bash = f"{registry.open}/ci/bash:1"  # not in [pool] images
            pulls: dict[str, list[float]] = {}
            for label, learned in (("without learning", 0), ("with learning", 3)):
                stop_pool(service, timeout=180)
                world.configure(image={"pool_recent_images": learned}, pool={"images": []})
                service = world.start_pool(quiet=True)
                pulls[label] = []
                for _ in range(args.learn_jobs):
                    world.wait_ready(2, timeout=300)
                    seconds = pull_seconds(world, Job(image=bash, script=["true"]), bash)
                    if seconds is None:
                        return 1
                    pulls[label].append(seconds)

            med = {name: statistics.median(s) * 1000 for name, s in samples.items()}
            print(f"{'run of an empty stage':<28} {'median ms':>10} {'p90 ms':>8}")
            for name, values in samples.items():
                p90 = sorted(values)[int(len(values) * 0.9) - 1] * 1000
                print(f"{name:<28} {med[name]:>10.1f} {p90:>8.1f}")
            extra = med["image mode"] - med["shell mode"]
            print(f"image mode's extra per stage:        {extra:6.1f} ms   (target <= 150)")
            print(
                f"prepare start -> first user line:    median {statistics.median(firsts):5.2f} s, "
                f"max {max(firsts):5.2f} s over {len(firsts)} jobs, pool hit, image pre-pulled "
                "(target < 2.5 s)"
            )
            for label, values in pulls.items():
                print(
                    f"image pull per job, {label + ':':<18} "
                    f"median {statistics.median(values):5.2f} s "
                    f"({', '.join(f'{v:.2f}' for v in values)}) over {len(values)} jobs"
                )
        finally:
            if service is not None:
                stop_pool(service, timeout=180)
            destroy_world(world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
