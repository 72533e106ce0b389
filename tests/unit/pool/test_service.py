"""The pool service on its state dir: one instance at a time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from driver.errors import DriverError
from driver.pool.service import PoolService
from driver.settings import parse_settings


def test_a_second_pool_service_on_one_state_dir_refuses_naming_the_first(tmp_path: Path) -> None:
    settings = parse_settings({"state_dir": str(tmp_path), "pool": {"idle_count": 1}})
    first, second = PoolService(settings), PoolService(settings)
    refused = f"another pool service \\(pid {os.getpid()}\\)"
    with first.only_instance(), pytest.raises(DriverError, match=refused), second.only_instance():
        pass
    with second.only_instance():  # the first one stopped: the next may start
        pass
