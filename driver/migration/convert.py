"""docker+machine runners in gitlab-runner's config.toml -> this driver's configs.

For every [[runners]] with the docker+machine executor, migrate() makes a driver config
of its own (own state_dir and docker-machine storage, so runners never share a pool,
limits or machines) and moves cloud credentials out of MachineOptions into a 0600
environment file that docker-machine reads instead of its argv.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from driver.errors import ConfigError
from driver.image import migrate as image_migration
from driver.parsed import integer, items, table, tables

DRIVER_CONFIG_DIR = Path("/etc/gitlab-machine-driver")
STATE_ROOT = Path("/var/lib/gitlab-machine-driver")
RUNNER_BINARY = "/usr/bin/gitlab-runner"  # where GitLab's package installs it
# Short enough that <state_dir>/jobs/<job id>/cm fits a unix socket path.
MAX_NAME = 24

# MachineOptions that docker-machine treats as engine options go to their own settings.
ENGINE_OPTIONS = {
    "engine-registry-mirror": "engine_registry_mirror",
    "engine-insecure-registry": "engine_insecure_registry",
    "engine-label": "engine_label",
    "engine-env": "engine_env",
    "engine-opt": "engine_opt",
}
ENGINE_SINGLE = {
    "engine-storage-driver": "engine_storage_driver",
    "engine-install-url": "engine_install_url",
}
# Credentials among MachineOptions, and the variable each docker-machine driver reads
# instead of the flag (its mcnflag EnvVar): docker-machine's environment is not on `ps`.
SECRET_OPTIONS = {
    "amazonec2-access-key": "AWS_ACCESS_KEY_ID",
    "amazonec2-secret-key": "AWS_SECRET_ACCESS_KEY",
    "amazonec2-session-token": "AWS_SESSION_TOKEN",
    "digitalocean-access-token": "DIGITALOCEAN_ACCESS_TOKEN",
    "azure-client-secret": "AZURE_CLIENT_SECRET",
    "openstack-password": "OS_PASSWORD",
    "exoscale-api-secret-key": "EXOSCALE_API_SECRET",
    "vmwarevsphere-password": "VSPHERE_PASSWORD",
}
# Anything else that looks like a credential stays a flag (no known variable), but is
# still never printed.
SECRET_LOOKING = re.compile(r"secret|password|passwd|token|api-key|access-key|private-key")


@dataclass
class Migration:
    name: str  # the runner's name as a file name
    source: str  # the runner's name in config.toml
    driver_config: str  # with secrets (written 0600 only)
    shown_config: str  # with placeholders (printed)
    secrets: dict[str, str]  # variable -> value, for the env file
    config_path: Path
    env_path: Path
    notes: list[str] = field(default_factory=list)
    uses_pool: bool = False
    enable_build_dir: bool = True  # the patch adds [runners.custom_build_dir] enabled = true

    def env_file_text(self) -> str:
        lines = [f"# Cloud credentials for runner {self.source!r}, read by docker-machine."]
        return "\n".join(lines + [f"{k}={v}" for k, v in self.secrets.items()]) + "\n"


def read_runner_config(path: Path) -> tuple[bytes, str, dict[str, object]]:
    """config.toml's bytes (for its hash), its text and its parsed content."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read runner config {path}: {e.strerror}") from None
    try:
        text = raw.decode()
        return raw, text, tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"runner config {path} is not valid TOML: {e}") from None


def skip_reason(runner: Mapping[str, object]) -> str:
    executor = runner.get("executor", "")
    if executor != "docker+machine":
        return f"executor {executor!r}, not docker+machine: left alone"
    machine = runner.get("machine")
    if not isinstance(machine, dict):
        return (
            "skipped: executor is docker+machine but it has no [runners.machine] table, so "
            "there is no MachineDriver or MachineOptions to carry over; add them, or write "
            "its driver config by hand (`gitlab-machine-driver config-example`)"
        )
    if not machine.get("MachineDriver"):
        return (
            "skipped: its [runners.machine] has no MachineDriver, so there is no machine to "
            "describe; set MachineDriver (e.g. amazonec2) and run migrate again"
        )
    if runner.get("custom"):
        return "skipped: it already has a [runners.custom] table; merge it by hand"
    return ""


def unique_names(migrations: list[Migration]) -> None:
    seen: dict[str, str] = {}
    for m in migrations:
        if m.name in seen:
            raise ConfigError(
                f"runners {seen[m.name]!r} and {m.source!r} would both get the driver config "
                f"{m.name}.toml",
                hint="give the runners distinct names in config.toml",
            )
        seen[m.name] = m.source


def migrate(runner: Mapping[str, object], config_dir: Path = DRIVER_CONFIG_DIR) -> Migration:
    machine = table(runner.get("machine"))
    source = str(runner.get("name") or "runner")
    name = slug(source)[:MAX_NAME].strip("-") or "runner"
    notes: list[str] = []
    state_dir = STATE_ROOT / name
    top: dict[str, object] = {
        key: runner[key] for key in ("builds_dir", "cache_dir") if runner.get(key)
    }
    # Each runner its own state and storage: pools, limits and machines are never shared.
    top["state_dir"] = str(state_dir)
    # [runners.docker]: jobs keep running in their image: (image mode, driver/image), whose
    # helper image does artifacts and caches; otherwise gitlab-runner must be in the VM.
    image, image_notes = image_migration.from_runners_docker(
        table(runner.get("docker")),
        cache_dir=str(runner.get("cache_dir") or "/cache"),
        builds_dir=str(runner.get("builds_dir") or "/builds"),
    )
    runner_binary = "" if image else shutil.which("gitlab-runner") or RUNNER_BINARY
    if runner_binary:
        top["gitlab_runner_binary"] = runner_binary
    sections: dict[str, dict[str, object]] = {
        "docker_machine": {"storage_path": str(state_dir / "machines")}
    }
    section: dict[str, object] = {
        "driver": str(machine.get("MachineDriver", "")),
        "name_prefix": _prefix(str(machine.get("MachineName", "")), name),
    }
    sections["machine"] = section
    options: list[str] = []
    shown_options: list[str] = []
    secrets: dict[str, str] = {}
    for option in items(machine.get("MachineOptions")):
        key, _, value = str(option).partition("=")
        if key in ENGINE_OPTIONS:
            listed = section.setdefault(ENGINE_OPTIONS[key], [])
            if isinstance(listed, list):
                listed.append(value)
        elif key in ENGINE_SINGLE:
            section[ENGINE_SINGLE[key]] = value
        elif key in SECRET_OPTIONS and value:
            secrets[SECRET_OPTIONS[key]] = value
        elif SECRET_LOOKING.search(key) and value:
            options.append(str(option))
            shown_options.append(f"{key}=<secret from MachineOptions: written only with --output>")
            notes.append(
                f"MachineOptions {key}: no environment variable is known for it, so it stays a "
                "flag on docker-machine's command line, where `ps` shows it; prefer the "
                "driver's own credential file or an instance role"
            )
        else:
            options.append(str(option))
            shown_options.append(str(option))
    section["options"] = options
    env_path = config_dir / f"{name}.env"
    if secrets:
        section["env_file"] = str(env_path)

    limits: dict[str, object] = {}
    if runner.get("limit"):
        limits["max_machines"] = integer(runner["limit"])
    if machine.get("MaxGrowthRate"):
        limits["max_creating"] = integer(machine["MaxGrowthRate"])
    if limits:
        sections["limits"] = limits
    if machine.get("MaxRemovalAttempts"):
        sections["cleanup"] = {"remove_attempts": min(100, integer(machine["MaxRemovalAttempts"]))}
    pool, pool_notes = _pool(machine)
    notes += pool_notes
    if pool:
        sections["pool"] = pool
    if image:  # jobs keep running in their image:, as on docker+machine
        sections["image"] = image
    notes += _no_equivalent(runner, machine, runner_binary, bool(secrets)) + image_notes
    enable_build_dir, build_dir_note = _custom_build_dir(runner.get("custom_build_dir"))
    notes += build_dir_note

    extra = _gitlab_hint(str(runner.get("url", "")), config_dir, name)
    text = _toml(top, sections, source=source) + extra
    shown_sections = {**sections, "machine": {**section, "options": shown_options}}
    shown = _toml(top, shown_sections, source=source) + extra
    return Migration(
        name=name,
        source=source,
        driver_config=text,
        shown_config=shown,
        secrets=secrets,
        config_path=config_dir / f"{name}.toml",
        env_path=env_path,
        notes=notes,
        uses_pool=bool(pool),
        enable_build_dir=enable_build_dir,
    )


def _no_equivalent(
    runner: Mapping[str, object], machine: Mapping[str, object], binary: str, moved_secrets: bool
) -> list[str]:
    notes = []
    builds = integer(machine.get("MaxBuilds", 0) or 0)
    if builds != 1:
        notes.append(
            f"MaxBuilds = {builds or 'unlimited'}: every machine now serves exactly one job "
            "and is destroyed after it (no state leaks between jobs)"
        )
    for key in ("OffPeakPeriods", "OffPeakIdleCount", "OffPeakIdleTime", "OffPeakTimezone"):
        if key in machine:
            notes.append(f"{key}: removed from gitlab-runner itself; use autoscaling periods")
    if binary:
        notes.append(
            f"artifacts and cache: gitlab_runner_binary = {binary!r} is uploaded into VMs "
            "that lack gitlab-runner; without it they are silently skipped (check with `doctor`)"
        )
    else:
        notes.append("artifacts and cache: done by the helper image, as on docker+machine")
    notes += _machine_notes(machine) + _cache_notes(runner.get("cache"))
    notes.append(
        "[runners.machine] stays in config.toml, unused by the custom executor: delete it "
        "once the runner works"
        + (" (its MachineOptions hold the cloud keys now in the env file)" if moved_secrets else "")
        + "; machines docker+machine made are not this driver's: remove them with docker-machine"
    )
    return notes


# [runners.machine] keys migrate() carries over or names in a note of its own.
MACHINE_HANDLED = {
    "MachineDriver",
    "MachineName",
    "MachineOptions",
    "MaxGrowthRate",
    "MaxBuilds",
    "MaxRemovalAttempts",
    "autoscaling",
    "OffPeakPeriods",
    "OffPeakIdleCount",
    "OffPeakIdleTime",
    "OffPeakTimezone",
}
COLD_CACHE = (
    "caches will be cold on fresh VMs; configure a distributed cache (S3/GCS) in [runners.cache]"
)


def _custom_build_dir(table: object) -> tuple[bool, list[str]]:
    """Whether the patch enables [runners.custom_build_dir] (GIT_CLONE_PATH): the docker
    executor allows it by default, the custom executor only with enabled = true."""
    if table is None:
        return True, []
    enabled = table.get("enabled") if isinstance(table, dict) else None
    if enabled is True:
        return False, []
    if enabled is False:
        return False, [
            "[runners.custom_build_dir] enabled = false: kept, so jobs setting GIT_CLONE_PATH "
            "still fail"
        ]
    return False, [
        "[runners.custom_build_dir] has no `enabled`: the docker executor's default is true, "
        "the custom executor's false; add `enabled = true` to it by hand, or jobs setting "
        "GIT_CLONE_PATH fail"
    ]


def _machine_notes(machine: Mapping[str, object]) -> list[str]:
    handled = MACHINE_HANDLED | set(POOL_KEYS)
    return [
        f"[runners.machine] {key}: no equivalent in the driver; left out"
        for key in sorted(set(machine) - handled)
    ]


def _cache_notes(cache: object) -> list[str]:
    """[runners.cache] stays gitlab-runner's: it makes the cache URLs the helper uses, with
    any executor. Without a distributed cache every job starts cold: VMs are single-use."""
    if not isinstance(cache, dict) or not cache.get("Type"):
        return [f"WARNING: {'no' if not cache else 'no Type in'} [runners.cache]: {COLD_CACHE}"]
    return [
        f"[runners.cache] {', '.join(sorted(cache))}: not carried over, not needed: they stay "
        "in config.toml, where gitlab-runner uses them unchanged (it makes the cache URLs "
        "the job's helper uses)"
    ]


def _gitlab_hint(url: str, config_dir: Path, name: str) -> str:
    """The sweeper needs its own read_api token: say where it goes, commented out."""
    if not url:
        return ""
    api = url.rstrip("/")
    return (
        "\n# The sweeper asks GitLab whether a machine's job still runs; give it a token with\n"
        "# read_api on the projects this runner serves (not the runner's token):\n"
        f'# [gitlab]\n# url = "{api}"\n# token_file = "{config_dir / (name + ".gitlab-token")}"\n'
    )


# docker+machine's idle settings and their [pool] names.
POOL_KEYS = {
    "IdleCount": "idle_count",
    "IdleCountMin": "idle_count_min",
    "IdleScaleFactor": "idle_scale_factor",
    "IdleTime": "idle_time",
}


def _pool(machine: Mapping[str, object]) -> tuple[dict[str, object], list[str]]:
    """[pool] when docker+machine kept idle machines (IdleCount > 0, at least in one
    autoscaling period); otherwise none, so no pool service is recommended: a [pool]
    without machines to keep makes the service exit and systemd restart it forever."""
    counts = [machine.get("IdleCount")] + [
        period.get("IdleCount") for period in tables(machine.get("autoscaling"))
    ]
    if not any(isinstance(n, int) and n > 0 for n in counts):
        idle = sorted(set(machine) & set(POOL_KEYS) - {"IdleCount"})
        if not idle and "autoscaling" not in machine and "IdleCount" not in machine:
            return {}, []
        left = f" ({', '.join(idle)} left out)" if idle else ""
        return {}, [
            "IdleCount = 0 (in every autoscaling period too): no idle machines, so no warm "
            f"pool and no pool service; every job waits for its VM{left}"
        ]
    pool: dict[str, object] = {
        ours: machine[theirs] for theirs, ours in POOL_KEYS.items() if machine.get(theirs)
    }
    periods = []
    for period in tables(machine.get("autoscaling")):
        entry: dict[str, object] = {"periods": period.get("Periods", [])}
        if period.get("Timezone"):
            entry["timezone"] = period["Timezone"]
        entry |= {ours: period[theirs] for theirs, ours in POOL_KEYS.items() if theirs in period}
        periods.append(entry)
    if periods:
        pool["autoscaling"] = periods
    if pool and machine.get("MaxGrowthRate"):
        pool["max_growth_rate"] = integer(machine["MaxGrowthRate"])
    return pool, []


def _toml(
    top: Mapping[str, object], sections: Mapping[str, Mapping[str, object]], source: str
) -> str:
    lines = [f"# Migrated from docker+machine runner {source!r} by gitlab-machine-driver migrate."]
    lines += [f"{key} = {_value(value)}" for key, value in top.items()]
    for name, values in sections.items():
        arrays = {
            k: v
            for k, v in values.items()
            if isinstance(v, list) and v and all(isinstance(item, dict) for item in v)
        }
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_value(value)}" for key, value in values.items() if key not in arrays]
        for key, entries in arrays.items():
            for item in entries:
                lines += ["", f"[[{name}.{key}]]"]
                lines += [f"{k} = {_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def _value(value: object) -> str:
    # JSON strings, numbers and booleans are valid TOML; tables are written inline.
    if isinstance(value, dict):
        pairs = ", ".join(f"{json.dumps(str(k))} = {_value(v)}" for k, v in value.items())
        return f"{{ {pairs} }}" if pairs else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return json.dumps(value)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "runner"


def _prefix(machine_name: str, fallback: str) -> str:
    """docker+machine's MachineName holds %s; our names are <prefix>-<job id>."""
    base = slug(machine_name.replace("%s", ""))[:40].strip("-")
    return base or fallback[:40]
