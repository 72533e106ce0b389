"""Test lanes, by where a test lives (registered in pyproject.toml, --strict-markers).

- ``needs_root``: the docker-machine double's machines are network namespaces with
  their own sshd and dockerd, and the Debian package is built into a root-owned tree;
- ``netns``: the test makes machines of the double (network namespaces, sshd, dockerd);
- ``slow``: seconds to minutes each.

``make test-fast`` runs what carries none of them: no root, seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
LANES = {
    HERE / "integration": ("needs_root", "netns", "slow"),
    HERE / "doubles": ("needs_root", "netns", "slow"),
    HERE / "packaging": ("needs_root", "slow"),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        for folder, marks in LANES.items():
            if folder in path.parents:
                for mark in marks:
                    item.add_marker(mark)
