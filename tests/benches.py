"""The benchmarks under bench/ as modules, for the tests that check what they model.

bench/ is a package of the repository (`python -m bench.NAME` from its root): a plain
import, as pytest runs from the root too.
"""

from __future__ import annotations

from types import ModuleType

import bench.replay


def load_replay() -> ModuleType:
    """bench/replay.py."""
    return bench.replay
