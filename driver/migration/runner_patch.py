"""The edit of config.toml that makes migrated runners use the driver, and its patch."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

from driver.errors import ConfigError
from driver.migration.convert import Migration

RUNNERS_HEADER = re.compile(r"^\s*\[\[\s*runners\s*\]\]\s*(#.*)?$")
TABLE_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
EXECUTOR_LINE = re.compile(r"""^(\s*)executor\s*=\s*(["'])docker\+machine\2\s*(#.*)?$""")
# A context line that may hold a credential: never printed, only written 0600.
CREDENTIAL_LINE = re.compile(r"(?i)token|secret|passw|key|credential|auth")
REDACTED = "<not shown: may hold a credential>"
BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def custom_table(config_path: Path, enable_build_dir: bool = True) -> list[str]:
    """The [runners.custom] table that replaces docker+machine for one runner, and
    [runners.custom_build_dir] enabled, as the docker executor has it by default."""
    lines = ["  [runners.custom]"]
    for stage in ("config", "prepare", "run", "cleanup"):
        lines.append(f'    {stage}_exec = "gitlab-machine-driver"')
        lines.append(f"    {stage}_args = {json.dumps(['--config', str(config_path), stage])}")
    lines.append("    prepare_exec_timeout = 1200  # creating a VM can take minutes")
    lines.append("    cleanup_exec_timeout = 900")
    if enable_build_dir:
        lines.append("  [runners.custom_build_dir]  # GIT_CLONE_PATH, allowed as on docker")
        lines.append("    enabled = true")
    return lines


def patched_text(text: str, migrations: dict[int, Migration], source: Path) -> tuple[str, str]:
    """config.toml as read (with a final newline) and as migrated: `executor = "custom"` and
    a [runners.custom] table at the end of each migrated runner's entry."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    blocks = _runner_blocks(lines)
    new = list(lines)
    # From the end, so earlier line numbers stay valid while editing.
    for index in sorted(migrations, reverse=True):
        start, end = blocks[index]
        executor = next(
            (i for i in range(start, end) if EXECUTOR_LINE.match(new[i])),
            None,
        )
        if executor is None:
            raise ConfigError(
                f'cannot find the line `executor = "docker+machine"` of runner '
                f"{migrations[index].source!r} in {source}",
                hint="write it on a line of its own, or edit config.toml by hand",
            )
        last = max(
            i for i in range(start, end) if new[i].strip() and not new[i].lstrip().startswith("#")
        )
        migration = migrations[index]
        table = custom_table(migration.config_path, migration.enable_build_dir)
        new[last + 1 : last + 1] = [line + "\n" for line in table]
        match = EXECUTOR_LINE.match(new[executor])
        assert match is not None
        new[executor] = f'{match[1]}executor = "custom"\n'
    return "".join(lines), "".join(new)


def runner_config_patch(old: str, new: str, source: Path) -> str:
    """A unified diff with context for config.toml: `patch` applies it where the lines
    around still match, or refuses, instead of landing in another table when the file
    changed (a zero-context insertion goes wherever its line number now points)."""
    diff = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), str(source), str(source)
    )
    return "".join(diff)


def redacted(patch: str) -> str:
    """The patch to print: context lines that may hold a credential (the runner's token,
    cache keys, MachineOptions) replaced by a placeholder; the changed lines never do."""
    lines = []
    for line in patch.splitlines(keepends=True):
        if line.startswith(" ") and CREDENTIAL_LINE.search(line):
            indent = line[1 : len(line) - len(line[1:].lstrip())]
            key = line.strip().split("=", 1)[0].strip()
            shown = f"{key} = {REDACTED}" if BARE_KEY.match(key) else REDACTED
            line = f" {indent}{shown}\n"
        lines.append(line)
    return "".join(lines)


def _runner_blocks(lines: list[str]) -> list[tuple[int, int]]:
    """[start, end) line ranges of each [[runners]] entry, in file order."""
    blocks: list[list[int]] = []
    for number, line in enumerate(lines):
        if RUNNERS_HEADER.match(line):
            if blocks and len(blocks[-1]) == 1:
                blocks[-1].append(number)
            blocks.append([number])
            continue
        header = TABLE_HEADER.match(line)
        if header and blocks and len(blocks[-1]) == 1:
            table = header[1].replace(" ", "").replace('"', "").replace("'", "")
            if not table.startswith("runners."):
                blocks[-1].append(number)  # a top-level table ends the runner's entry
    if blocks and len(blocks[-1]) == 1:
        blocks[-1].append(len(lines))
    return [(b[0], b[1]) for b in blocks]
