"""The stopped tier ([pool] stopped_count): machines made and made ready as ready ones
are (host key pinned at creation, images pulled), then stopped, so that they cost
their disk only. A job that finds no ready machine starts one (driver.stages.stopped)
instead of creating its own: a start takes tens of seconds on a cloud, a create minutes.

The service keeps the tier at its count (a machine a job took is made again) and
removes what is beyond it. Its machines count against [limits] like any other; the
controller of ready machines does not see them (driver.pool.control plans ready ones).
Modelled first by the replay (`pool replay --tier`, driver/pool/replay/simulate.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from driver import ssh
from driver.errors import DriverError

if TYPE_CHECKING:
    from driver.pool.service import PoolService


class StoppedTier:
    """The service's stopped machines: how many are being made, and keeping the count."""

    def __init__(self, service: PoolService) -> None:
        self.service = service
        # Both under the service's lock: names of the tier's creates in flight (the
        # service adds them), and creates started and not yet over (named or not yet).
        self.making: set[str] = set()
        self.pending = 0

    def tick(self) -> None:
        """Make what the tier lacks, remove what is beyond it (the longest stopped first)."""
        service = self.service
        wanted = service.settings.pool.stopped_count
        # Creates in flight first: one that ends in between is then counted twice (made
        # next tick), never in neither (made twice, and the surplus removed).
        with service.lock:
            pending = self.pending
        stopped = service.state.ready("stopped")
        # Only what is stopped is ever surplus: a create about to end is no reason to go.
        for name in stopped[: max(0, len(stopped) - wanted)]:
            if service.state.withdraw(name):  # False: a job claimed it meanwhile
                service._start_removal(name, "beyond [pool] stopped_count")
        missing = wanted - len(stopped) - pending
        if missing <= 0 or service.stopping.is_set():
            return
        if service.controller.backoff.holding(time.time()):
            return  # identical failures in a row: the ready pool's creates wait too
        for _ in range(missing):
            with service.lock:
                self.pending += 1
            service._start(self._make)

    def _make(self) -> None:
        try:
            self.service._create_one(tier="stopped")
        finally:
            with self.service.lock:
                self.pending -= 1

    def park(self, name: str, reached: list[str]) -> None:
        """Stop a machine made ready (its create's lock held: the sweeper keeps off), and
        offer it as stopped. Its master connection is closed first: the job that starts
        it connects afresh, with the key pinned at its creation. A drain that began while
        it stopped takes it too (``reached``: the create's steps, see _create_one)."""
        service = self.service
        reached.append("stop")
        ssh.stop_master(service.state.pool_dir(name))
        service.dm.power("stop", name, timeout=service.settings.pool.start_timeout)
        if service.stopping.is_set() and service.settings.pool.drain_on_stop:
            reached.append("stopping")
            raise DriverError("the service is stopping")
        offer(service, name, "stopped", reached)
        service.log.info("pool_machine_stopped", machine=name)


def offer(service: PoolService, name: str, kind: str, reached: list[str]) -> None:
    """Mark a machine made ready (``kind`` "ready" or "stopped") claimable. A drain on stop
    that began meanwhile listed the claimable machines before this one was: taken back
    (unless a job claimed it first) and removed by the create's failure path."""
    service.state.mark_ready(name, kind)
    draining = service.stopping.is_set() and service.settings.pool.drain_on_stop
    if draining and service.state.withdraw(name):
        reached.append("stopping")
        raise DriverError("the service is stopping")
