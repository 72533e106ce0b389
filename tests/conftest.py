"""Test lanes, by where a test lives (registered in pyproject.toml, --strict-markers).

- ``needs_root``: the docker-machine double's machines are network namespaces with
  their own sshd and dockerd, and the Debian package is built into a root-owned tree;
- ``netns``: the test makes machines of the double (network namespaces, sshd, dockerd);
- ``slow``: seconds to minutes each: besides the folders above, the runner
  emulation's own tests (whole jobs of processes), the stage channel's (real
  shells, cancels and their grace times) and the replay's (hours of simulated jobs).

``make test-fast`` runs what carries none of them: no root, seconds, and the
property tests on Hypothesis's ``quick`` profile (``HYPOTHESIS_PROFILE``); ``make
test`` and CI run them on ``thorough``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("thorough", max_examples=3000, deadline=None)
settings.register_profile("quick", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "thorough"))

HERE = Path(__file__).parent
LANES = {
    HERE / "integration": ("needs_root", "netns", "slow"),
    HERE / "doubles": ("needs_root", "netns", "slow"),
    HERE / "packaging": ("needs_root", "slow"),
    HERE / "runner": ("slow",),
    HERE / "unit" / "image" / "test_stage_channel.py": ("slow",),
    HERE / "unit" / "pool" / "replay" / "test_simulate.py": ("slow",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        for folder, marks in LANES.items():
            if folder == path or folder in path.parents:
                for mark in marks:
                    item.add_marker(mark)
