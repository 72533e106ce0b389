"""The admin's configuration file: TOML, validated with pydantic.

Everything here comes from the admin. Nothing a job sets (``CUSTOM_ENV_*``)
is ever read into it.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails

from driver.config_file import CONFIG_PATH_ENV as CONFIG_PATH_ENV
from driver.config_file import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH
from driver.config_file import config_path as config_path
from driver.config_file import default_state_dir
from driver.cron import cron_fields
from driver.errors import ConfigError
from driver.files import read_private
from driver.image.config import ImageSettings

Seconds = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=1, le=100)]

# docker-machine's own rule, plus room for "-<job id>" under the 64-character hostname limit.
NAME_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and # comments skipped); secrets, so 0600 only."""
    text = read_private(
        path,
        "[machine] env_file",
        holds="cloud credentials",
        how="create it with KEY=VALUE lines, mode 0600, readable by the runner's user",
    )
    env = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not ENV_NAME.match(name.strip()):
            raise ConfigError(
                f"[machine] env_file {path}, line {number}: not a KEY=VALUE line",
                hint="one variable per line, e.g. AWS_ACCESS_KEY_ID=AKIA...; no quotes needed",
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]  # as systemd's EnvironmentFile= reads quoted values
        env[name.strip()] = value
    return env


def _default_storage_path() -> Path:
    # docker-machine's own default, so `docker-machine ls` shows the same machines.
    env = os.environ.get("MACHINE_STORAGE_PATH")
    return Path(env) if env else Path.home() / ".docker" / "machine"


class Section(BaseModel):
    # A typo in the admin's file must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DockerMachineSettings(Section):
    program: str = "docker-machine"
    storage_path: Path = Field(default_factory=_default_storage_path)
    call_timeout: Seconds = 60.0  # every call but create and rm


class MachineSettings(Section):
    # No default: a config without it used to make virtualbox VMs on the runner host.
    # load_settings() requires it; "" only in settings built in code (tests).
    driver: str = ""
    # As docker+machine's MachineOptions: "amazonec2-region=eu-west-1" -> --amazonec2-region=...
    options: list[str] = []
    name_prefix: str = "gmd"
    engine_registry_mirror: list[str] = []
    engine_insecure_registry: list[str] = []
    engine_label: list[str] = []
    engine_env: list[str] = []
    engine_opt: list[str] = []
    engine_storage_driver: str = ""
    engine_install_url: str = ""
    # docker-machine's environment, not its argv (which `ps` shows): cloud credentials.
    env: dict[str, str] = {}
    env_file: Path | None = None  # KEY=VALUE lines, mode 0600; wins over env

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return env

    def docker_machine_env(self) -> dict[str, str]:
        """env, then env_file's KEY=VALUE lines: what docker-machine gets in its environment."""
        if self.env_file is None:
            return dict(self.env)
        return {**self.env, **read_env_file(self.env_file)}

    @field_validator("options")
    @classmethod
    def _options_without_dashes(cls, options: list[str]) -> list[str]:
        for option in options:
            if not option or option.startswith("-"):
                raise ValueError(
                    f"option {option!r} must be written without leading dashes, "
                    'as docker+machine\'s MachineOptions are: "amazonec2-region=eu-west-1"'
                )
        return options

    @field_validator("name_prefix")
    @classmethod
    def _valid_prefix(cls, prefix: str) -> str:
        if not NAME_PREFIX.match(prefix):
            raise ValueError(
                "must be 1-40 characters of a-z, 0-9 and '-', starting with a letter or digit"
            )
        return prefix

    @field_validator("driver")
    @classmethod
    def _valid_driver(cls, driver: str) -> str:
        if driver and not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", driver):
            raise ValueError("must be a docker-machine driver name such as 'amazonec2'")
        return driver


class CreateSettings(Section):
    timeout: Seconds = 900.0
    attempts: Count = 3
    backoff: Annotated[float, Field(ge=0)] = 10.0  # first wait; doubles each attempt
    backoff_max: Annotated[float, Field(ge=0)] = 120.0


class SSHSettings(Section):
    user: str = ""  # overrides the user docker-machine reports
    ready_timeout: Seconds = 300.0
    connect_timeout: Seconds = 10.0
    # Seconds between keep-alives; three missed ones mean the VM is gone.
    keepalive_interval: Seconds = 5.0


class DockerSettings(Section):
    check: bool = True  # prepare waits until the VM's Docker engine answers
    ready_timeout: Seconds = 120.0


class RunSettings(Section):
    # On cancel: seconds between SIGTERM and SIGKILL for the stage's processes in the VM.
    kill_grace: Seconds = 10.0


class LimitSettings(Section):
    # 0 = no limit. Counted over every machine this driver owns on the host.
    max_machines: Annotated[int, Field(ge=0)] = 0  # like the runner's `limit`
    max_creating: Annotated[int, Field(ge=0)] = 0  # like MaxGrowthRate
    create_rate: Annotated[float, Field(ge=0)] = 0.0  # creates per minute (token bucket)
    create_burst: Annotated[int, Field(ge=1)] = 10
    wait_timeout: Seconds = 600.0  # how long prepare waits for a slot


class CleanupSettings(Section):
    timeout: Seconds = 600.0
    remove_attempts: Count = 3
    remove_timeout: Seconds = 300.0  # each `docker-machine rm`


class GitLabSettings(Section):
    """Where the sweeper asks whether a machine's job is still alive (read_api token)."""

    url: str = ""
    token: str = ""
    token_file: Path | None = None  # preferred: keeps the token out of this file
    timeout: Seconds = 10.0
    # The pool's lookahead hears GitLab's pipeline and job events here ("HOST:PORT").
    webhook_listen: str = ""
    webhook_secret_file: Path | None = None  # the hook's secret token, mode 0600
    # A pipeline event of a pipeline none of whose jobs came here starts watching it
    # (driver.pool.pipelines); unset: on when webhook_listen is set.
    watch_heard_pipelines: bool | None = None

    @field_validator("webhook_listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        _, colon, port = listen.rpartition(":")
        if listen and not (colon and port.isdigit() and int(port) < 65536):
            raise ValueError(f'{listen!r} is not HOST:PORT (e.g. "0.0.0.0:8950")')
        return listen

    @field_validator("watch_heard_pipelines")
    @classmethod
    def _heard_needs_events(cls, watch: bool | None, info: ValidationInfo) -> bool | None:
        if watch and not info.data.get("webhook_listen"):
            raise ValueError(
                "watch_heard_pipelines = true needs GitLab's pipeline events: set "
                'webhook_listen (e.g. "0.0.0.0:8950") and a group webhook, or remove it'
            )
        return watch

    @property
    def watches_heard_pipelines(self) -> bool:
        if self.watch_heard_pipelines is None:
            return bool(self.webhook_listen)
        return self.watch_heard_pipelines

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def read_token(self) -> str:
        if self.token_file is None:
            return self.token
        try:
            return self.token_file.read_text().strip()
        except OSError as e:
            raise ConfigError(
                f"cannot read [gitlab] token_file {self.token_file}: {e.strerror}",
                hint="create it (mode 0600) with a token that has the read_api scope",
            ) from None


class SweeperSettings(Section):
    max_age: Seconds = 86400.0  # older machines are removed whatever GitLab says
    grace: Seconds = 1800.0  # younger ones are left alone unless proven dead


class PeriodSettings(Section):
    """Like docker+machine's [[runners.machine.autoscaling]]: the last matching period wins."""

    periods: list[str]  # cron, as docker+machine writes them ("* * 9-17 * * mon-fri *")
    timezone: str = "UTC"
    idle_count: Annotated[int, Field(ge=0)] | None = None
    idle_count_min: Annotated[int, Field(ge=0)] | None = None
    idle_scale_factor: Annotated[float, Field(ge=0)] | None = None
    idle_time: Seconds | None = None

    @field_validator("periods")
    @classmethod
    def _valid_cron(cls, periods: list[str]) -> list[str]:
        for period in periods:
            cron_fields(period)
        return periods

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, timezone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {timezone!r} (e.g. 'UTC', 'Europe/Paris')"
            ) from None
        return timezone


class PoolSettings(Section):
    """A warm pool of ready, single-use machines kept by `gitlab-machine-driver pool`."""

    idle_count: Annotated[int, Field(ge=0)] = 0  # 0: no pool; jobs create their own machine
    idle_count_min: Annotated[int, Field(ge=0)] = 0
    idle_scale_factor: Annotated[float, Field(ge=0)] = 0.0  # idle = in use x factor, bounded
    idle_time: Seconds = 600.0  # idle machines beyond the target are removed after this
    max_growth_rate: Annotated[int, Field(ge=0)] = 0  # pool creates in flight at once; 0: any
    check_interval: Seconds = 2.0
    health_interval: Seconds = 60.0
    drain_on_stop: bool = False  # remove idle machines when the service stops
    images: list[str] = []  # pulled into each machine's engine before it counts as ready
    registry_username: str = ""
    registry_password_file: Path | None = None
    metrics_address: str = ""  # "127.0.0.1:9402" serves Prometheus metrics; "" does not
    autoscaling: list[PeriodSettings] = []
    # "idle_count": docker+machine's model above. "demand": keep ready about the jobs
    # expected within one create time, sized so that hit_rate_target of jobs find one.
    policy: Literal["idle_count", "demand"] = "idle_count"
    hit_rate_target: Annotated[float, Field(ge=0.5, le=0.999)] = 0.95
    demand_window: Seconds = 1800.0  # memory of the arrival-rate estimate
    # With [gitlab] set (either policy): ask GitLab for the next stage of the
    # pipelines of jobs here, and have their machines ready when it starts.
    lookahead: bool = True
    # Without that lookahead: learn each project's pipeline shapes (what follows each
    # stage, and when) from the jobs served here, and have machines ready for the next
    # stage when it is near (driver.pool.shapes).
    learn_shapes: bool = True
    # This many consecutive identical create or make-ready failures hold the next create
    # back failure_backoff seconds, doubled for each further one (at most an hour).
    failure_threshold: Annotated[int, Field(ge=1)] = 3
    failure_backoff: Seconds = 60.0
    # Machines made ready, then stopped (disk-only cost): a job that finds none ready
    # starts one instead of creating its own (driver.pool.stopped). 0: none.
    stopped_count: Annotated[int, Field(ge=0)] = 0
    # A start's bound: docker-machine waits up to 60 x 3 s for Running, then SSH and engine.
    start_timeout: Seconds = 240.0

    @property
    def enabled(self) -> bool:
        if self.policy == "demand" or self.stopped_count > 0:
            return True
        return self.idle_count > 0 or any(p.idle_count for p in self.autoscaling)


class DebugSettings(Section):
    # Keep the machine of a job whose script failed, for `gitlab-machine-driver ssh JOB`;
    # the sweeper removes it once keep_max_age has passed. It still counts against limits.
    keep_failed_machines: bool = False
    keep_max_age: Seconds = 3600.0


class MetricsSettings(Section):
    # A node_exporter textfile-collector file, rewritten after each prepare, cleanup and
    # sweep: figures for hosts that run no pool service. None: no file.
    textfile: Path | None = None


class Settings(Section):
    builds_dir: str = "/builds"
    cache_dir: str = "/cache"
    state_dir: Path = Field(default_factory=default_state_dir)
    log_file: Path | None = None  # JSON log lines; default <state_dir>/driver.log
    gitlab_runner_binary: Path | None = None  # uploaded into VMs that lack gitlab-runner
    docker_machine: DockerMachineSettings = DockerMachineSettings()
    machine: MachineSettings = MachineSettings()
    create: CreateSettings = CreateSettings()
    ssh: SSHSettings = SSHSettings()
    docker: DockerSettings = DockerSettings()
    run: RunSettings = RunSettings()
    cleanup: CleanupSettings = CleanupSettings()
    limits: LimitSettings = LimitSettings()
    gitlab: GitLabSettings = GitLabSettings()
    sweeper: SweeperSettings = SweeperSettings()
    pool: PoolSettings = PoolSettings()
    debug: DebugSettings = DebugSettings()
    image: ImageSettings = ImageSettings()  # where jobs run: the VM's shell or their image
    metrics: MetricsSettings = MetricsSettings()

    @field_validator("pool")
    @classmethod
    def _stoppable(cls, pool: PoolSettings, info: ValidationInfo) -> PoolSettings:
        """docker-machine's none and generic drivers cannot stop or start a machine."""
        machine = info.data.get("machine")
        driver = machine.driver if isinstance(machine, MachineSettings) else ""
        if pool.stopped_count and driver in ("none", "generic"):
            raise ValueError(
                f"stopped_count needs a driver that stops and starts machines; {driver!r} "
                "cannot (docker-machine: it did not make the host): set stopped_count = 0"
            )
        return pool

    @field_validator("builds_dir", "cache_dir")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/") or path.rstrip("/") == "":
            raise ValueError("must be an absolute path inside the VM, such as /builds")
        return path

    @property
    def log_path(self) -> Path:
        return self.log_file or self.state_dir / "driver.log"

    def machine_name(self, job_id: int) -> str:
        """A job's own machine: <prefix>-<job id> (the job id is the runner's, not the job's)."""
        return f"{self.machine.name_prefix}-{job_id}"


def example_config_path() -> Path:
    """The example config shipped in the package; `gitlab-machine-driver config-example`."""
    return Path(__file__).parent / "data" / "config.example.toml"


def load_settings(given: str | Path | None) -> Settings:
    """Read and validate the admin's file; every problem names the file, field and fix."""
    path = config_path(given)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist",
            hint=f"create it (`gitlab-machine-driver config-example > {path}` gives one "
            f"to edit) or pass --config PATH or set {CONFIG_PATH_ENV}",
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"config file {path} is not valid TOML: {e}",
            hint="fix the syntax at the position shown",
        ) from None
    source = Path(os.path.abspath(path))
    settings = parse_settings(data, source=str(source))
    if not settings.machine.driver:
        raise ConfigError(
            f"config file {source}: [machine] driver is not set; it names the docker-machine "
            "driver that makes each job's VM (it no longer defaults to virtualbox)",
            hint=f'add to {source}:\n    [machine]\n    driver = "amazonec2"   # or google, '
            "azure, openstack, ...: docker+machine's MachineDriver",
        )
    return settings


def _keys_at(loc: Sequence[int | str]) -> list[str]:
    """The setting names valid where ``loc`` points: a table of the model."""
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def parse_settings(data: Mapping[str, object], source: str = "config") -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        problems = "\n".join(f"  {_describe(err)}" for err in e.errors())
        raise ConfigError(
            f"config file {source} has {e.error_count()} problem(s):\n{problems}",
            hint="every setting and its allowed values: `gitlab-machine-driver config-example`"
            f" (also in {example_config_path()})",
        ) from None


def _describe(err: ErrorDetails) -> str:
    loc = list(err["loc"])
    field = ".".join(str(part) for part in loc)
    if len(loc) > 1 and isinstance(loc[0], str):
        field = f"[{loc[0]}] " + ".".join(str(part) for part in loc[1:])
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown setting (a typo?)"
        close = difflib.get_close_matches(str(loc[-1]), _keys_at(loc[:-1]), n=1)
        if close:
            message = f"unknown setting; did you mean {close[0]!r}?"
    elif "input" in err and not isinstance(err["input"], dict):
        message += f" (got {err['input']!r})"
    return f"{field}: {message}"
