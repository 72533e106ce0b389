"""The docker-machine double's own tests.

Machine entries: how config.json is written and read, rm, and entries whose driver is missing.
"""

from __future__ import annotations

import pytest

from tests.doubles.harness import (
    Machine,
)

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
