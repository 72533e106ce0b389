"""The docker-machine double's own tests.

Machine entries: how config.json is written and read, rm, and entries whose driver is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testing import docker_machine as dm
from testing.docker_machine.common import does_not_exist
from tests.doubles.harness import Machine, root_only

pytestmark = pytest.mark.timeout(180)


def test_rm_without_y_prompts_and_keeps_the_machine(fast: Machine) -> None:
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "keep")
    result = fast("rm", "keep", stdin="")
    assert (result.returncode, result.stdout) == (
        0,
        "About to remove keep\nWARNING: This action will delete both local reference and "
        "remote instance.\nAre you sure? (y/n): ",
    )
    assert fast.ok("ls", "-q") == "keep\n"
    assert fast("rm", "keep", stdin="no\n").returncode == 0
    assert fast.ok("ls", "-q") == "keep\n"
    assert "Successfully removed keep" in fast.ok("rm", "keep", stdin="yes\n")
    assert fast.ok("ls", "-q") == ""


def test_rm_y_and_f(fast: Machine) -> None:
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "a")
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "b")
    result = fast("rm", "-y", "a", "missing", "b")
    assert result.returncode == 1
    assert result.stdout.count("Successfully removed") == 2
    assert result.stderr.startswith('Error removing host "missing": Docker machine "missing"')
    assert fast.ok("ls", "-q") == ""
    result = fast("rm", "-f", "missing")
    assert result.returncode == 0


def wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_config_json_is_written_in_place_then_deleted_and_renamed(fast: Machine) -> None:
    """Filestore.Save: a reader racing a create finds config.json empty, then absent."""
    dm.set_faults(fast.storage, {"save_gap": 2.0})
    config = Path(fast.storage, "machines", "m", "config.json")
    create = fast.popen("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "m")
    try:
        wait_for(config.exists)  # the first save: created in place, not yet written
        inode = config.stat().st_ino
        empty = fast("inspect", "m")
        assert (empty.returncode, empty.stdout) == (1, "")
        assert empty.stderr == "Error getting migrated host: unexpected end of JSON input\n"
        wait_for(lambda: not config.exists())  # a later save: deleted, not yet renamed
        absent = fast("inspect", "m")
        assert (absent.returncode, absent.stdout) == (1, "")
        assert absent.stderr == f"open {config}: no such file or directory\n"
        row = fast.ok("ls", "--format", "{{.Name}}|{{.DriverName}}|{{.State}}|{{.Error}}")
        assert row == f"m|not found|Error|open {config}: no such file or directory\n"
        assert [p.name[:15] for p in config.parent.glob("config.json.tmp*")] == ["config.json.tmp"]
        assert create.wait(timeout=60) == 0, create.communicate()
    finally:
        create.kill()
        create.communicate()
    assert config.stat().st_ino != inode
    assert config.stat().st_mode & 0o777 == 0o600
    assert fast.inspect("m", "{{.Driver.URL}}") == "tcp://10.0.0.9:2376"
    assert list(config.parent.glob("config.json.tmp*")) == []


def test_rm_deletes_config_json_before_the_entry(fast: Machine) -> None:
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "m")
    dm.set_faults(fast.storage, {"save_gap": 2.0})
    config = Path(fast.storage, "machines", "m", "config.json")
    rm = fast.popen("rm", "-y", "m")
    try:
        wait_for(lambda: not config.exists())
        assert config.parent.is_dir()
        result = fast("inspect", "m")
        assert (result.returncode, result.stderr) == (
            1,
            f"open {config}: no such file or directory\n",
        )
        assert rm.wait(timeout=60) == 0
    finally:
        rm.kill()
        rm.communicate()
    assert fast("inspect", "m").stderr == does_not_exist("m") + "\n"


NOT_LOADABLE = 'Driver "gone" not found. Do you have the plugin binary accessible in your PATH?'


def test_an_entry_whose_driver_plugin_is_missing(fast: Machine) -> None:
    for name in ("gone-1", "kept-1"):
        fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", name)
    dm.make_driver_missing(fast.storage, "gone-1", "gone")
    # A name filter asks the (missing) driver for the name: the entry silently drops out.
    assert fast.ok("ls", "-q", "--filter", "name=-1$") == "kept-1\n"
    result = fast("ls", "--filter", "name=^gone", "--format", "{{.Name}}")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert fast.ok("ls", "-q") == "gone-1\nkept-1\n"
    assert fast.ok("ls", "-q", "--filter", "driver=gone") == "gone-1\n"
    row = fast.ok("ls", "--format", "{{.Name}}|{{.DriverName}}|{{.State}}|{{.URL}}|{{.Error}}")
    assert row.splitlines()[0] == f"gone-1|not-found|Error||{NOT_LOADABLE}"
    assert fast.inspect("gone-1", "{{json .Driver}} {{.DriverName}}") == '{"Name":"gone"} gone'
    assert fast("url", "gone-1").stderr == NOT_LOADABLE + "\n"
    assert fast("status", "gone-1").stderr == (
        f"error getting state for host gone-1: {NOT_LOADABLE}\n"
    )
    result = fast("rm", "-y", "gone-1")
    assert (result.returncode, result.stderr) == (
        1,
        f'Error removing host "gone-1": {NOT_LOADABLE}\n',
    )
    assert dm.machine_names(fast.storage) == ["gone-1", "kept-1"]
    result = fast("rm", "-f", "-y", "gone-1")
    assert result.returncode == 0 and result.stdout.endswith("Successfully removed gone-1\n")
    assert result.stderr == f'Error removing host "gone-1": {NOT_LOADABLE}\n'
    assert dm.machine_names(fast.storage) == ["kept-1"]
    with pytest.raises(ValueError):
        dm.make_driver_missing(fast.storage, "kept-1", "local")


@root_only
def test_rm_f_of_a_vm_whose_driver_is_missing_leaves_nothing_on_this_host(fast: Machine) -> None:
    fast.ok("create", "-d", "local", "vm")
    dm.make_driver_missing(fast.storage, "vm")
    assert dm.vm_pids(fast.storage, "vm") != []  # the VM runs on without its driver
    assert fast("rm", "-y", "vm").returncode == 1
    assert fast.ok("rm", "-f", "-y", "vm").endswith("Successfully removed vm\n")
    assert dm.vm_pids(fast.storage, "vm") == []
    assert dm.leftover_namespaces(fast.storage) == []
    assert Path(fast.storage, "orphans.log").read_text() == "vm\n"  # the cloud may keep it
