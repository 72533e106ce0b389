"""The pool service on its state dir: one instance at a time; what its policy learned kept."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from driver.errors import DriverError
from driver.pool.control import DemandPolicy, Observation
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


def test_the_policys_learning_is_kept_for_the_next_start(tmp_path: Path) -> None:
    settings = parse_settings({"state_dir": str(tmp_path), "pool": {"policy": "demand"}})
    first = PoolService(settings)
    policy = first.controller.policy
    assert isinstance(policy, DemandPolicy)
    an_hour_ago = time.time() - 3600
    for minute in range(1, 60):
        policy.observe(
            an_hour_ago + 60 * minute, Observation(ready=(), creating=0, in_use=0, hits=2)
        )
    first.remember()
    saved = first.state.pool_memory_file
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    second = PoolService(settings)
    second.recall()
    recalled = second.controller.policy
    assert isinstance(recalled, DemandPolicy)
    assert list(recalled.sizes) == list(policy.sizes)


def test_an_unreadable_memory_costs_the_learning_only(tmp_path: Path) -> None:
    settings = parse_settings({"state_dir": str(tmp_path), "pool": {"policy": "demand"}})
    service = PoolService(settings)
    service.state.pool_root.mkdir(parents=True)
    for junk in ("{not json", json.dumps({"version": 1, "starts": [1.0]}), "[]"):
        service.state.pool_memory_file.write_text(junk)
        service.recall()  # no exception: the pool starts afresh
        policy = service.controller.policy
        assert isinstance(policy, DemandPolicy) and len(policy.sizes) == 0
