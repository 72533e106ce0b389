"""migrate RUNNER_CONFIG: turn docker+machine runners into this driver's config.

Reads gitlab-runner's config.toml, and for every [[runners]] using the
docker+machine executor prints the equivalent driver config and the
[runners.custom] block that replaces [runners.machine]. It says what has no
equivalent and why. It never writes the runner's file; with --output DIR it
writes each driver config to DIR/<runner name>.toml.
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from driver.errors import ConfigError
from driver.image import migrate as image_migration
from driver.state import write_private

DRIVER_CONFIG_DIR = "/etc/gitlab-machine-driver"

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


def main(args: argparse.Namespace) -> int:
    runners = _docker_machine_runners(Path(args.runner_config))
    if not runners:
        print(f'# {args.runner_config} has no runner with executor = "docker+machine"')
        return 0
    for runner in runners:
        migration = migrate(runner)
        name = migration.name
        print(f"# ===== runner {name!r} =====")
        if args.output:
            out = Path(args.output) / f"{name}.toml"
            out.parent.mkdir(parents=True, exist_ok=True)
            write_private(out, migration.driver_config)
            print(f"# driver config written to {out}")
        else:
            print(f"# --- {DRIVER_CONFIG_DIR}/{name}.toml ---")
            print(migration.driver_config)
        print("# --- in gitlab-runner's config.toml, this runner's [runners.machine] becomes ---")
        print(migration.runner_block)
        if migration.notes:
            print("# --- not carried over ---")
            for note in migration.notes:
                print(f"# - {note}")
        print()
    return 0


def _docker_machine_runners(path: Path) -> list[dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read runner config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"runner config {path} is not valid TOML: {e}") from None
    return [r for r in data.get("runners", []) if r.get("executor") == "docker+machine"]


class Migration:
    def __init__(self, name: str, driver_config: str, runner_block: str, notes: list[str]):
        self.name, self.driver_config, self.runner_block, self.notes = (
            name,
            driver_config,
            runner_block,
            notes,
        )


def migrate(runner: dict[str, Any]) -> Migration:
    machine = runner.get("machine", {})
    notes: list[str] = []
    name = _slug(str(runner.get("name") or "runner"))
    settings: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for key in ("builds_dir", "cache_dir"):
        if runner.get(key):
            top[key] = runner[key]

    settings["machine"] = section = {
        "driver": machine.get("MachineDriver", ""),
        "name_prefix": _prefix(str(machine.get("MachineName", "")), name),
    }
    options = []
    for option in machine.get("MachineOptions", []):
        key, _, value = str(option).partition("=")
        if key in ENGINE_OPTIONS:
            section.setdefault(ENGINE_OPTIONS[key], []).append(value)
        elif key in ENGINE_SINGLE:
            section[ENGINE_SINGLE[key]] = value
        else:
            options.append(str(option))
    section["options"] = options

    limits: dict[str, Any] = {}
    if runner.get("limit"):
        limits["max_machines"] = int(runner["limit"])
    if machine.get("MaxGrowthRate"):
        limits["max_creating"] = int(machine["MaxGrowthRate"])
    if limits:
        settings["limits"] = limits
    if machine.get("MaxRemovalAttempts"):
        settings["cleanup"] = {"remove_attempts": min(100, int(machine["MaxRemovalAttempts"]))}

    pool = _pool(machine)
    if pool:
        settings["pool"] = pool
        notes.append(
            "idle machines: run the pool service (`gitlab-machine-driver pool run`, or the "
            "gitlab-machine-driver-pool systemd unit); jobs still run without it"
        )
    builds = int(machine.get("MaxBuilds", 0) or 0)
    if builds != 1:
        notes.append(
            f"MaxBuilds = {builds or 'unlimited'}: every machine now serves exactly one job "
            "and is destroyed after it (no state leaks between jobs)"
        )
    image, image_notes = image_migration.from_runners_docker(runner.get("docker") or {})
    if image:  # jobs keep running in their image:, as on docker+machine
        settings["image"] = image
    notes += image_notes
    for key in ("OffPeakPeriods", "OffPeakIdleCount", "OffPeakIdleTime", "OffPeakTimezone"):
        if key in machine:
            notes.append(f"{key}: removed from gitlab-runner itself; use autoscaling periods")
    if runner.get("cache"):
        notes.append("[runners.cache]: keep it in the runner's config.toml; it works unchanged")

    config_path = f"{DRIVER_CONFIG_DIR}/{name}.toml"
    text = _toml(top, settings, source=str(runner.get("name", "")))
    return Migration(name, text, _runner_block(config_path, top), notes)


# docker+machine's idle settings and their [pool] names.
POOL_KEYS = {
    "IdleCount": "idle_count",
    "IdleCountMin": "idle_count_min",
    "IdleScaleFactor": "idle_scale_factor",
    "IdleTime": "idle_time",
}


def _pool(machine: dict[str, Any]) -> dict[str, Any]:
    pool = {ours: machine[theirs] for theirs, ours in POOL_KEYS.items() if machine.get(theirs)}
    periods = []
    for period in machine.get("autoscaling", []):
        entry: dict[str, Any] = {"periods": period.get("Periods", [])}
        if period.get("Timezone"):
            entry["timezone"] = period["Timezone"]
        entry |= {ours: period[theirs] for theirs, ours in POOL_KEYS.items() if theirs in period}
        periods.append(entry)
    if periods:
        pool["autoscaling"] = periods
    if pool and machine.get("MaxGrowthRate"):
        pool["max_growth_rate"] = int(machine["MaxGrowthRate"])
    return pool


def _runner_block(config_path: str, top: dict[str, Any]) -> str:
    lines = ['  executor = "custom"']
    lines.append(f'  builds_dir = "{top.get("builds_dir", "/builds")}"')
    lines.append(f'  cache_dir = "{top.get("cache_dir", "/cache")}"')
    lines.append("  [runners.custom]")
    for stage in ("config", "prepare", "run", "cleanup"):
        lines.append(f'    {stage}_exec = "gitlab-machine-driver"')
        args = json.dumps(["--config", config_path, stage])
        lines.append(f"    {stage}_args = {args}")
    lines.append("    prepare_exec_timeout = 1200")
    return "\n".join(lines)


def _toml(top: dict[str, Any], sections: dict[str, dict[str, Any]], source: str) -> str:
    lines = [f"# Migrated from docker+machine runner {source!r} by gitlab-machine-driver migrate."]
    lines += [f"{key} = {_value(value)}" for key, value in top.items()]
    for name, values in sections.items():
        tables = {
            k: v
            for k, v in values.items()
            if isinstance(v, list) and v and all(isinstance(item, dict) for item in v)
        }
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_value(value)}" for key, value in values.items() if key not in tables]
        for key, items in tables.items():
            for item in items:
                lines += ["", f"[[{name}.{key}]]"]
                lines += [f"{k} = {_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    # JSON strings, numbers and arrays of them are valid TOML.
    return json.dumps(value)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "runner"


def _prefix(machine_name: str, fallback: str) -> str:
    """docker+machine's MachineName holds %s; our names are <prefix>-<job id>."""
    base = _slug(machine_name.replace("%s", ""))[:40].strip("-")
    return base or fallback[:40]
