"""Per-stage cost of the driver against the ways a stage could otherwise be run.

    make bench            # or: PATH=testing/bin:$PATH .venv/bin/python -m bench.stages

On the local default (the docker-machine double: real sshd, own netns), in one
run, side by side, medians of --repeat runs:
  - python -c pass                       the interpreter's own start-up
  - ssh via the job's master, true       plain ssh over the same multiplexed connection
  - gitlab-machine-driver run (true)     the driver's run stage with an empty script
  - fresh ssh ... bash < script          a new connection per stage (GitLab's docs example)
and derived: run's overhead over plain ssh minus python start-up (target <= 20 ms);
a 12-stage job's connection overhead, driver vs fresh ssh (target >= 3x less);
stage output throughput, driver vs `ssh cat` (target >= 95%).
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from testing.runner import Job
from testing.world import destroy_world, new_world

DRIVER = [str(Path(sys.executable).parent / "gitlab-machine-driver")]


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def run_quiet(argv: list[str], **kwargs: object) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]


def throughput(argv: list[str], env: dict[str, str], megabytes: int) -> float:
    """MB/s of a command's stdout read through a pipe, as the runner reads a stage."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, stdin=subprocess.DEVNULL)
    stdout = proc.stdout
    assert isinstance(stdout, io.BufferedReader)  # read1: what is there, as a pipe reader does
    total = 0
    while chunk := stdout.read1(1 << 16):
        total += len(chunk)
    proc.wait()
    elapsed = time.perf_counter() - start
    assert total == megabytes << 20, f"read {total} bytes"
    return megabytes / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds")
    args = parser.parse_args()

    world = new_world()
    try:
        job = Job()
        prepared = world.runner().prepare_only(job)
        if not prepared.ok:
            print(prepared.job_log)
            return 1
        env = prepared.env
        job_dir = Path(env["GITLAB_MACHINE_DRIVER_JOB_DIR"])
        ssh = ["ssh", "-F", str(job_dir / "ssh_config")]
        empty = world.base / "empty.sh"
        empty.write_text("true\n")
        stage = [*DRIVER, "--config", str(world.config_path), "run", str(empty), "build_script"]
        fresh = [*ssh, "-o", "ControlMaster=no", "-o", "ControlPath=none", "machine", "bash"]

        cases: dict[str, Callable[[], object]] = {
            "python -c pass": lambda: run_quiet([sys.executable, "-c", "pass"]),
            "ssh via master: true": lambda: run_quiet([*ssh, "machine", "true"]),
            "driver run: empty stage": lambda: run_quiet(stage, env=env),
            "fresh ssh: bash < script": lambda: run_quiet(fresh, stdin=empty.open("rb")),
        }
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):  # round-robin, so all see the same machine load
            for name, case in cases.items():
                results[name] += timed(case, 1)
        med = {name: statistics.median(s) * 1000 for name, s in results.items()}
        print(f"{'what':<28} {'median ms':>10} {'p90 ms':>8}")
        for name, samples in results.items():
            p90 = sorted(samples)[int(len(samples) * 0.9) - 1] * 1000
            print(f"{name:<28} {med[name]:>10.1f} {p90:>8.1f}")

        overhead = med["driver run: empty stage"] - med["ssh via master: true"]
        extra = overhead - med["python -c pass"]
        print()
        print(f"run overhead over plain ssh:          {overhead:6.1f} ms")
        print(f"  of which beyond python start-up:    {extra:6.1f} ms   (target <= 20)")
        stages = 12
        driver_job = stages * med["driver run: empty stage"]
        fresh_job = stages * med["fresh ssh: bash < script"]
        print(
            f"12-stage job, connection overhead:   driver {driver_job:6.0f} ms, fresh ssh "
            f"{fresh_job:6.0f} ms: {fresh_job / driver_job:4.1f}x less   (target >= 3x)"
        )

        mb = args.megabytes
        big = world.base / "big.sh"
        big.write_text(f"head -c {mb}M /dev/zero\n")
        big_stage = [*DRIVER, "--config", str(world.config_path), "run", str(big), "build_script"]
        cat = [*ssh, "machine", f"head -c {mb}M /dev/zero"]
        rates: dict[str, list[float]] = {"driver": [], "ssh": []}
        for _ in range(args.rounds):  # interleaved, so both see the same machine load
            rates["driver"].append(throughput(big_stage, env, mb))
            rates["ssh"].append(throughput(cat, env, mb))
        d, s = statistics.median(rates["driver"]), statistics.median(rates["ssh"])
        print(
            f"stage output throughput ({mb} MB):    driver {d:6.0f} MB/s, ssh cat {s:6.0f} MB/s: "
            f"{100 * d / s:5.1f}%   (target >= 95%)"
        )
        prepared.cleanup()
    finally:
        destroy_world(world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
