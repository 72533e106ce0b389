"""doctor: check everything the driver depends on, and say how to fix what is wrong.

Each check prints `ok`, `WARN` (works, but not as it should: fix it when you
can) or `FAIL` (jobs will fail: fix it now), with what it found and the fix.
With --create it also makes one machine through the same code the stages
use, runs a command in it, checks its Docker engine, and destroys it, timing
each step.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from driver import log, process, ssh, state_owner
from driver.contract import clean_env, runner_env, synthetic_response
from driver.docker_machine import find_program
from driver.errors import CommandError, DriverError
from driver.settings import Settings, config_path, load_settings
from driver.state import JobDir, StateDir, pid_namespace, write_private

# `doctor --create`'s job ids: GitLab's job ids are 64-bit and count up from 1, so ids
# from 2**62 are never a real job's, and <prefix>-<id> stays a valid hostname.
DOCTOR_JOB_IDS = (2**62, 2**63 - 1)
HOSTNAME_MAX = 63  # docker-machine refuses longer machine names (a DNS label)
GITLAB_FORK = re.compile(r"version\s+(\S+?-gitlab\.\d+)")
JOBS_TO_ASK = 20  # how many of this host's jobs doctor asks GitLab about
REFUSALS = (401, 403, 404)


class Advice(Exception):
    """Works, but not as it should: a WARN line with the fix."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


@dataclass
class Context:
    settings: Settings
    config: Path
    projects: list[int] = field(default_factory=list)  # --project: also check these


Check = Callable[[Context], str]  # what it found; raises DriverError (FAIL) or Advice (WARN)


def main(args: argparse.Namespace) -> int:
    problems = warnings = 0

    def report(name: str, check: Callable[[], str]) -> bool:
        nonlocal problems, warnings
        try:
            found = check()
        except DriverError as e:
            problems += 1
            print(f"FAIL  {name}: {e}")
            return False
        except Advice as e:
            warnings += 1
            print(f"WARN  {name}: {e}")
            return True
        print(f"ok    {name}: {found}")
        return True

    loaded: list[Settings] = []
    path = config_path(args.config_path)
    if not report("config file", lambda: _load(path, loaded)):
        return 1
    context = Context(loaded[0], path, list(getattr(args, "project", []) or []))
    for name, check in CHECKS:
        report(name, lambda check=check: check(context))  # type: ignore[misc]
    if args.create and not problems:
        report("machine round trip", lambda: round_trip(context.settings, path))
    if problems:
        print(f"{problems} problem(s) found" + (f", {warnings} warning(s)" if warnings else ""))
    else:
        print(f"everything works; {warnings} warning(s)" if warnings else "everything looks fine")
    return 1 if problems else 0


def _load(path: Path, loaded: list[Settings]) -> str:
    loaded.append(load_settings(path))
    return f"{path} is valid"


def check_docker_machine(context: Context) -> str:
    program = find_program(context.settings.docker_machine.program)
    try:
        result = process.run([program, "--version"], timeout=30, check=False)
    except CommandError as e:
        raise DriverError(f"{program} --version did not answer: {e.message}") from None
    version = result.output.splitlines()[0] if result.output else "version unknown"
    fork = GITLAB_FORK.search(version)
    if fork is None:
        raise Advice(
            f"{program} is upstream docker-machine ({version}), unmaintained since 2019; "
            "GitLab's fork (versions like 0.16.2-gitlab.N) carries the fixes current clouds "
            "and drivers need",
            hint="install GitLab's fork: https://gitlab.com/gitlab-org/ci-cd/docker-machine"
            "/-/releases",
        )
    return f"{program} (GitLab's fork, {fork[1]})"


def check_storage(context: Context) -> str:
    storage = context.settings.docker_machine.storage_path
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
    verify_certificates(certs)
    return f"{storage}; its client certificate is signed by its CA and matches its key"


def verify_certificates(certs: Path) -> None:
    """The chain every engine connection relies on: cert.pem issued by ca.pem, each with
    its key. Two first creates at once (docker-machine takes no lock) can leave a client
    certificate signed by a CA that was then overwritten: every TLS check fails later."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    regenerate = (
        f"move {certs} away so the next create makes a consistent set; existing machines "
        "then need `docker-machine regenerate-certs`"
    )

    def load(name: str) -> bytes:
        try:
            return (certs / name).read_bytes()
        except OSError as e:
            raise DriverError(f"cannot read {certs / name}: {e.strerror}") from None

    try:
        ca = x509.load_pem_x509_certificate(load("ca.pem"))
        cert = x509.load_pem_x509_certificate(load("cert.pem"))
        ca_key = serialization.load_pem_private_key(load("ca-key.pem"), password=None)
        key = serialization.load_pem_private_key(load("key.pem"), password=None)
    except (ValueError, TypeError) as e:
        raise DriverError(
            f"a certificate or key in {certs} is unreadable: {e}", hint=regenerate
        ) from None

    def public(item: object) -> bytes:
        return item.public_key().public_bytes(  # type: ignore[attr-defined, no-any-return]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as e:
        raise DriverError(
            f"{certs}/cert.pem is not signed by {certs}/ca.pem ({type(e).__name__}): every "
            "connection to a machine's Docker engine will fail; this is docker-machine's "
            "race between two first creates",
            hint=regenerate,
        ) from None
    if public(key) != public(cert):
        raise DriverError(f"{certs}/key.pem is not the key of cert.pem", hint=regenerate)
    if public(ca_key) != public(ca):
        raise DriverError(f"{certs}/ca-key.pem is not the key of ca.pem", hint=regenerate)


def check_ssh(context: Context) -> str:
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


def check_state_dir(context: Context) -> str:
    state_dir = context.settings.state_dir
    ssh.check_control_path(JobDir(state_dir, DOCTOR_JOB_IDS[1]))
    where = f"state_dir {state_dir} (in {context.config.absolute()})"
    if not state_dir.exists():
        parent = nearest_existing(state_dir)
        problem = probe_writable(parent)
        if problem:
            raise DriverError(
                f"{where} does not exist, and it cannot be made: {parent} {problem}",
                hint=f"create it for the runner's user (mkdir -p {state_dir} && chmod 700 "
                f"{state_dir}), or set state_dir to a writable path",
            )
        return f"{state_dir} does not exist yet; prepare makes it (mode 0700) in {parent}"
    mode = stat.S_IMODE(state_dir.stat().st_mode)
    if mode & 0o077:
        raise DriverError(
            f"{where} is accessible to other users (mode {mode:o}); it holds "
            "SSH sockets and pinned keys",
            hint=f"chmod 700 {state_dir}",
        )
    problem = probe_writable(state_dir)
    if problem:
        raise DriverError(
            f"{where}: {state_dir} {problem}",
            hint="run the driver as the user that owns it, or set state_dir to a writable path",
        )
    jobs = list((state_dir / "jobs").glob("*"))
    return f"{state_dir} (mode {mode:o}, {len(jobs)} job(s) with state)"


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: where a mkdir -p starts creating."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe_writable(directory: Path) -> str:
    """ "" if this user can create files in ``directory``, else why not. A real file is
    made and removed: os.access() misses read-only mounts seen through some layers, and
    a root that is no root in a user namespace."""
    if not directory.is_dir():
        return "is not a directory"
    try:
        fd, name = tempfile.mkstemp(prefix=".gmd-doctor-", dir=directory)
    except OSError as e:
        if e.errno == errno.EROFS:
            return "is on a read-only file system"
        return f"is not writable by this user ({e.strerror})"
    os.close(fd)
    os.unlink(name)
    return ""


# Who refuses each file of secrets that other users may read, and what that costs.
JOBS_FAIL = "prepare, cleanup and sweep refuse it: every job fails and machines stay up"
CREDENTIAL_FILES = (
    ("[machine] env_file", JOBS_FAIL),
    ("[gitlab] token_file", JOBS_FAIL),
    ("[gitlab] webhook_secret_file", "`pool run` refuses to start: no warm pool"),
    ("[image] auth_config_file", "prepare refuses it: every image-mode job fails"),
)


def check_credential_files(context: Context) -> str:
    """The files of secrets: the driver refuses one that other users can read (see
    CREDENTIAL_FILES for who and what it costs); better told here, before a job."""
    settings = context.settings
    paths = (
        settings.machine.env_file,
        settings.gitlab.token_file,
        settings.gitlab.webhook_secret_file,
        settings.image.auth_config_file,
    )
    found = []
    for (setting, refused), path in zip(CREDENTIAL_FILES, paths, strict=True):
        if path is None:
            continue
        full = Path(os.path.abspath(path))
        where = f"{setting} {full} (in {context.config.absolute()})"
        try:
            mode = stat.S_IMODE(full.stat().st_mode)
            with full.open("rb"):
                pass
        except OSError as e:
            raise DriverError(
                f"{where} cannot be read: {e.strerror}",
                hint=f"create it, mode 0600, owned by the runner's user: "
                f"install -m 600 /dev/null {full}, then add its lines",
            ) from None
        if mode & 0o077:
            raise DriverError(
                f"{where} is readable by other users (mode {mode:o}); it holds secrets, so "
                f"{refused}",
                hint=f"chmod 600 {full}",
            )
        found.append(f"{setting} {full} (mode {mode:o})")
    return (
        ", ".join(found)
        if found
        else "none set (" + ", ".join(s for s, _ in CREDENTIAL_FILES) + ")"
    )


def check_state_owner(context: Context) -> str:
    """Another config with other [machine] settings on this state dir: jobs are refused."""
    recorded = state_owner.read_owner(context.settings.state_dir)
    state_owner.check(context.settings, context.config, recorded)
    if recorded is None:
        return "no config has used it yet; the first prepare, pool or sweep records this one"
    if recorded.config == str(Path(os.path.abspath(context.config))):
        return "used by this config only"
    return f"also used by {recorded.config}, whose [machine] settings are the same"


def check_runner_processes(context: Context) -> str:
    """The sweeper tells a dead runner by its PIDs: only in the runner's PID namespace."""
    mine = pid_namespace()
    records = [r for r in StateDir(context.settings.state_dir).job_records().values() if r]
    unseen = [r.job_id for r in records if r.owners and r.pid_ns and r.pid_ns != mine]
    if unseen:
        raise Advice(
            f"the runner of {len(unseen)} job(s) (e.g. job {unseen[0]}) runs in another PID "
            f"namespace than this one: run here, the sweeper cannot see the runner's processes, "
            "so it never takes a dead runner for proof; their machines go when GitLab says "
            "their job ended, or after [sweeper] max_age",
            hint="run the sweeper (its timer) where the runner runs: in the same container, "
            "or give the runner's container the host's PID namespace (--pid=host)",
        )
    return f"this host sees the runner of every job here ({len(records)} job(s))"


def check_runner_binary(context: Context) -> str:
    settings = context.settings
    binary = settings.gitlab_runner_binary
    if binary is None:
        image = getattr(settings, "image", None)
        if image is not None and image.container_mode:
            return "not needed: in image mode the helper image uploads artifacts and caches"
        raise Advice(
            "gitlab_runner_binary is not set: in VMs without gitlab-runner, artifacts and "
            "caches are silently skipped (the job still succeeds)",
            hint='set gitlab_runner_binary = "/usr/bin/gitlab-runner" (the runner host\'s '
            "binary; it is uploaded into VMs that lack one)",
        )
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        found = shutil.which("gitlab-runner")
        raise DriverError(
            f"gitlab_runner_binary {binary} (in {context.config.absolute()}) is not an "
            "executable file",
            hint=f"set gitlab_runner_binary = {json.dumps(found)}: gitlab-runner on this host"
            if found
            else "install gitlab-runner on this host (GitLab's package puts it in /usr/bin), "
            "or comment gitlab_runner_binary out: VMs that lack gitlab-runner then skip "
            "artifacts and caches, and image mode needs none",
        )
    return f"{binary} is uploaded into VMs that lack one"


def check_metrics_textfile(context: Context) -> str:
    settings = context.settings
    path = settings.metrics.textfile
    if path is None:
        if settings.pool.metrics_address:
            return f"not set; the pool service serves /metrics on {settings.pool.metrics_address}"
        return "not set: no Prometheus figures from this host ([metrics] textfile)"
    if not path.parent.is_dir():
        raise DriverError(
            f"[metrics] textfile {path}: its directory {path.parent} does not exist",
            hint="point it into node_exporter's --collector.textfile.directory",
        )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise DriverError(
            f"[metrics] textfile {path}: {path.parent} is not writable by this user",
            hint="let the runner's user write there, or choose another directory",
        )
    if path.suffix != ".prom":
        raise Advice(
            f"[metrics] textfile {path} does not end in .prom: node_exporter ignores it",
            hint=f"name it {path.with_suffix('.prom').name}",
        )
    return f"{path}, rewritten after each prepare, cleanup and sweep"


def local_jobs(state_dir: Path) -> list[tuple[int, int]]:
    """(project id, job id) of the jobs with machines on this host, newest first."""
    found = []
    for record in (state_dir / "jobs").glob("*/state.json"):
        try:
            data = json.loads(record.read_text())
            found.append((record.stat().st_mtime, int(data["project_id"]), int(data["job_id"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return [(project, job) for _, project, job in sorted(found, reverse=True)]


def check_gitlab(context: Context) -> str:
    settings = context.settings
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

    def answer(call: Callable[[], object]) -> int:
        try:
            call()
        except exceptions.GitlabError as e:
            return int(e.response_code or 0)
        except Exception:
            return 0  # unreachable, timed out: not the token's fault
        return 200

    hint = (
        "the [gitlab] token needs read_api on every project this runner serves (a project "
        "or group access token with the Reporter role, or a user who is a member), and url "
        "must be GitLab's own address (not a proxy that answers 404)"
    )
    for project in context.projects:
        code = answer(
            lambda p=project: client.projects.get(p, lazy=True).jobs.list(  # type: ignore[misc]
                per_page=1, get_all=False
            )
        )
        if code in REFUSALS:
            raise DriverError(
                f"GitLab answered {code} for project {project}'s jobs: the token cannot read "
                "them, so the sweeper can never prove that a job of that project is over",
                hint=hint,
            )
    jobs = local_jobs(settings.state_dir)[:JOBS_TO_ASK]
    refused = {}
    for project, job in jobs:
        code = answer(
            lambda p=project, j=job: client.projects.get(p, lazy=True).jobs.get(j)  # type: ignore[misc]
        )
        if code in REFUSALS:
            refused[(project, job)] = code
    checked = f"{len(jobs)} job(s) of machines on this host" if jobs else ""
    if context.projects:
        checked = ", ".join(filter(None, [checked, f"project(s) {context.projects}"]))
    if refused:
        codes = "/".join(sorted({str(c) for c in refused.values()}))
        projects = ", ".join(str(p) for p in sorted({p for p, _ in refused}))
        message = (
            f"GitLab answered {codes} for {len(refused)} of {len(jobs)} job(s) of machines on "
            f"this host (project(s) {projects}): a configuration problem, not finished jobs; "
            "the sweeper keeps such machines until max_age"
        )
        if len(refused) == len(jobs):
            raise DriverError(message, hint=hint)
        raise Advice(message, hint=hint)
    if not checked:
        return (
            f"{settings.gitlab.url} (GitLab {version}), token accepted; no job on this host "
            "to check it against (`doctor --project ID` checks a project's jobs)"
        )
    return f"{settings.gitlab.url} (GitLab {version}), token reads the jobs of {checked}"


def check_pool_lookahead(context: Context) -> str:
    """Whether the pool can have machines ready for each pipeline's next stage."""
    pool, gitlab = context.settings.pool, context.settings.gitlab
    if not pool.enabled:
        return "off (no pool)"
    if not pool.lookahead:
        return "off ([pool] lookahead = false)"
    if not gitlab.configured:
        guess = "what its policy guesses"
        if pool.learn_shapes:
            guess += " and what the pipeline shapes it learns from the jobs here foretell"
        raise Advice(
            "off: [gitlab] is not set, so the pool cannot ask GitLab for each "
            f"pipeline's next jobs and keeps only {guess}",
            hint="set [gitlab] url and token_file (a token with read_api)",
        )
    return f"on: the pool service asks {gitlab.url} for the next stage of pipelines here"


def doctor_job_id() -> int:
    """A job id no real job has (see DOCTOR_JOB_IDS), random so two doctors never meet."""
    low, high = DOCTOR_JOB_IDS
    return low + secrets.randbelow(high - low)


def round_trip(settings: Settings, config: Path) -> str:
    """One synthetic job through the real entrypoints: prepare, run, cleanup, timed."""
    job_id = doctor_job_id()
    machine = settings.machine_name(job_id)
    if len(machine) > HOSTNAME_MAX:
        raise DriverError(
            f"machine name {machine} is longer than docker-machine's {HOSTNAME_MAX} characters",
            hint="shorten [machine] name_prefix",
        )
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
        timings: list[str] = [f"machine {machine}"]
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
    ("state dir owner", check_state_owner),
    ("credential files", check_credential_files),
    ("runner processes", check_runner_processes),
    ("gitlab-runner binary", check_runner_binary),
    ("metrics textfile", check_metrics_textfile),
    ("GitLab API", check_gitlab),
    ("pool lookahead", check_pool_lookahead),
]
