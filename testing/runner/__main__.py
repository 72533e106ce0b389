"""Run a sample CI job through the driver as gitlab-runner would, streaming its log.

    python -m testing.runner --config PATH [--driver-command CMD] [--job-id N] [--stages-demo]

The driver is called as `CMD --config PATH config|prepare|run|cleanup`, like a
`[runners.custom]` section whose *_args carry `--config PATH <subcommand>`.
Exit status: 0 if the job succeeded, 1 otherwise. Ctrl-C cancels the job (a
second Ctrl-C aborts it); cleanup still runs.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import threading

from .emulator import CustomExecutorConfig, JobResult, RunnerEmulator
from .job import Job, Variable


def sample_job(job_id: int | None, stages_demo: bool) -> Job:
    """A job whose every stage says where it runs."""
    script = [
        'echo "build_script on $(hostname) as $(id -un) in $PWD"',
        "uname -a",
        "if command -v docker >/dev/null 2>&1; then docker info; "
        'else echo "no docker CLI in this VM"; fi',
        'for step in compile test package; do echo "== $step"; done',
    ]
    job = Job(script=script, after_script=['echo "after_script on $(hostname)"'])
    if job_id is not None:
        job.id = job_id
    if stages_demo:
        job.steps = {"release": ['echo "step_release on $(hostname)"']}
        job.cache = True
        job.artifacts = True
        job.dependencies = [job.id - 1]
        job.variables = [
            Variable("DEMO_SECRET", "demo-secret-value-123", masked=True),
            Variable("DEMO_FILE", "contents of a file variable\n", file=True),
        ]
        job.script = [
            *script,
            'echo "masked in the log: $DEMO_SECRET"',
            'cat "$DEMO_FILE"',
            "mkdir -p out cache && date -u > out/built-at.txt",
        ]
    return job


def driver_config(args: argparse.Namespace) -> CustomExecutorConfig:
    command = shlex.split(args.driver_command)

    def call(subcommand: str) -> list[str]:
        return [*command[1:], "--config", args.config, subcommand]

    return CustomExecutorConfig(
        config_exec=command[0],
        config_args=call("config"),
        prepare_exec=command[0],
        prepare_args=call("prepare"),
        run_exec=command[0],
        run_args=call("run"),
        cleanup_exec=command[0],
        cleanup_args=call("cleanup"),
        builds_dir=args.builds_dir,
        cache_dir=args.cache_dir,
    )


def run_streaming(emulator: RunnerEmulator, job: Job) -> JobResult:
    """Run in a worker thread so that Ctrl-C reaches us and becomes a job cancel."""

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    run = emulator.new_run(job, on_log=write)
    results: list[JobResult] = []
    worker = threading.Thread(target=lambda: results.append(run.run()), daemon=True)
    worker.start()
    interrupts = 0
    while worker.is_alive():
        try:
            worker.join()
        except KeyboardInterrupt:
            interrupts += 1
            run.cancel("cancel" if interrupts == 1 else "abort")
    if not results:
        raise RuntimeError("the job run ended without a result")
    return results[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testing.runner", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="the driver's configuration file")
    parser.add_argument("--driver-command", default="gitlab-machine-driver")
    parser.add_argument("--job-id", type=int, default=None)
    parser.add_argument("--stages-demo", action="store_true", help="add cache, artifacts, a step")
    parser.add_argument("--builds-dir", default="/builds", help="[[runners]] builds_dir")
    parser.add_argument("--cache-dir", default="/cache", help="[[runners]] cache_dir")
    parser.add_argument("--timeout", type=float, default=3600.0, help="job timeout, seconds")
    args = parser.parse_args(argv)

    command = shlex.split(args.driver_command)
    if not command or shutil.which(command[0]) is None:
        print(f"driver command not found: {args.driver_command!r}", file=sys.stderr)
        return 1
    job = sample_job(args.job_id, args.stages_demo)
    job.timeout = args.timeout
    result = run_streaming(RunnerEmulator(driver_config(args)), job)
    if result.runner_log:
        print("\n--- runner log (cleanup output) ---", file=sys.stderr)
        print(result.runner_log, end="", file=sys.stderr)
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
