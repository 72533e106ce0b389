"""The pool service on its state dir: one instance at a time; what its policy learned kept."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
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


@pytest.mark.parametrize(
    ("failing", "reason"),
    [("create", "create_failed"), ("ssh", "ssh_not_ready"), ("engine", "engine_not_ready")],
)
def test_a_discarded_machine_is_counted_by_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, reason: str
) -> None:
    from driver import metrics, provision
    from driver.state import Address

    settings = parse_settings(
        {"state_dir": str(tmp_path), "pool": {"idle_count": 1}, "machine": {"driver": "none"}}
    )
    service = PoolService(settings)
    removed: list[str] = []

    def create(*args: object) -> int:
        if failing == "create":
            raise DriverError("the cloud said no")
        return 1

    def make_ready(*args: object, reached: Callable[[str], None], **options: object) -> None:
        for step in ("ssh", "tools", "engine"):
            reached(step)
            if step == failing:
                raise DriverError(f"{step} did not answer")

    monkeypatch.setattr(provision, "create", create)
    monkeypatch.setattr(provision, "locate", lambda *args: Address(host="10.0.0.9"))
    monkeypatch.setattr(provision, "make_ready", make_ready)
    monkeypatch.setattr(service, "_remove", lambda name, why, held=None: removed.append(why))
    service._create_one()
    assert removed == ["its preparation failed"]
    counters = metrics.load(tmp_path)["counters"]
    discarded = {key: n for key, n in counters.items() if "pool_discarded" in key}
    assert discarded == {metrics.POOL_DISCARDED.key({"reason": reason}): 1}
