"""migrate --apply: write the migrated config.toml in place of the one the preview read.

gitlab-runner rewrites its config.toml itself (a token refresh, `register`), so the file
the admin previewed may not be the one on disk any more: the preview prints the SHA-256
of what it read and --apply refuses unless the file still has it. The new file replaces
the old one atomically (readers see one or the other), with the old one's mode and owner,
after a backup next to it and after parsing it and finding each runner's new table.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
import tomllib
from pathlib import Path

from driver.errors import ConfigError
from driver.files import sync_dir
from driver.migration.convert import Migration


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_unchanged(source: Path, data: bytes, expected: str) -> None:
    """Refuse when config.toml is not the file the preview showed the patch for."""
    actual = sha256(data)
    if actual != expected.strip().lower():
        raise ConfigError(
            f"{source} changed since the preview (its SHA-256 is now {actual}, the preview's "
            f"was {expected}): nothing was written",
            hint=f"run `gitlab-machine-driver migrate {source}` again, read the new patch, and "
            "apply it with the --expect-sha256 it prints",
        )


def validate(old_text: str, new_text: str, migrations: dict[int, Migration], source: Path) -> None:
    """The migrated file parses, each migrated runner now runs the driver with its config,
    and nothing else moved."""
    try:
        data = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(
            f"the migrated {source} would not be valid TOML ({e}): nothing was written",
            hint="edit config.toml by hand with the printed patch as a guide",
        ) from None
    runners = data.get("runners", [])
    for index, migration in migrations.items():
        runner = runners[index] if index < len(runners) else {}
        custom = runner.get("custom") if isinstance(runner, dict) else None
        expected = ["--config", str(migration.config_path), "run"]
        if (
            runner.get("executor") != "custom"
            or not isinstance(custom, dict)
            or custom.get("run_exec") != "gitlab-machine-driver"
            or custom.get("run_args") != expected
        ):
            raise ConfigError(
                f"the migrated {source} does not give runner {migration.source!r} the "
                "[runners.custom] table it should: nothing was written",
                hint="edit config.toml by hand with the printed patch as a guide",
            )
    old = tomllib.loads(old_text)
    migrated = ("executor", "custom", "custom_build_dir")
    if {k: v for k, v in old.items() if k != "runners"} != {
        k: v for k, v in data.items() if k != "runners"
    } or [{k: v for k, v in r.items() if k not in migrated} for r in old.get("runners", [])] != [
        {k: v for k, v in r.items() if k not in migrated} for r in runners
    ]:
        raise ConfigError(
            f"the migrated {source} would change more than the runners' executor and "
            "[runners.custom]: nothing was written",
            hint="edit config.toml by hand with the printed patch as a guide",
        )


def backup_name(source: Path, now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    path = source.with_name(f"{source.name}.bak-{stamp}")
    number = 1
    while path.exists():
        number += 1
        path = source.with_name(f"{source.name}.bak-{stamp}.{number}")
    return path


def write_in_place(source: Path, new_text: str) -> Path:
    """Back the file up, then replace it atomically keeping its mode and owner; returns
    the backup's path."""
    st = source.stat()
    backup = backup_name(source)
    shutil.copy2(source, backup)  # content, mode and times
    _chown_like(backup, st)
    tmp = source.with_name(f".{source.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_text)
            f.flush()
            os.fchmod(f.fileno(), st.st_mode & 0o7777)
            _chown_like(tmp, st)
            os.fsync(f.fileno())
        os.replace(tmp, source)
        sync_dir(source.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(
            f"cannot write {source}: {e.strerror}; it is unchanged (backup: {backup})",
            hint="run migrate --apply as the user that owns config.toml (usually root)",
        ) from None
    return backup


def _chown_like(path: Path, st: os.stat_result) -> None:
    if os.stat(path).st_uid != st.st_uid or os.stat(path).st_gid != st.st_gid:
        os.chown(path, st.st_uid, st.st_gid)
