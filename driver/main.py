"""The command line: parse, dispatch, and turn every failure into the right exit code.

Command modules are imported only when chosen: each stage is its own process,
and `run` starts once per stage.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
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
        _tell(f"[{NAME}] {e}")
        raise SystemExit(contract.build_failure_code()) from None
    except DriverError as e:
        _log_error(e)  # first: the job log may be a closed pipe
        _tell(f"[{NAME}] ERROR: {e}")
        raise SystemExit(contract.system_failure_code()) from None
    except OSError as e:
        if isinstance(e, BrokenPipeError) and e.filename is None:
            raise  # our own stdout closed: closed_stdout_ends_quietly decides
        # The host's own trouble (disk full, permissions): what it is, and the fix.
        _log_error(e)
        _tell(f"[{NAME}] ERROR: {_host_problem(e)}")
        raise SystemExit(contract.system_failure_code()) from None
    except Exception as e:
        _log_error(e)
        import traceback

        _tell(
            f"[{NAME}] ERROR: internal error: {type(e).__name__}: {e}\n"
            f"  hint: this is a bug in {NAME}; the traceback follows\n"
            + "".join(traceback.format_exception(e))
        )
        raise SystemExit(contract.system_failure_code()) from None


def _host_problem(error: OSError) -> str:
    import errno

    where = f" ({error.filename})" if error.filename else ""
    hints = {
        errno.ENOSPC: "the disk is full: free space on it",
        errno.EDQUOT: "the disk quota is exhausted: free space or raise the quota",
        errno.EACCES: "permission denied: run as the user that owns the state dir and "
        "docker-machine's storage, or fix their owner",
        errno.EPERM: "operation not permitted: run as the user that owns the state dir",
        errno.EROFS: "the file system is read-only",
        errno.EMFILE: "too many open files: raise the process's file limit",
    }
    hint = hints.get(error.errno or 0, "a problem of the runner host, not of the job")
    return f"{error.strerror or error}{where}\n  hint: {hint}"


def _tell(text: str) -> None:
    """To stderr (the job log), never failing: the runner may be gone."""
    with suppress(OSError, ValueError):
        print(text, file=sys.stderr, flush=True)


RUNNER_STAGES = ("config", "prepare", "run", "cleanup")


class StdoutEnding:
    # Not a dataclass: importing dataclasses costs `run` more than its whole own work.
    def __init__(self) -> None:
        self.exit_code = 0  # an operator's `... | head` is a normal end; a stage's is not


@contextmanager
def closed_stdout_ends_quietly() -> Iterator[StdoutEnding]:
    """`gitlab-machine-driver ls | head -3`: the reader left, which is no error of ours."""
    ending = StdoutEnding()
    try:
        yield ending
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # some other pipe (a program we ran, a socket): a real error
        # Nothing more can reach the reader; the interpreter's final flush must not try.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(ending.exit_code) from None


def _stdout_closed() -> bool:
    """Whether our stdout is a pipe or socket whose reader has gone."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        events = poll.poll(0)
    except (OSError, ValueError):
        return False
    return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events)


def _log_error(error: BaseException) -> None:
    """Into the admin's log too, if a command set one up."""
    import structlog

    if structlog.is_configured():
        structlog.get_logger().error("failed", error=str(error), kind=type(error).__name__)


def parser() -> argparse.ArgumentParser:
    import argparse
    from pathlib import Path

    # --config works before or after the command: `doctor --config X` as well as
    # `--config X doctor`. Given after, it must not be reset by the top level's default.
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config",
        dest="config_path",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="the driver's config file (default: $GITLAB_MACHINE_DRIVER_CONFIG or "
        "/etc/gitlab-machine-driver/config.toml)",
    )

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        summary: str,
        description: str,
    ) -> argparse.ArgumentParser:
        return parent.add_parser(
            name,
            help=summary,
            description=f"{summary[:1].upper()}{summary[1:]}. {description}",
            parents=[config],
        )

    p = argparse.ArgumentParser(
        prog=NAME,
        description="GitLab Runner custom executor: one fresh docker-machine VM per job. "
        "config, prepare, run and cleanup are the runner's entrypoints; the other commands "
        "are for the admin and operators. `%(prog)s COMMAND --help` says more.",
    )
    p.add_argument("--version", action="version", version=f"{NAME} {__version__}")
    p.add_argument(
        "--config",
        dest="config_path",
        metavar="PATH",
        default=None,
        help="the driver's config file (default: $GITLAB_MACHINE_DRIVER_CONFIG or "
        "/etc/gitlab-machine-driver/config.toml)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command(
        sub,
        "config",
        "print the executor config JSON (config_exec)",
        "The runner's first call for a job: builds_dir, cache_dir, the machine name as "
        "hostname, and job_env pointing later stages at the job's state.",
    )
    command(
        sub,
        "prepare",
        "create and ready this job's machine (prepare_exec)",
        "Takes a machine from the warm pool or creates <name_prefix>-<job id> with "
        "docker-machine, pins its SSH host key, checks its tools and Docker engine; on any "
        "failure removes the machine.",
    )
    run = command(
        sub,
        "run",
        "run one stage's script in the machine (run_exec)",
        "Streams SCRIPT over SSH into the job's VM and runs it; the script's own exit code "
        "is the build's, a lost VM is a system failure.",
    )
    run.add_argument("script", help="the script file the runner wrote")
    run.add_argument("stage", help="the stage name, e.g. build_script")
    command(
        sub,
        "cleanup",
        "destroy this job's machine (cleanup_exec)",
        "Closes the SSH master, removes the machine and the job's state; safe to run any "
        "number of times.",
    )
    sweep = command(
        sub,
        "sweep",
        "remove machines whose jobs are over (timer, cron)",
        "Lists the machines this config owns and removes those whose job is proven over, "
        "saying why for each; run it from gitlab-machine-driver-sweep@<config>.timer.",
    )
    sweep.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    sweep.add_argument(
        "--forget",
        metavar="MACHINE",
        action="append",
        default=[],
        help="drop the tombstone of a force-removed MACHINE you deleted in the cloud by hand",
    )
    ls = command(
        sub,
        "ls",
        "list the machines this driver owns, with their jobs",
        "One line per machine: docker-machine's state, the driver's phase, job, project, "
        "age and address.",
    )
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    doctor = command(
        sub,
        "doctor",
        "check the set-up and say how to fix problems",
        "Checks the config, docker-machine (and whether it is GitLab's fork), its "
        "certificates, the SSH client, the state dir, the gitlab-runner binary and GitLab "
        "access; exits 1 if anything fails.",
    )
    doctor.add_argument(
        "--create", action="store_true", help="also create, use and destroy one machine"
    )
    doctor.add_argument(
        "--project",
        type=int,
        action="append",
        default=[],
        metavar="ID",
        help="also check that the [gitlab] token can read this project's jobs (repeatable)",
    )
    pool = command(
        sub,
        "pool",
        "the warm-pool service, or what it holds",
        "`pool run` keeps [pool] idle_count machines ready for jobs; `pool status` shows them.",
    )
    pool_sub = pool.add_subparsers(dest="action", required=True, metavar="ACTION")
    command(
        pool_sub,
        "run",
        "run the warm-pool service in the foreground",
        "Keeps ready, single-use machines for jobs to take (SIGTERM stops it); one per "
        "state dir, usually as gitlab-machine-driver-pool@<config>.service.",
    )
    pool_status = command(
        pool_sub,
        "status",
        "show the warm pool: service, machines by state, target, last errors",
        "Reads the pool's records in the state dir; works whether or not the service runs.",
    )
    pool_status.add_argument("--json", action="store_true", help="status as JSON")
    command(
        pool_sub,
        "drain",
        "remove the pool's ready machines now (the service stopped)",
        "For a pool turned off, or a service stopped without draining: removes every "
        "ready machine, several at once. Refused while a pool service runs.",
    )
    pool_replay = command(
        pool_sub,
        "replay",
        "replay a week of jobs through every pool policy and compare their cost",
        "Your jobs (--trace: a GitLab jobs export as CSV) or the built-in week, through "
        "docker+machine's idle counts and periods and the demand policy, with and without "
        "the lookahead, each at its cheapest setting reaching --target; touches nothing.",
    )
    pool_replay.add_argument(
        "--trace",
        type=Path,
        metavar="FILE",
        help="a CSV of jobs: a GitLab jobs export, or the replay's own shape "
        "(default: the built-in week)",
    )
    pool_replay.add_argument(
        "--runner",
        type=int,
        metavar="ID",
        help="with a GitLab export: this runner manager's id (other runners' jobs were "
        "taken elsewhere)",
    )
    pool_replay.add_argument("--target", type=float, default=0.95, help="hit rate compared at")
    pool_replay.add_argument("--create-median", type=float, default=90.0, help="seconds")
    pool_replay.add_argument("--create-p95", type=float, default=240.0, help="seconds")
    pool_replay.add_argument("--idle-time", type=float, default=600.0, help="seconds")
    pool_replay.add_argument("--seed", type=int, default=1, help="create times (and the week)")
    pool_replay.add_argument("--days", type=float, default=7.0, help="of the built-in week")
    pool_replay.add_argument("--jobs", type=int, default=1, help="replays run at once")
    pool_replay.add_argument(
        "--write-trace", type=Path, metavar="FILE", help="write the trace as CSV, and stop"
    )
    migrate = command(
        sub,
        "migrate",
        "turn gitlab-runner's docker+machine runners into driver configs",
        "Reads RUNNER_CONFIG_TOML and, for each docker+machine runner, shows its driver "
        "config, a patch for gitlab-runner's config.toml and the SHA-256 of the file read; "
        "secrets are shown as placeholders and written only to 0600 files with --output. "
        "Only --apply writes RUNNER_CONFIG_TOML, and only if its SHA-256 is still the one "
        "the preview printed.",
    )
    migrate.add_argument("runner_config", metavar="RUNNER_CONFIG_TOML")
    migrate.add_argument(
        "--output",
        metavar="DIR",
        help="write each runner's driver config, its secrets file and the patch into DIR",
    )
    migrate.add_argument(
        "--force", action="store_true", help="with --output: overwrite files already there"
    )
    migrate.add_argument(
        "--apply",
        action="store_true",
        help="write RUNNER_CONFIG_TOML (atomically, keeping a .bak-<time> copy, its mode and "
        "owner), if it is unchanged since the preview",
    )
    migrate.add_argument(
        "--expect-sha256",
        metavar="HASH",
        help="with --apply: the SHA-256 the preview printed for RUNNER_CONFIG_TOML",
    )
    job = command(
        sub,
        "job",
        "a job environment for running stages by hand",
        '`eval "$(%(prog)s init)"` sets up what the runner would give a stage; '
        '`eval "$(%(prog)s end)"` removes it after cleanup.',
    )
    job_sub = job.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    init = command(
        job_sub,
        "init",
        "write a job response file; print its environment for eval",
        "Prints shell `export` lines (JOB_RESPONSE_FILE and the exit-code variables) for "
        "`eval`; the files live in a private temp dir that `job end` removes.",
    )
    init.add_argument("--id", type=int, default=4242, help="the job id (default 4242)")
    init.add_argument("--project", type=int, default=1, help="the project id (default 1)")
    init.add_argument("--response", metavar="FILE", help="a saved response.json to use instead")
    command(
        job_sub,
        "end",
        "remove what `job init` made; print the unset lines for eval",
        "Run after `cleanup`: removes the job's temp dir and prints `unset` lines; refuses "
        "while the job still has a machine.",
    )
    ssh = command(
        sub,
        "ssh",
        "a shell (or COMMAND) in a job's VM, host key checked",
        "Connects through the job's pinned host key and SSH config; the session is "
        "recorded in the admin log.",
    )
    ssh.add_argument("target", metavar="JOB_ID|MACHINE")
    ssh.add_argument(
        "remote_command",
        metavar="COMMAND",
        nargs=argparse.REMAINDER,
        help="run this instead of a shell",
    )
    command(
        sub,
        "config-example",
        "print an example config file with every setting",
        "The example shipped with the package, commented; redirect it into "
        "/etc/gitlab-machine-driver/<name>.toml and edit.",
    )
    return p


class RunStage:
    """`[--config PATH] run SCRIPT STAGE`: the runner's call once per stage.

    A plain class: a dataclass or NamedTuple costs every stage milliseconds to define.
    """

    __slots__ = ("config_path", "script", "stage")

    def __init__(self, config_path: str | None, script: str, stage: str) -> None:
        self.config_path = config_path
        self.script = script
        self.stage = stage


def run_stage_args(argv: list[str]) -> RunStage | None:
    """The `run` stage's words, parsed without argparse.

    The runner starts `run` once per stage; importing argparse and building the
    full parser would cost every stage more than parsing these four words does.
    Anything else (help, other commands, odd spellings) goes through argparse.
    """
    config, rest = _leading_config(argv)
    if len(rest) == 3 and rest[0] == "run" and not any(a.startswith("-") for a in rest[1:]):
        return RunStage(config_path=config, script=rest[1], stage=rest[2])
    return None


def _leading_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """A leading `--config PATH` (or `--config=PATH`), and the words after it."""
    if argv[:1] == ["--config"] and len(argv) > 1:
        return argv[1], argv[2:]
    if argv[:1] and argv[0].startswith("--config="):
        return argv[0].split("=", 1)[1], argv[1:]
    return None, argv


def claimed_by_pool_service(argv: list[str]) -> bool:
    """`[--config PATH] prepare`, answered by the pool service (driver.stages.prepare_fast):
    before argparse and prepare's imports, which cost a pool claim most of its time."""
    config, rest = _leading_config(argv)
    if rest != ["prepare"]:
        return False
    from driver.stages.prepare_fast import claimed_by_pool

    return claimed_by_pool(config)


if TYPE_CHECKING:
    Command = Callable[[argparse.Namespace], int]


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
    if name == "config-example":
        from driver.commands.config_example import main as config_example

        return config_example
    raise AssertionError(f"no command {name!r}")  # argparse allows only the names above


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    stage = run_stage_args(words)
    if stage is not None:
        from driver.stages.run import run_stage

        with error_handler(), closed_stdout_ends_quietly() as ending:
            ending.exit_code = contract.system_failure_code()
            code = run_stage(stage.script, stage.stage, stage.config_path)
        # Once per stage: skip the interpreter's tear-down, nothing is left to clean.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if claimed_by_pool_service(words):
        return 0  # the service wrote the figures ([metrics] textfile too)
    with error_handler(), closed_stdout_ends_quietly() as ending:
        args = parser().parse_args(words)  # --help writes to stdout too
        if args.command in RUNNER_STAGES:
            ending.exit_code = contract.system_failure_code()
        try:
            code = command(args.command)(args)
        finally:
            if args.command in METRICS_CHANGED_BY:
                _write_metrics_textfile(args.config_path)
        sys.stdout.flush()  # a reader gone shows here, inside the handlers
        return code


# Commands that change the figures: after each, [metrics] textfile is rewritten.
METRICS_CHANGED_BY = ("prepare", "cleanup", "sweep")


def _write_metrics_textfile(config_path: str | None) -> None:
    """node_exporter's textfile, for hosts without the pool service (see metrics_textfile)."""
    try:
        from driver import metrics_textfile

        metrics_textfile.write_from_config(config_path)
    except Exception:  # noqa: S110 - figures must never change a stage's outcome
        pass


if __name__ == "__main__":
    sys.exit(main())
