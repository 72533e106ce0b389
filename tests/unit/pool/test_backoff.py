"""Repeated identical failures of the pool's creates back off exponentially, with an
alarm, on a clock the test sets (as docker-autoscaler's failure_threshold)."""

from __future__ import annotations

from typing import Any

from driver.pool.backoff import FailureBackoff
from driver.pool.control import Observation, PoolController
from driver.settings import parse_settings

MONDAY_NOON = 1767614400.0


class Harness:
    """A pool of one wanted machine whose creates all fail the same way."""

    def __init__(self, **pool: Any) -> None:
        settings = parse_settings({"pool": {"idle_count": 1, **pool}})
        self.now = MONDAY_NOON
        self.created: list[float] = []
        self.alarms: list[tuple[str, int, float]] = []
        self.controller = PoolController(
            settings.pool,
            settings.limits,
            clock=lambda: self.now,
            create=self._create,
            remove=lambda name, why: None,
            alarm=lambda reason, failures, hold: self.alarms.append((reason, failures, hold)),
        )

    def _create(self) -> bool:
        self.created.append(self.now - MONDAY_NOON)
        return True

    def run(self, seconds: float, fail: str = "create_failed", step: float = 1.0) -> None:
        """Each create fails at once (the next step sees it ended)."""
        end = self.now + seconds
        while self.now < end:
            before = len(self.created)
            self.controller.step(Observation(ready=(), creating=0, in_use=0))
            for _ in range(len(self.created) - before):
                self.controller.failed(fail)
            self.now += step


def test_identical_failures_back_off_exponentially_after_the_threshold() -> None:
    pool = Harness(failure_threshold=3, failure_backoff=60)
    pool.run(2000)
    # Three as fast as they fail (the threshold), then each held 60, 120, 240... s.
    assert pool.created == [0, 1, 2, 62, 182, 422, 902, 1862]
    assert [hold for _, _, hold in pool.alarms] == [60, 120, 240, 480, 960, 1920]
    assert [failures for _, failures, _ in pool.alarms] == [3, 4, 5, 6, 7, 8]
    assert {reason for reason, _, _ in pool.alarms} == {"create_failed"}


def test_the_hold_is_capped_and_a_success_resets_it() -> None:
    backoff = FailureBackoff(threshold=1, base=60, cap=300)
    holds = [backoff.failed("engine_not_ready", now=0.0) for _ in range(6)]
    assert holds == [60, 120, 240, 300, 300, 300]
    assert backoff.holding(299.0) and not backoff.holding(300.0)
    backoff.succeeded()
    assert not backoff.holding(1.0)
    assert backoff.failed("engine_not_ready", now=1.0) == 60


def test_a_different_failure_starts_a_new_count() -> None:
    backoff = FailureBackoff(threshold=2, base=10, cap=1000)
    assert backoff.failed("create_failed", now=0.0) == 0
    assert backoff.failed("ssh_not_ready", now=0.0) == 0  # not identical: counted anew
    assert backoff.failed("ssh_not_ready", now=0.0) == 10
    assert backoff.holding(5.0)


def test_the_controller_says_it_holds_back_for_failures() -> None:
    pool = Harness(failure_threshold=1, failure_backoff=60)
    pool.run(2)
    decision = pool.controller.step(Observation(ready=(), creating=0, in_use=0))
    assert decision.create == 0
    assert decision.held_back == "failure_backoff"
