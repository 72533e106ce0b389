"""The command line an admin meets: options anywhere, help per command, and a closed
stdout (`... | head`) as a normal end."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.main import closed_stdout_ends_quietly, parser

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).parent / "fixtures"

# Every leaf command with the words it needs.
COMMANDS = [
    ["config"],
    ["prepare"],
    ["run", "script", "build_script"],
    ["cleanup"],
    ["sweep"],
    ["ls"],
    ["doctor"],
    ["pool", "run"],
    ["pool", "status"],
    ["migrate", "config.toml"],
    ["job", "init"],
    ["job", "end"],
    ["ssh", "42"],
    ["config-example"],
]


def subparsers(p: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield name, child
                for sub_name, grandchild in subparsers(child):
                    yield f"{name} {sub_name}", grandchild


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_config_works_before_and_after_the_command(words: list[str]) -> None:
    before = parser().parse_args(["--config", "/etc/a.toml", *words])
    # Right after the command's name: `ssh --config X 42` (after the job id, it would be
    # part of the command run in the VM).
    name = 2 if words[0] in ("pool", "job") else 1
    after = parser().parse_args([*words[:name], "--config", "/etc/b.toml", *words[name:]])
    neither = parser().parse_args(words)
    assert (before.config_path, after.config_path, neither.config_path) == (
        "/etc/a.toml",
        "/etc/b.toml",
        None,
    )


def test_every_command_says_what_it_does_in_its_own_help() -> None:
    descriptions = {name: child.format_help() for name, child in subparsers(parser())}
    assert {" ".join(w[:2]) if w[0] in ("pool", "job") else w[0] for w in COMMANDS} <= set(
        descriptions
    )
    for name, text in descriptions.items():
        description = text.split("\n\n")[1]
        assert len(description.split()) >= 8, f"{name} --help says too little: {description!r}"
    # Each says something of its own: no two commands share a description.
    firsts = [text.split("\n\n")[1] for text in descriptions.values()]
    assert len(set(firsts)) == len(firsts)
    assert "Run the warm-pool service" in descriptions["pool run"]
    assert "--json" not in descriptions["pool run"] and "--json" in descriptions["pool status"]


def test_pool_run_help_is_its_own() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "driver", "pool", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("usage: gitlab-machine-driver pool run")
    assert "Run the warm-pool service in the foreground" in out


def run_with_closed_stdout(
    args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command's stdout is a pipe whose reader has already gone, as after `| head`."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "driver", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
        )
    finally:
        os.close(write)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["pool", "run", "--help"],
        ["--version"],
        ["config-example"],
        ["migrate", str(FIXTURES / "autoscale-aws.toml")],
        ["pool", "status", "--config", "CONFIG"],
        ["ls", "--config", "CONFIG"],
        ["sweep", "--dry-run", "--config", "CONFIG"],
    ],
    ids=" ".join,
)
def test_a_closed_stdout_ends_every_command_quietly(args: list[str], tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/st"\n[machine]\ndriver = "amazonec2"\n'
        '[docker_machine]\nprogram = "true"\n'
        f'storage_path = "{tmp_path}/dm"\n'
    )
    args = [str(config) if a == "CONFIG" else a for a in args]
    result = run_with_closed_stdout(args)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert result.stderr == ""
    assert result.returncode == 0


def test_a_runner_stage_with_a_closed_stdout_is_a_system_failure(tmp_path: Path) -> None:
    """The config stage's JSON cannot reach the runner: that is no success."""
    response = tmp_path / "response.json"
    response.write_text('{"id": 7, "token": "t", "job_info": {"project_id": 1}}')
    config = tmp_path / "c.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/st"\n[machine]\ndriver = "amazonec2"\n'
        '[docker_machine]\nprogram = "true"\n'
    )
    result = run_with_closed_stdout(
        ["--config", str(config), "config"],
        env={"JOB_RESPONSE_FILE": str(response), "SYSTEM_FAILURE_EXIT_CODE": "34"},
    )
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert result.returncode == 34


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden() -> None:
    with pytest.raises(BrokenPipeError), closed_stdout_ends_quietly():
        raise BrokenPipeError("a program we ran closed its stdin")


def test_every_command_a_hint_names_exists() -> None:
    """Hints tell admins what to type: `gitlab-machine-driver job env` (gone) must not appear."""
    import re

    commands = {name for name, _ in subparsers(parser())}
    with_actions = {name.split()[0] for name in commands if " " in name}
    named = set()
    for source in [*(ROOT / "driver").rglob("*.py"), *(ROOT / "driver").rglob("*.toml")]:
        text = source.read_text()
        for first, second in re.findall(
            r"[`(]gitlab-machine-driver ([a-z-]+)(?: ([a-z-]+))?", text
        ):
            named.add(f"{first} {second}" if first in with_actions and second else first)
    assert named - commands == set()
    assert "job init" in named  # the hint for a stage run by hand without a job


def test_without_docker_machine_sweep_fails_and_ls_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from driver.commands import ls, sweep
    from driver.errors import ConfigError

    config = tmp_path / "c.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/st"\n[machine]\ndriver = "amazonec2"\n'
        f'[docker_machine]\nprogram = "no-such-docker-machine"\nstorage_path = "{tmp_path}/dm"\n'
    )
    # It used to exit 0 in silence: no machine seen, none swept.
    with pytest.raises(ConfigError, match="'no-such-docker-machine' is not found"):
        sweep.main(argparse.Namespace(config_path=str(config), forget=None, dry_run=False))
    (tmp_path / "dm" / "machines" / "gmd-7").mkdir(parents=True)
    (tmp_path / "dm" / "machines" / "gmd-7" / "config.json").write_text("{}")
    assert ls.main(argparse.Namespace(config_path=str(config), json=False)) == 0
    out, err = capsys.readouterr()
    assert "docker-machine ls failed, so STATE is unknown" in err
    assert "'no-such-docker-machine' is not found" in err
    row = next(x for x in out.splitlines() if x.startswith("gmd-7"))
    assert "unknown" in row and "not listed" not in row


def test_a_dry_run_sweep_records_no_owner_and_writes_no_log(tmp_path: Path) -> None:
    from driver.commands import sweep

    config = tmp_path / "c.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/st"\n[machine]\ndriver = "amazonec2"\n'
        f'[docker_machine]\nprogram = "true"\nstorage_path = "{tmp_path}/dm"\n'
    )
    assert sweep.main(argparse.Namespace(config_path=str(config), forget=None, dry_run=True)) == 0
    # Nothing at all: not the state dir, its locks/ or the sweep lock (it removes nothing).
    assert not (tmp_path / "st").exists()


def tree(root: Path) -> dict[str, tuple[int, float]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_mtime) for p in root.rglob("*")
    }


def test_a_dry_run_sweep_creates_nothing_in_a_state_dir_that_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job's record and a pool machine docker-machine does not list: a sweep would
    remove them; the dry run says so, and leaves every file as it was, locks/ not made."""
    from driver.commands import sweep
    from driver.state import Address, JobPhase, JobRecord, PoolRecord, StateDir

    config = tmp_path / "c.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/st"\n[machine]\ndriver = "amazonec2"\n'
        f'[docker_machine]\nprogram = "true"\nstorage_path = "{tmp_path}/dm"\n'
    )
    state = StateDir(tmp_path / "st")
    job = state.job(7)
    job.create()
    job.save(JobRecord(job_id=7, project_id=1, machine="gmd-7", phase=JobPhase.READY))
    state.save_pool(PoolRecord(name="gmd-pool-1", address=Address(host="10.0.0.9")))
    state.mark_ready("gmd-pool-1")
    before = tree(tmp_path / "st")
    assert sweep.main(argparse.Namespace(config_path=str(config), forget=None, dry_run=True)) == 0
    assert tree(tmp_path / "st") == before
    assert not (tmp_path / "st" / "locks").exists()
    out = capsys.readouterr().out
    assert "gmd-7" in out and "gmd-pool-1" in out
