"""The benchmarks under bench/ as modules, for the tests that check what they model.

bench/ is scripts, not a package: each is loaded from its file, once per process.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_replay() -> ModuleType:
    """bench/replay.py, registered as `replay_bench` (its dataclasses need a module name)."""
    if "replay_bench" in sys.modules:
        return sys.modules["replay_bench"]
    spec = importlib.util.spec_from_file_location("replay_bench", BENCH / "replay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["replay_bench"] = module
    spec.loader.exec_module(module)
    return module
