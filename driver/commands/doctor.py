"""doctor: check everything the driver depends on, and say how to fix what is wrong.

With --create it also makes one machine through the same code the stages
use, runs a command in it, checks its Docker engine, and destroys it, timing
each step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from driver import log, process, ssh
from driver.contract import clean_env, runner_env, synthetic_response
from driver.errors import CommandError, DriverError
from driver.settings import Settings, config_path, load_settings
from driver.state import JobDir, write_private

Check = Callable[[Settings], str]  # returns what it found; raises DriverError with the fix


def main(args: argparse.Namespace) -> int:
    problems = 0

    def report(name: str, check: Callable[[], str]) -> bool:
        nonlocal problems
        try:
            found = check()
        except DriverError as e:
            problems += 1
            print(f"FAIL  {name}: {e}")
            return False
        print(f"ok    {name}: {found}")
        return True

    loaded: list[Settings] = []
    path = config_path(args.config_path)
    if not report("config file", lambda: _load(path, loaded)):
        return 1
    settings = loaded[0]
    for name, check in CHECKS:
        report(name, lambda check=check: check(settings))  # type: ignore[misc]
    if args.create and not problems:
        report("machine round trip", lambda: round_trip(settings, path))
    print(f"{problems} problem(s) found" if problems else "everything looks fine")
    return 1 if problems else 0


def _load(path: Path, loaded: list[Settings]) -> str:
    loaded.append(load_settings(path))
    return f"{path} is valid"


def check_docker_machine(settings: Settings) -> str:
    program = settings.docker_machine.program
    if shutil.which(program) is None:
        raise DriverError(
            f"{program!r} is not found",
            hint="install GitLab's docker-machine fork and put it on PATH, or set "
            "[docker_machine] program to its full path",
        )
    try:
        result = process.run([program, "--version"], timeout=30, check=False)
    except CommandError as e:
        raise DriverError(f"{program} --version did not answer: {e.message}") from None
    version = result.output.splitlines()[0] if result.output else "version unknown"
    return f"{shutil.which(program)} ({version})"


def check_storage(settings: Settings) -> str:
    storage = settings.docker_machine.storage_path
    if not storage.exists():
        return f"{storage} does not exist yet; the first create makes it"
    if not os.access(storage, os.W_OK):
        raise DriverError(
            f"storage path {storage} is not writable by this user",
            hint="run the driver as the user that owns it, or chown it",
        )
    certs = storage / "certs"
    have = sorted(p.name for p in certs.glob("*.pem")) if certs.is_dir() else []
    if not have:
        return f"{storage}; no certificates yet (the first create makes them, one at a time)"
    missing = {"ca.pem", "ca-key.pem", "cert.pem", "key.pem"} - set(have)
    if missing:
        raise DriverError(
            f"{certs} lacks {', '.join(sorted(missing))}: a create was interrupted "
            "while making them",
            hint=f"remove {certs} so the next create makes a consistent set "
            "(existing machines then need new certificates: docker-machine regenerate-certs)",
        )
    return f"{storage} with its certificates"


def check_ssh(settings: Settings) -> str:
    if shutil.which("ssh") is None:
        raise DriverError(
            "the OpenSSH client `ssh` is not installed", hint="apt install openssh-client"
        )
    result = process.run(["ssh", "-V"], timeout=10, check=False)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", result.output)
    if not match or (int(match[1]), int(match[2])) < (7, 6):
        raise DriverError(
            f"OpenSSH 7.6 or newer is needed (for StrictHostKeyChecking=accept-new); "
            f"found {result.output or 'unknown'}",
            hint="upgrade openssh-client",
        )
    return result.output.splitlines()[0]


def check_state_dir(settings: Settings) -> str:
    state_dir = settings.state_dir
    ssh.check_control_path(JobDir(state_dir, 10**12))
    if not state_dir.exists():
        return f"{state_dir} does not exist yet; prepare makes it (mode 0700)"
    mode = stat.S_IMODE(state_dir.stat().st_mode)
    if mode & 0o077:
        raise DriverError(
            f"state dir {state_dir} is accessible to other users (mode {mode:o}); it holds "
            "SSH sockets and pinned keys",
            hint=f"chmod 700 {state_dir}",
        )
    if not os.access(state_dir, os.W_OK):
        raise DriverError(f"state dir {state_dir} is not writable by this user")
    jobs = list((state_dir / "jobs").glob("*"))
    return f"{state_dir} (mode {mode:o}, {len(jobs)} job(s) with state)"


def check_runner_binary(settings: Settings) -> str:
    binary = settings.gitlab_runner_binary
    if binary is None:
        return "not set: VMs without gitlab-runner skip cache and artifact stages"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise DriverError(
            f"gitlab_runner_binary {binary} is not an executable file",
            hint="point it at the runner host's gitlab-runner (e.g. /usr/bin/gitlab-runner)",
        )
    return f"{binary} is uploaded into VMs that lack one"


def check_gitlab(settings: Settings) -> str:
    if not settings.gitlab.configured:
        return "not configured: the sweeper decides by age and local state only"
    import gitlab
    from gitlab import exceptions

    client = gitlab.Gitlab(
        settings.gitlab.url,
        private_token=settings.gitlab.read_token() or None,
        timeout=settings.gitlab.timeout,
    )
    try:
        version, _ = client.version()
        client.auth()
    except exceptions.GitlabAuthenticationError:
        raise DriverError(
            f"GitLab at {settings.gitlab.url} refused the token",
            hint="use a token with the read_api scope",
        ) from None
    except Exception as e:
        raise DriverError(f"cannot reach GitLab at {settings.gitlab.url}: {e}") from None
    return f"{settings.gitlab.url} (GitLab {version}), token accepted"


def round_trip(settings: Settings, config: Path) -> str:
    """One synthetic job through the real entrypoints: prepare, run, cleanup, timed."""
    job_id = 900_000_000 + os.getpid() % 100_000_000
    with tempfile.TemporaryDirectory(prefix="gmd-doctor-") as work:
        response = Path(work) / "response.json"
        write_private(response, json.dumps(synthetic_response(job_id, 1)))
        script = Path(work) / "script"
        script.write_text(
            "uname -sr; if command -v docker >/dev/null; then "
            "docker version --format 'engine {{.Server.Version}}'; fi\n"
        )
        env = {**clean_env(), **runner_env(Path(work), response)}
        driver = [sys.executable, "-m", "driver", "--config", str(config)]
        budget = settings.create.timeout * settings.create.attempts + settings.ssh.ready_timeout
        timings: list[str] = []
        try:
            for name, argv, timeout in (
                ("prepare", ["prepare"], budget + settings.docker.ready_timeout),
                ("run", ["run", str(script), "build_script"], 120.0),
            ):
                timer = log.Timer()
                result = process.run([*driver, *argv], timeout=timeout, env=env, what=name)
                timings.append(f"{name} {timer.seconds:g}s")
                if name == "run":
                    timings.append(f"in the VM: {' / '.join(result.stdout.split(chr(10))[:2])}")
        finally:
            timer = log.Timer()
            process.run([*driver, "cleanup"], timeout=settings.cleanup.timeout, env=env)
            timings.append(f"cleanup {timer.seconds:g}s")
    return ", ".join(timings)


CHECKS: list[tuple[str, Check]] = [
    ("docker-machine", check_docker_machine),
    ("docker-machine storage", check_storage),
    ("ssh client", check_ssh),
    ("state dir", check_state_dir),
    ("gitlab-runner binary", check_runner_binary),
    ("GitLab API", check_gitlab),
]
