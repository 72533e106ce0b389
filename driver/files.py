"""Private, atomic, durable writes and removals of the state dir's files.

Imported by the per-stage `run` (through driver.state): standard library only;
shutil, slow to import, only where something is removed or copied.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from driver.errors import ConfigError, DriverError


def read_private(path: Path, setting: str, holds: str, how: str) -> str:
    """The text of an admin's file of secrets (``setting`` names it in errors), refused
    unless only its owner may read it; ``how``: how to make a good one."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {setting} {path}: {e.strerror}", hint=how) from None
    if mode & 0o077:
        raise ConfigError(
            f"{setting} {path} is accessible to other users (mode {mode & 0o777:o}); "
            f"it holds {holds}",
            hint=f"chmod 600 {path}",
        )
    return text


def write_private(path: Path, text: str, *, durable: bool = True) -> None:
    """Write a 0600 file atomically and durably: readers see the old or the new content,
    never half, and after a power cut the file is the old or the new one, never empty
    (the file is synced before the rename, its directory after).

    ``durable=False``: atomic, not synced; for files nobody needs after a power cut
    (the host's jobs are gone then): a job's SSH files, the metrics. Two fsyncs each
    are most of a pool claim's file work."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            sync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.errno == errno.ENOSPC:
            raise DriverError(
                f"cannot write {path}: the disk is full",
                hint=f"free space on the file system of {path.parent}",
            ) from None
        raise


def sync_dir(path: Path) -> None:
    """Make the names in ``path`` (a rename, a new file) survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rmtree(path: Path, ignore_errors: bool = True) -> None:
    import shutil  # not at the top: `run` never removes anything, and shutil is slow to import

    shutil.rmtree(path, ignore_errors=ignore_errors)


def copy_file(source: Path, target: Path) -> None:
    import shutil

    shutil.copy2(source, target)
