"""migrate RUNNER_CONFIG: turn docker+machine runners into this driver's configs.

Without --apply it only reads config.toml: for every docker+machine runner it shows the
driver config it makes (driver/migration/convert.py), the patch for config.toml (with
context, credentials in the context lines not shown) and the SHA-256 of the config.toml
it read. Secrets are never printed: stdout shows placeholders; with --output DIR they are
written to 0600 files only. `--apply --expect-sha256 HASH` writes config.toml itself, and
only if it is still the file that hash was printed for (driver/migration/apply.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from driver.errors import ConfigError
from driver.files import write_private
from driver.migration import apply
from driver.migration.convert import (
    DRIVER_CONFIG_DIR,
    Migration,
    migrate,
    read_runner_config,
    skip_reason,
    unique_names,
)
from driver.migration.runner_patch import (
    REDACTED,
    patched_text,
    redacted,
    runner_config_patch,
)
from driver.parsed import items, table

__all__ = ["main", "migrate"]

PATCH_NAME = "gitlab-runner-config.patch"
POOL_UNIT = "gitlab-machine-driver-pool@{}.service"
SWEEP_UNIT = "gitlab-machine-driver-sweep@{}.timer"


def main(args: argparse.Namespace) -> int:
    source = Path(args.runner_config)
    expected = getattr(args, "expect_sha256", None)
    applying = bool(getattr(args, "apply", False))
    if applying and not expected:
        raise ConfigError(
            f"--apply writes {source} only if it is still the file the preview read",
            hint=f"run `gitlab-machine-driver migrate {source}` first and pass the SHA-256 it "
            "prints: --apply --expect-sha256 HASH",
        )
    raw, text, data = read_runner_config(source)
    digest = apply.sha256(raw)
    if applying:
        apply.check_unchanged(source, raw, str(expected))
    output = Path(args.output).resolve() if args.output else None
    config_dir = output or DRIVER_CONFIG_DIR
    migrations: dict[int, Migration] = {}
    for index, entry in enumerate(items(data.get("runners"))):
        runner = table(entry)  # anything but a table reads as a runner of no executor
        title = repr(str(runner.get("name") or f"#{index + 1}"))
        skipped = skip_reason(runner)
        if skipped:
            print(f"# runner {title}: {skipped}")
            continue
        migrations[index] = migrate(runner, config_dir)
    if not migrations:
        print(f'# {source} has no runner with executor = "docker+machine" to migrate')
        return 0
    unique_names(list(migrations.values()))
    old, new = patched_text(text, migrations, source)
    patch = runner_config_patch(old, new, source)
    if applying:
        apply.validate(old, new, migrations, source)
        if output is None:
            _configs_exist(list(migrations.values()), source)

    written: list[str] = []
    if output is not None:
        written = _write(output, list(migrations.values()), patch, force=args.force)
    for migration in migrations.values():
        _show(migration, written)
    print(f"# ===== {source}: the patch that makes these runners use the driver =====")
    print(
        "# The lines it changes (executor, and a [runners.custom] table per runner, and "
        "[runners.custom_build_dir] for GIT_CLONE_PATH) with 3 lines of context; context "
        f"lines that may hold a credential read {REDACTED!r}."
    )
    print("# >>> patch begins")
    print(redacted(patch), end="")
    print("# <<< patch ends")
    print(f"# SHA-256 of {source} as read: {digest}")
    if applying:
        backup = apply.write_in_place(source, new)
        print(f"# applied: {source} now runs these runners with the driver (backup: {backup})")
        print("# next: gitlab-runner restart")
        return 0
    _next_steps(source, output, list(migrations.values()), digest)
    return 0


def _configs_exist(migrations: list[Migration], source: Path) -> None:
    """--apply without --output points runners at configs in /etc: they must be there."""
    missing = [str(m.config_path) for m in migrations if not m.config_path.exists()]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} not found: {source} would point its runners at driver "
            "configs that do not exist; nothing was written",
            hint=f"pass --output {DRIVER_CONFIG_DIR} with --apply, or write them first",
        )


def _write(output: Path, migrations: list[Migration], patch: str, *, force: bool) -> list[str]:
    files: list[tuple[Path, str]] = []
    for m in migrations:
        files.append((m.config_path, m.driver_config))
        if m.secrets:
            files.append((m.env_path, m.env_file_text()))
    files.append((output / PATCH_NAME, patch))
    # A file already holding what migrate would write is no conflict: the preview wrote
    # it, and --apply with the same --output runs again.
    existing = [str(path) for path, text in files if path.exists() and not _holds(path, text)]
    if existing and not force:
        raise ConfigError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "nothing was written",
            hint="move them away, or pass --force to overwrite them",
        )
    output.mkdir(parents=True, exist_ok=True)
    for path, content in files:
        write_private(path, content)  # 0600: driver configs and env files hold credentials
    for name in existing:
        print(f"# overwrote {name} (--force)")
    return [str(path) for path, _ in files]


def _holds(path: Path, text: str) -> bool:
    try:
        return path.read_text() == text
    except (OSError, UnicodeDecodeError):
        return False


def _show(m: Migration, written: list[str]) -> None:
    print(f"# ===== runner {m.source!r} =====")
    status = "written, mode 0600" if str(m.config_path) in written else "not written"
    print(f"# --- driver config {m.config_path} ({status}) ---")
    print(m.shown_config, end="")
    if m.secrets:
        status = "written, mode 0600" if str(m.env_path) in written else "not written"
        print(f"# --- cloud credentials {m.env_path} ({status}; values never printed) ---")
        for variable in m.secrets:
            print(f"#   {variable}=<from MachineOptions>")
    print("# --- not carried over, or worth knowing ---")
    for note in sorted(m.notes, key=lambda n: not n.startswith("WARNING:")):
        print(f"# - {note}")
    print()


def _next_steps(
    source: Path, output: Path | None, migrations: list[Migration], digest: str
) -> None:
    units = [SWEEP_UNIT.format(m.name) for m in migrations]
    units += [POOL_UNIT.format(m.name) for m in migrations if m.uses_pool]
    print("# ===== next steps =====")
    if output is None:
        print("# 1. Write the files (driver configs and credentials, 0600; the patch):")
        print(f"#      gitlab-machine-driver migrate {source} --output {DRIVER_CONFIG_DIR}")
    else:
        print(f"# 1. Written: {', '.join(str(m.config_path) for m in migrations)}")
    print("# 2. Check each runner's setup:")
    for m in migrations:
        print(f"#      gitlab-machine-driver --config {m.config_path} doctor")
    print(
        f"# 3. Apply the patch: migrate re-reads {source}, refuses if it changed since this "
        f"preview, and keeps a backup ({source.name}.bak-<time>):"
    )
    print(
        f"#      gitlab-machine-driver migrate {source} --output {output or DRIVER_CONFIG_DIR} "
        f"--apply --expect-sha256 {digest}"
    )
    print("# 4. A sweeper for every config, a pool service where [pool] is set:")
    print(f"#      systemctl enable --now {' '.join(units)}")
    if output is not None and output != DRIVER_CONFIG_DIR:
        print(
            f"#    (the units read {DRIVER_CONFIG_DIR}/<name>.toml: run migrate with --output "
            f"{DRIVER_CONFIG_DIR}, or link the configs there)"
        )
    print("# 5. gitlab-runner restart")
