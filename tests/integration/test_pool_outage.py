"""A registry outage must not become VM churn: the pool keeps the machines it made
ready when it cannot pull their images, and says so."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from driver import metrics
from testing.world import Env, stop_pool

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/sbin/dockerd").exists(),
    reason="needs root and docker.io",
)
# Nothing listens there (the machine's own loopback, port 9): every pull is refused.
REFUSING = "127.0.0.1:9/ci/gone:1"
WATCHED = 60.0  # seconds of outage watched once the pool has had time for a create


def creations(env: Env) -> int:
    counters = metrics.load(env.state_dir)["counters"]
    return int(counters.get(metrics.MACHINE_CREATIONS.key({"by": "pool"}), 0))


def test_a_refusing_registry_leaves_the_pool_its_machines(env: Env) -> None:
    env.configure(
        docker={"check": True},
        image={"pull_timeout": 30},
        pool={"idle_count": 1, "check_interval": 0.5, "drain_on_stop": True, "images": [REFUSING]},
    )
    service = env.start_pool()
    try:
        deadline = time.monotonic() + WATCHED
        while time.monotonic() < deadline:
            assert service.poll() is None, service.stdout.read() if service.stdout else ""
            time.sleep(1)
        ready = list((env.state_dir / "pool" / "ready").glob("*"))
        status = env.pool_status()
        # One machine, ready and kept: not one thrown away per create time.
        assert creations(env) <= 2, status
        assert len(ready) == 1, status
        counters = metrics.load(env.state_dir)["counters"]
        assert counters.get(metrics.POOL_IMAGE_PULL_FAILURES.key(None), 0) >= 1
    finally:
        stop_pool(service)
    admin_log = (env.state_dir / "driver.log").read_text()
    assert "pool_image_not_pulled" in admin_log
    assert "pool_machine_ready" in admin_log
