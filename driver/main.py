"""The command line: parse, dispatch, and turn every failure into the right exit code.

Command modules are imported only when chosen: each stage is its own process,
and `run` starts once per stage.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from driver import NAME, __version__, contract
from driver.errors import BuildFailure, DriverError

if TYPE_CHECKING:
    import argparse


@contextmanager
def error_handler() -> Iterator[None]:
    """Exit codes tell the truth: the script's failure is a build failure, ours a system one."""
    try:
        yield
    except BuildFailure as e:
        contract.write_build_exit_code(e.exit_code)
        print(f"[{NAME}] {e}", file=sys.stderr, flush=True)
        raise SystemExit(contract.build_failure_code()) from None
    except DriverError as e:
        print(f"[{NAME}] ERROR: {e}", file=sys.stderr, flush=True)
        _log_error(e)
        raise SystemExit(contract.system_failure_code()) from None
    except Exception as e:
        print(
            f"[{NAME}] ERROR: internal error: {type(e).__name__}: {e}\n"
            f"  hint: this is a bug in {NAME}; the traceback follows",
            file=sys.stderr,
            flush=True,
        )
        import traceback

        traceback.print_exc()
        _log_error(e)
        raise SystemExit(contract.system_failure_code()) from None


def _log_error(error: BaseException) -> None:
    """Into the admin's log too, if a command set one up."""
    import structlog

    if structlog.is_configured():
        structlog.get_logger().error("failed", error=str(error), kind=type(error).__name__)


def parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(
        prog=NAME,
        description="GitLab Runner custom executor: one fresh docker-machine VM per job.",
    )
    p.add_argument("--version", action="version", version=f"{NAME} {__version__}")
    p.add_argument(
        "--config",
        dest="config_path",
        metavar="PATH",
        help="the driver's config file (default: $GITLAB_MACHINE_DRIVER_CONFIG or "
        "/etc/gitlab-machine-driver/config.toml)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("config", help="print the executor config JSON (config_exec)")
    sub.add_parser("prepare", help="create and ready this job's machine (prepare_exec)")
    run = sub.add_parser("run", help="run one stage's script in the machine (run_exec)")
    run.add_argument("script", help="the script file the runner wrote")
    run.add_argument("stage", help="the stage name, e.g. build_script")
    sub.add_parser("cleanup", help="destroy this job's machine (cleanup_exec)")
    sweep = sub.add_parser("sweep", help="remove machines whose jobs are over (timer, cron)")
    sweep.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    ls = sub.add_parser("ls", help="list the machines this driver owns, with their jobs")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    doctor = sub.add_parser("doctor", help="check the set-up and say how to fix problems")
    doctor.add_argument(
        "--create", action="store_true", help="also create, use and destroy one machine"
    )
    pool = sub.add_parser("pool", help="the warm-pool service, or what it holds")
    pool.add_argument("action", choices=["run", "status"], help="run the service, or show it")
    pool.add_argument("--json", action="store_true", help="status as JSON")
    migrate = sub.add_parser(
        "migrate", help="print driver configs for gitlab-runner's docker+machine runners"
    )
    migrate.add_argument("runner_config", metavar="RUNNER_CONFIG_TOML")
    migrate.add_argument("--output", metavar="DIR", help="write each driver config into DIR")
    job = sub.add_parser("job", help="print a job environment to run stages by hand")
    job_sub = job.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    init = job_sub.add_parser("init", help="write a job response file; print its environment")
    init.add_argument("--id", type=int, default=4242, help="the job id (default 4242)")
    init.add_argument("--project", type=int, default=1, help="the project id (default 1)")
    init.add_argument("--response", metavar="FILE", help="a saved response.json to use instead")
    ssh = sub.add_parser("ssh", help="a shell (or COMMAND) in a job's VM, host key checked")
    ssh.add_argument("target", metavar="JOB_ID|MACHINE")
    ssh.add_argument(
        "remote_command",
        metavar="COMMAND",
        nargs=argparse.REMAINDER,
        help="run this instead of a shell",
    )
    return p


@dataclass(frozen=True)
class RunStage:
    """`[--config PATH] run SCRIPT STAGE`: the runner's call once per stage."""

    config_path: str | None
    script: str
    stage: str


def run_stage_args(argv: list[str]) -> RunStage | None:
    """The `run` stage's words, parsed without argparse.

    The runner starts `run` once per stage; importing argparse and building the
    full parser would cost every stage more than parsing these four words does.
    Anything else (help, other commands, odd spellings) goes through argparse.
    """
    config, rest = None, argv
    if rest[:1] == ["--config"] and len(rest) > 1:
        config, rest = rest[1], rest[2:]
    elif rest[:1] and rest[0].startswith("--config="):
        config, rest = rest[0].split("=", 1)[1], rest[1:]
    if len(rest) == 3 and rest[0] == "run" and not any(a.startswith("-") for a in rest[1:]):
        return RunStage(config_path=config, script=rest[1], stage=rest[2])
    return None


Command = Callable[["argparse.Namespace"], int]


def command(name: str) -> Command:
    """The chosen command's ``main``; only its module is imported, so `run` does not
    pay for what prepare needs."""
    if name == "config":
        from driver.stages.config import main as config

        return config
    if name == "prepare":
        from driver.stages.prepare import main as prepare

        return prepare
    if name == "run":
        from driver.stages.run import main as run

        return run
    if name == "cleanup":
        from driver.stages.cleanup import main as cleanup

        return cleanup
    if name == "sweep":
        from driver.commands.sweep import main as sweep

        return sweep
    if name == "ls":
        from driver.commands.ls import main as ls

        return ls
    if name == "doctor":
        from driver.commands.doctor import main as doctor

        return doctor
    if name == "pool":
        from driver.commands.pool import main as pool

        return pool
    if name == "migrate":
        from driver.commands.migrate import main as migrate

        return migrate
    if name == "job":
        from driver.commands.job import main as job

        return job
    if name == "ssh":
        from driver.commands.ssh import main as ssh

        return ssh
    raise AssertionError(f"no command {name!r}")  # argparse allows only the names above


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    stage = run_stage_args(words)
    if stage is not None:
        from driver.stages.run import run_stage

        with error_handler():
            code = run_stage(stage.script, stage.stage, stage.config_path)
        # Once per stage: skip the interpreter's tear-down, nothing is left to clean.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    args = parser().parse_args(words)
    with error_handler():
        return command(args.command)(args)


if __name__ == "__main__":
    sys.exit(main())
