"""`pool run` and `pool status` as services: one instance, told by its lock (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from driver.commands import pool
from driver.errors import DriverError
from driver.pool import service
from driver.settings import Settings, parse_settings
from driver.state import StateDir


def settings_for(tmp_path: Path) -> Settings:
    return parse_settings(
        {
            "state_dir": str(tmp_path / "st"),
            "machine": {"driver": "amazonec2"},
            "pool": {"idle_count": 1, "metrics_address": "127.0.0.1:9"},
        }
    )


def test_a_second_pool_run_refuses_before_sweeping_or_binding_the_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path)
    first = StateDir(settings.state_dir).lock("pool-service")
    first.path.parent.mkdir(parents=True, mode=0o700)
    assert first.try_acquire()
    done: list[str] = []
    monkeypatch.setattr(service, "START_WAIT", 0.2)  # the refusal, not the wait, is tested
    monkeypatch.setattr(pool, "_sweep_once", lambda s: done.append("sweep"))
    monkeypatch.setattr(pool, "_serve_metrics", lambda s, service: done.append("metrics"))
    try:
        with pytest.raises(DriverError, match="another pool service"):
            pool.serve(settings)
    finally:
        first.release()
    assert done == []


def test_pool_status_tells_a_running_service_by_its_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(tmp_path)
    state = StateDir(settings.state_dir)
    lock = state.lock("pool-service")
    lock.path.parent.mkdir(parents=True, mode=0o700)
    # A status file written long ago: the service is busy, not gone.
    state.pool_status_file.parent.mkdir(parents=True, exist_ok=True)
    state.pool_status_file.write_text(json.dumps({"pid": 4321, "updated": 1.0}))
    assert lock.try_acquire()
    try:
        pool.status(settings, as_json=True)
        assert json.loads(capsys.readouterr().out)["service"]["running"] is True
    finally:
        lock.release()
    # Fresh status, no lock holder: it died a moment ago.
    state.pool_status_file.write_text(json.dumps({"pid": 4321, "updated": 9e12}))
    pool.status(settings, as_json=True)
    assert json.loads(capsys.readouterr().out)["service"]["running"] is False
