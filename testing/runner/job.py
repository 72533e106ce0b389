"""The CI job as gitlab-runner sees it: payload, variables and stage scripts.

Everything here is pure: it turns a `Job` plus the runner's view of one
preparation attempt (`BuildContext`) into the `response.json` payload, the job
variables and the bash scripts that the runner hands to run_exec. The shape
follows gitlab-runner's bash shell writer (see /work/shared/custom-executor.md).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

ANSI_BOLD_GREEN = "\x1b[32;1m"
ANSI_YELLOW = "\x1b[0;33m"
ANSI_RESET = "\x1b[0;m"

When = Literal["on_success", "on_failure", "always"]

# Stages that run after a failure or a cancel; everything else is skipped then.
POST_STAGES = frozenset(
    {
        "after_script",
        "archive_cache",
        "archive_cache_on_failure",
        "upload_artifacts_on_success",
        "upload_artifacts_on_failure",
        "cleanup_file_variables",
    }
)
USER_STAGE_PREFIX = "step_"

_SHELL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters that need no quoting in bash (no globbing, expansion or splitting).
_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./:@%+=,-]+")
# Byte -> text inside $'...': printable ASCII stays, the rest becomes \xHH.
_ANSI_C_TABLE: dict[int, str] = {i: f"\\x{i:02x}" for i in range(256) if not 0x20 <= i < 0x7F}
_ANSI_C_TABLE[ord("\\")] = "\\\\"
_ANSI_C_TABLE[ord("'")] = "\\'"


@dataclass(frozen=True)
class Variable:
    """One entry of the job payload's `variables` list."""

    key: str
    value: str
    masked: bool = False
    file: bool = False
    public: bool = True
    raw: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "public": self.public,
            "masked": self.masked,
            "file": self.file,
            "raw": self.raw,
        }


@dataclass(frozen=True)
class Service:
    """One `services:` entry, as GitLab sends it (gitlab: job_request/service.rb)."""

    name: str
    alias: str = ""  # several may be given, separated by commas or spaces
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    variables: list[Variable] = field(default_factory=list)
    pull_policy: list[str] | None = None
    docker: dict[str, Any] | None = None  # executor_opts.docker: platform, user

    def payload(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alias": self.alias,
            "command": self.command,
            "entrypoint": self.entrypoint,
            "ports": [],
            "variables": [v.payload() for v in self.variables],
            "pull_policy": self.pull_policy,
            **({"executor_opts": {"docker": self.docker}} if self.docker else {}),
        }


def _new_job_id() -> int:
    # Random rather than a shared counter: jobs made in parallel threads must differ.
    return 1_000_000 + secrets.randbelow(900_000_000)


def _new_token() -> str:
    return "glcbt-64_" + secrets.token_hex(12)


@dataclass
class Job:
    """A CI job as GitLab would hand it to the runner.

    `variables` come after the predefined ones, as in GitLab's payload, so a
    variable named like a predefined one (say `CI_JOB_ID`) wins in the
    environment (`CUSTOM_ENV_CI_JOB_ID`) and in the script's exports, while the
    payload's `id` stays the real one. Keys may be anything but empty or
    contain `=` or NUL (which no environment can carry); values anything but NUL.
    """

    id: int = field(default_factory=_new_job_id)
    project_id: int = 42
    pipeline_id: int = 4242
    token: str = field(default_factory=_new_token)
    name: str = "test-job"
    stage: str = "test"
    namespace: str = "group"
    project_name: str = "project"
    server_url: str = "https://gitlab.example.com"
    ref: str = "main"
    sha: str | None = None
    before_sha: str = "0" * 40
    # A local git repository (path or file:// URL) to clone in get_sources;
    # None creates the project dir without any network access.
    repo_url: str | None = None
    script: list[str] = field(default_factory=lambda: ['echo "Hello from $CI_JOB_NAME"'])
    after_script: list[str] = field(default_factory=list)
    # Further steps, run after build_script as `step_<name>`.
    steps: dict[str, list[str]] = field(default_factory=dict)
    variables: list[Variable] = field(default_factory=list)
    cache: bool = False
    cache_when: When = "always"
    artifacts: bool = False
    artifacts_when: When = "always"
    artifact_paths: list[str] = field(default_factory=lambda: ["out/"])
    # Ids of earlier jobs whose artifacts this job downloads.
    dependencies: list[int] = field(default_factory=list)
    allow_failure: bool | list[int] = False
    timeout: float = 3600.0
    image: str | None = None
    # image: entrypoint, pull_policy and executor_opts.docker (platform, user)
    image_entrypoint: list[str] | None = None
    image_pull_policy: list[str] | None = None
    image_docker: dict[str, Any] | None = None
    services: list[str | Service] = field(default_factory=list)
    # The project's container registry (host:port): its login is among the credentials.
    registry: str | None = None

    def service_specs(self) -> list[Service]:
        return [s if isinstance(s, Service) else Service(s) for s in self.services]

    @property
    def project_path(self) -> str:
        return f"{self.namespace}/{self.project_name}"

    @property
    def commit_sha(self) -> str:
        return self.sha or "1f2e3d4c5b6a79880123456789abcdef01234567"

    def user_stages(self) -> list[tuple[str, list[str]]]:
        """The user's steps in order, by the stage name run_exec receives."""
        stages = [("build_script", self.script)]
        stages += [(USER_STAGE_PREFIX + name, cmds) for name, cmds in self.steps.items()]
        return stages

    def allows_failure(self, exit_code: int) -> bool:
        if isinstance(self.allow_failure, bool):
            return self.allow_failure
        return exit_code in self.allow_failure

    def masked_values(self) -> list[str]:
        """What the runner replaces with [MASKED] in the job log."""
        values = {self.token}
        values.update(v.value for v in self.variables if v.masked)
        return [v for v in values if v]

    def validate(self) -> None:
        for var in self.variables:
            if not var.key or "=" in var.key or "\0" in var.key:
                raise ValueError(f"variable key {var.key!r} cannot be put in an environment")
            if "\0" in var.value:
                raise ValueError(f"variable {var.key!r} holds a NUL byte")


@dataclass(frozen=True)
class BuildContext:
    """The runner's side of one preparation attempt (TOML merged with config_exec)."""

    builds_dir: str | None
    cache_dir: str | None
    hostname: str
    builds_dir_is_shared: bool = False
    concurrent_id: int = 0
    runner_id: int = 7
    short_token: str = "t3stTok3n"
    runner_description: str = "gitlab-runner emulation"
    runner_version: str = "17.9.0"
    runner_revision: str = "c6b7e7a1"
    runner_tags: tuple[str, ...] = ()
    # `[[runners]] environment`: "KEY=VALUE" entries, added to every job's variables.
    environment: tuple[str, ...] = ()
    # Resolved feature flags the runner exports (a few of them; all are FF_*=true|false).
    feature_flags: tuple[tuple[str, str], ...] = (
        ("FF_NETWORK_PER_BUILD", "false"),
        ("FF_USE_FASTZIP", "false"),
        ("FF_SCRIPT_SECTIONS", "false"),
    )

    def project_dir(self, job: Job) -> str | None:
        if self.builds_dir is None:
            return None
        parts = [self.builds_dir.rstrip("/") or "/"]
        if self.builds_dir_is_shared:
            parts += [self.short_token, str(self.concurrent_id)]
        parts.append(job.project_path)
        return "/".join(parts)


# ---------------------------------------------------------------- variables


def predefined_variables(job: Job, ctx: BuildContext) -> list[Variable]:
    """The CI_* variables GitLab computes and sends in the payload's `variables`."""
    host = job.server_url.split("://", 1)[-1].rstrip("/")
    project_url = f"{job.server_url}/{job.project_path}"
    repo_url = job.repo_url or f"https://gitlab-ci-token:{job.token}@{host}/{job.project_path}.git"
    result = [
        Variable("CI_PIPELINE_ID", str(job.pipeline_id)),
        Variable("CI_PIPELINE_URL", f"{project_url}/-/pipelines/{job.pipeline_id}"),
        Variable("CI_PIPELINE_SOURCE", "push"),
        Variable("CI_JOB_ID", str(job.id)),
        Variable("CI_JOB_URL", f"{project_url}/-/jobs/{job.id}"),
        Variable("CI_JOB_TOKEN", job.token, masked=True, public=False),
        Variable("CI_JOB_NAME", job.name),
        Variable("CI_JOB_STAGE", job.stage),
        Variable("CI_JOB_TIMEOUT", str(int(job.timeout))),
        Variable("CI_COMMIT_SHA", job.commit_sha),
        Variable("CI_COMMIT_SHORT_SHA", job.commit_sha[:8]),
        Variable("CI_COMMIT_BEFORE_SHA", job.before_sha),
        Variable("CI_COMMIT_REF_NAME", job.ref),
        Variable("CI_COMMIT_BRANCH", job.ref),
        Variable("CI_PROJECT_ID", str(job.project_id)),
        Variable("CI_PROJECT_NAME", job.project_name),
        Variable("CI_PROJECT_NAMESPACE", job.namespace),
        Variable("CI_PROJECT_PATH", job.project_path),
        Variable("CI_PROJECT_URL", project_url),
        Variable("CI_REPOSITORY_URL", repo_url, public=False),
        Variable("CI_SERVER_URL", job.server_url),
        Variable("CI_SERVER_HOST", host),
        Variable("CI_REGISTRY_USER", "gitlab-ci-token"),
        Variable("CI_REGISTRY_PASSWORD", job.token, masked=True, public=False),
        Variable("GITLAB_USER_LOGIN", "emulated-user"),
        Variable("GITLAB_CI", "true"),
        Variable("CI", "true"),
        # GitLab knows the runner that picked the job (gitlab: Ci::Runner#predefined_variables).
        Variable("CI_RUNNER_ID", str(ctx.runner_id)),
        Variable("CI_RUNNER_DESCRIPTION", ctx.runner_description),
        Variable("CI_RUNNER_TAGS", json.dumps(list(ctx.runner_tags))),
    ]
    if job.registry:
        result.append(Variable("CI_REGISTRY", job.registry))
        result.append(Variable("CI_REGISTRY_IMAGE", f"{job.registry}/{job.project_path}"))
    return result


def runner_variables(job: Job, ctx: BuildContext) -> tuple[list[Variable], list[Variable]]:
    """What gitlab-runner adds itself (`Build.GetAllVariables`): never in the payload,
    only in the environment (CUSTOM_ENV_*) and the scripts' exports.

    Returned as (before, after) the payload's variables, the order GetAllVariables
    appends them in: `[[runners]] environment`, the default, feature-flag and TLS
    variables come before GitLab's (a job variable of the same name wins); the
    shared-environment flag and the runner's version after them
    (shared/custom-executor.md, "What is in JOB_RESPONSE_FILE").
    """
    before = [
        Variable(key, value, public=True)
        for key, _, value in (entry.partition("=") for entry in ctx.environment)
    ]
    before.append(Variable("CI_RUNNER_SHORT_TOKEN", ctx.short_token))
    project_dir = ctx.project_dir(job)
    if ctx.builds_dir is not None and project_dir is not None:
        before.append(Variable("CI_BUILDS_DIR", ctx.builds_dir))
        before.append(Variable("CI_PROJECT_DIR", project_dir))
    before += [
        Variable("CI_CONCURRENT_ID", str(ctx.concurrent_id)),
        Variable("CI_CONCURRENT_PROJECT_ID", str(ctx.concurrent_id)),
        Variable("CI_SERVER", "yes"),
    ]
    before += [Variable(key, value) for key, value in ctx.feature_flags]
    if job.image:
        before.append(Variable("CI_JOB_IMAGE", job.image))
    after = [
        Variable("CI_SHARED_ENVIRONMENT", "true"),
        Variable("CI_RUNNER_VERSION", ctx.runner_version),
        Variable("CI_RUNNER_REVISION", ctx.runner_revision),
        Variable("CI_RUNNER_EXECUTABLE_ARCH", "linux/amd64"),
    ]
    return before, after


def payload_variables(job: Job, ctx: BuildContext) -> list[Variable]:
    """The payload's `variables`, exactly as GitLab sends them: predefined, then the job's."""
    return predefined_variables(job, ctx) + list(job.variables)


def job_variables(job: Job, ctx: BuildContext) -> list[Variable]:
    """Every variable the runner gives executables and scripts, later entries winning."""
    before, after = runner_variables(job, ctx)
    return before + payload_variables(job, ctx) + after


def services_json(job: Job) -> str:
    """CUSTOM_ENV_CI_JOB_SERVICES: a JSON array, or empty without services.

    Only the first alias; variables (expanded) only when there are some (runner 19.0+).
    """
    if not job.services:
        return ""
    entries = []
    for s in job.service_specs():
        entry: dict[str, Any] = {
            "name": s.name,
            "alias": (s.alias.replace(",", " ").split() or [""])[0],
            "entrypoint": s.entrypoint,
            "command": s.command,
        }
        if s.variables:
            entry["variables"] = {v.key: v.value for v in s.variables}
        entries.append(entry)
    return json.dumps(entries)


# ------------------------------------------------------------------ payload


def job_payload(job: Job, ctx: BuildContext) -> dict[str, Any]:
    """The job response as GitLab sends it; the runner writes it to response.json.

    gitlab-runner writes it unchanged (executors/custom/custom.go
    createJobResponseFile): none of the runner's own variables are in it.
    """
    steps: list[dict[str, Any]] = [
        {
            "name": "script" if stage == "build_script" else stage[len(USER_STAGE_PREFIX) :],
            "script": cmds,
            "timeout": int(job.timeout),
            "when": "on_success",
            "allow_failure": bool(job.allow_failure),
        }
        for stage, cmds in job.user_stages()
    ]
    if job.after_script:
        steps.append(
            {
                "name": "after_script",
                "script": job.after_script,
                "timeout": int(job.timeout),
                "when": "always",
                "allow_failure": True,
            }
        )
    return {
        "id": job.id,
        "token": job.token,
        "allow_git_fetch": True,
        "job_info": {
            "id": job.id,
            "name": job.name,
            "stage": job.stage,
            "project_id": job.project_id,
            "project_name": job.project_name,
        },
        "git_info": {
            "repo_url": _variable_value(job, ctx, "CI_REPOSITORY_URL"),
            "ref": job.ref,
            "sha": job.commit_sha,
            "before_sha": job.before_sha,
            "ref_type": "branch",
            "refspecs": [f"+refs/heads/{job.ref}:refs/remotes/origin/{job.ref}"],
            "depth": 20,
        },
        "runner_info": {"timeout": int(job.timeout), "runner_session_url": ""},
        "variables": [v.payload() for v in payload_variables(job, ctx)],
        "steps": steps,
        "image": _image_payload(job),
        "services": [s.payload() for s in job.service_specs()],
        "artifacts": _artifacts_payload(job),
        "cache": _cache_payload(job),
        "credentials": _credentials_payload(job),
        "dependencies": [
            {
                "id": dep,
                "token": job.token,
                "name": f"build-{dep}",
                "artifacts_file": {"filename": "artifacts.zip", "size": 1024},
            }
            for dep in job.dependencies
        ],
        "features": {"trace_sections": True, "failure_reasons": ["script_failure"]},
    }


def _image_payload(job: Job) -> dict[str, Any]:
    """As gitlab: job_request/image.rb: name, entrypoint, ports, executor_opts, pull_policy."""
    image: dict[str, Any] = {
        "name": job.image or "",
        "entrypoint": job.image_entrypoint,
        "ports": [],
        "pull_policy": job.image_pull_policy,
    }
    if job.image_docker:
        image["executor_opts"] = {"docker": job.image_docker}
    return image


def _credentials_payload(job: Job) -> list[dict[str, Any]]:
    """The project's registry (when it has one) and the dependency proxy, with the job
    token (gitlab: lib/gitlab/ci/build/credentials/registry/*.rb)."""
    hosts = [job.registry] if job.registry else []
    hosts.append(job.server_url.split("://", 1)[-1])
    return [
        {"type": "registry", "url": host, "username": "gitlab-ci-token", "password": job.token}
        for host in hosts
    ]


def _variable_value(job: Job, ctx: BuildContext, key: str) -> str:
    return next(v.value for v in predefined_variables(job, ctx) if v.key == key)


def _artifacts_payload(job: Job) -> list[dict[str, Any]] | None:
    if not job.artifacts:
        return None
    return [
        {
            "name": "",
            "untracked": False,
            "paths": job.artifact_paths,
            "when": job.artifacts_when,
            "artifact_type": "archive",
            "artifact_format": "zip",
            "expire_in": "",
        }
    ]


def _cache_payload(job: Job) -> list[dict[str, Any]]:
    if not job.cache:
        return []
    return [
        {
            "key": "default",
            "untracked": False,
            "policy": "pull-push",
            "paths": ["cache/"],
            "when": job.cache_when,
        }
    ]


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def output_lines(text: str) -> list[str]:
    """Whole lines of a job log or a stage's output, colour codes and CRs removed.

    Check a job's output against these, never with a substring test on the log: the
    runner echoes each command before it runs it (`$ echo marker`), so "marker" is
    in the log whether or not the command printed it.
    """
    return [_ANSI_ESCAPE.sub("", line).rstrip("\r") for line in text.splitlines()]


# ------------------------------------------------------------- shell quoting


def shell_quote(value: str) -> str:
    """Quote for bash as the runner's ShellEscape does: plain when safe, else $'...'.

    Every byte except NUL round-trips exactly, whatever the locale.
    """
    if value == "":
        return "''"
    if _SHELL_SAFE.fullmatch(value):
        return value
    raw = value.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ValueError("bash cannot hold a NUL byte")
    return "$'" + raw.decode("latin-1").translate(_ANSI_C_TABLE) + "'"


def single_quote(text: str) -> str:
    """Single-quote for bash, closing and reopening the quote around each `'`."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _echo(color: str, text: str) -> str:
    return "echo " + shell_quote(color + text + ANSI_RESET)


def _notice(text: str) -> str:
    return _echo(ANSI_BOLD_GREEN, text)


def _warning(text: str) -> str:
    return _echo(ANSI_YELLOW, text)


# ------------------------------------------------------------- stage plan


def stage_title(stage: str) -> str:
    """The runner's own job-log line announcing a stage."""
    titles = {
        "prepare_script": "Preparing environment",
        "get_sources": "Getting source from Git repository",
        "restore_cache": "Restoring cache",
        "download_artifacts": "Downloading artifacts",
        "build_script": 'Executing "step_script" stage of the job script',
        "after_script": "Running after_script",
        "archive_cache": "Saving cache for successful job",
        "archive_cache_on_failure": "Saving cache for failed job",
        "upload_artifacts_on_success": "Uploading artifacts for successful job",
        "upload_artifacts_on_failure": "Uploading artifacts for failed job",
        "cleanup_file_variables": "Cleaning up project directory and file based variables",
    }
    if stage in titles:
        return titles[stage]
    return f'Executing "{stage}" stage of the job script'


def is_user_stage(stage: str) -> bool:
    return stage in ("build_script", "after_script") or stage.startswith(USER_STAGE_PREFIX)


def archive_cache_stage(job: Job, failed: bool) -> str | None:
    if not job.cache:
        return None
    return _when_stage(job.cache_when, failed, "archive_cache", "archive_cache_on_failure")


def upload_artifacts_stage(job: Job, failed: bool) -> str | None:
    if not job.artifacts:
        return None
    return _when_stage(
        job.artifacts_when, failed, "upload_artifacts_on_success", "upload_artifacts_on_failure"
    )


def _when_stage(when: When, failed: bool, on_success: str, on_failure: str) -> str | None:
    if failed:
        return on_failure if when in ("on_failure", "always") else None
    return on_success if when in ("on_success", "always") else None


# ---------------------------------------------------------------- scripts


def render_script(job: Job, ctx: BuildContext, stage: str) -> str:
    """The whole file the runner writes for one run_exec call."""
    body = "".join(line + "\n" for line in stage_commands(job, ctx, stage))
    return (
        "#!/usr/bin/env bash\n"
        "trap 'exit 1' TERM\n"
        'case "$(set -o)" in *"pipefail"*) set -o pipefail;; esac; set -o errexit\n'
        "set +o noclobber\n"
        f"(trap 'exit 1' TERM; eval {single_quote(body)}) < /dev/null\n"
        "exit 0\n"
    )


def stage_commands(job: Job, ctx: BuildContext, stage: str) -> list[str]:
    """The lines inside the eval: exports, a cd for most stages, then the work."""
    project_dir = ctx.project_dir(job)
    if project_dir is None:
        raise ValueError("the builds_dir is not configured")
    lines = _exports(job_variables(job, ctx), project_dir + ".tmp")
    if stage == "prepare_script":
        return [*lines, _running_on(ctx.hostname)]
    if stage == "get_sources":
        return lines + _get_sources(job, project_dir)
    if stage == "cleanup_file_variables":
        return lines + _cleanup_file_variables(job, project_dir + ".tmp")
    lines.append("cd " + shell_quote(project_dir))
    user = dict(job.user_stages())
    if stage in user:
        return lines + _user_commands(user[stage])
    if stage == "after_script":
        return [*lines, _notice("Running after script..."), *_user_commands(job.after_script)]
    if stage == "restore_cache":
        return lines + _restore_cache(job, ctx)
    if stage == "download_artifacts":
        return lines + _download_artifacts(job)
    if stage in ("archive_cache", "archive_cache_on_failure"):
        return lines + _archive_cache(job, ctx)
    if stage in ("upload_artifacts_on_success", "upload_artifacts_on_failure"):
        return lines + _upload_artifacts(job)
    # A stage a newer runner might send (drivers must accept those): no work.
    return [*lines, f"echo {shell_quote('stage ' + stage)}"]


def _exports(variables: Iterable[Variable], tmp_dir: str) -> list[str]:
    lines: list[str] = []
    for var in variables:
        # The runner would write a broken export for such a key; GitLab refuses
        # them anyway, so they only reach the environment (CUSTOM_ENV_*).
        if not _SHELL_IDENTIFIER.fullmatch(var.key):
            continue
        if var.file:
            path = f"{tmp_dir}/{var.key}"
            lines.append("mkdir -p " + shell_quote(tmp_dir))
            lines.append(f"printf '%s' {shell_quote(var.value)} > {shell_quote(path)}")
            lines.append(f"export {var.key}={shell_quote(path)}")
        else:
            lines.append(f"export {var.key}={shell_quote(var.value)}")
    return lines


def _running_on(hostname: str) -> str:
    # Double quotes so that $(hostname) runs in the VM; the runner's name stays literal.
    literal = re.sub(r'([\\"$`])', r"\\\1", hostname)
    return f'echo "Running on $(hostname) via {literal}..."'


def _user_commands(commands: list[str]) -> list[str]:
    lines: list[str] = []
    for command in commands:
        command = command.strip()
        if command:
            first, *rest = command.split("\n", 1)
            suffix = " # collapsed multi-line command" if rest else ""
            lines.append(_notice(f"$ {first}{suffix}"))
        else:
            lines.append("echo")
        lines.append(command)
    return lines


def _get_sources(job: Job, project_dir: str) -> list[str]:
    q_dir = shell_quote(project_dir)
    sha = job.commit_sha
    if job.repo_url is None:
        # No network here: make the checkout look like one without git.
        return [
            _notice("Fetching changes with git depth set to 20..."),
            f"mkdir -p {q_dir}",
            f"cd {q_dir}",
            _notice(f"Checking out {sha[:8]} as detached HEAD (ref is {job.ref})..."),
            f"printf '%s\\n' {shell_quote(sha)} > .emulated-checkout",
            _notice("Skipping Git submodules setup"),
        ]
    target = job.sha or job.ref
    return [
        _notice("Cloning repository..."),
        f"rm -rf {q_dir}",
        f"git clone --quiet {shell_quote(job.repo_url)} {q_dir}",
        f"cd {q_dir}",
        _notice(f"Checking out {sha[:8]} as detached HEAD (ref is {job.ref})..."),
        f"git checkout -f -q {shell_quote(target)}",
        _notice("Skipping Git submodules setup"),
    ]


def _guarded(action: str, work: list[str]) -> list[str]:
    """Run `work` only if gitlab-runner is in the VM, as the runner's scripts do."""
    return (
        ["if gitlab-runner --version >/dev/null 2>&1; then"]
        + ["  " + line for line in work]
        + ["else", "  " + _warning(f"Missing gitlab-runner. {action} is disabled."), "fi"]
    )


def _cache_file(job: Job, ctx: BuildContext) -> str:
    cache_dir = (ctx.cache_dir or "/cache").rstrip("/")
    return f"{cache_dir}/{job.project_path}/default-protected/cache.zip"


def _restore_cache(job: Job, ctx: BuildContext) -> list[str]:
    args = f"cache-extractor --file {shell_quote(_cache_file(job, ctx))} --timeout 10"
    return _guarded(
        "Extracting cache",
        [
            _notice("Checking cache for default-protected..."),
            f"if gitlab-runner {args}; then",
            "  " + _notice("Successfully extracted cache"),
            "else",
            "  " + _warning("Failed to extract cache"),
            "fi",
        ],
    )


def _archive_cache(job: Job, ctx: BuildContext) -> list[str]:
    cache_file = shell_quote(_cache_file(job, ctx))
    args = f"cache-archiver --file {cache_file} --timeout 10 --path cache/"
    return _guarded(
        "Creating cache",
        [
            _notice("Creating cache default-protected..."),
            f"if gitlab-runner {args}; then",
            "  " + _notice("Created cache"),
            "else",
            "  " + _warning("Failed to create cache"),
            "fi",
        ],
    )


def _download_artifacts(job: Job) -> list[str]:
    work: list[str] = []
    for dep in job.dependencies:
        work.append(_notice(f"Downloading artifacts for build-{dep} ({dep})..."))
        work.append(
            "gitlab-runner artifacts-downloader --url "
            f"{shell_quote(job.server_url)} --token {shell_quote(job.token)} --id {dep}"
        )
    return _guarded("Artifacts downloading", work)


def _upload_artifacts(job: Job) -> list[str]:
    paths = " ".join("--path " + shell_quote(p) for p in job.artifact_paths)
    command = (
        f"gitlab-runner artifacts-uploader --url {shell_quote(job.server_url)} "
        f"--token {shell_quote(job.token)} --id {job.id} {paths} "
        "--artifact-format zip --artifact-type archive"
    )
    return _guarded("Uploading artifacts", [_notice("Uploading artifacts..."), command])


def _cleanup_file_variables(job: Job, tmp_dir: str) -> list[str]:
    return [
        "rm -f " + shell_quote(f"{tmp_dir}/{var.key}")
        for var in job.variables
        if var.file and _SHELL_IDENTIFIER.fullmatch(var.key)
    ]
