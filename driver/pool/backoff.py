"""Repeated identical failures of the pool's creates hold its next create back.

A registry outage, an exhausted quota or a broken image makes every create fail
the same way; starting the next one at once turns the outage into a VM (and a
bill) per create time. As docker-autoscaler's ``failure_threshold``: after
``threshold`` consecutive failures for the same reason, each further create
waits ``base`` seconds, doubled for each further identical failure, at most
``cap``; each hold is an alarm (a log line and a metric, by the caller). A
success, or a failure for another reason, counts anew.

Pure, on the clock its caller passes: the pool controller's (driver.pool.control),
real in the service and virtual in the tests and the replay.
"""

from __future__ import annotations

import math
import threading

BACKOFF_MAX = 3600.0  # seconds: the longest hold, an hour (the alarm repeats each hold)


class FailureBackoff:
    def __init__(self, threshold: int, base: float, cap: float) -> None:
        self.threshold = max(1, threshold)
        self.base = base
        self.cap = cap
        self.reason = ""
        self.failures = 0  # consecutive, all for `reason`
        self.until = -math.inf
        self.lock = threading.Lock()  # creates end in threads of their own

    def failed(self, reason: str, now: float) -> float:
        """Count a failure at ``now``; the seconds the next create is held (0: none)."""
        with self.lock:
            if reason != self.reason:
                self.reason, self.failures = reason, 0
            self.failures += 1
            if self.failures < self.threshold:
                return 0.0
            hold = min(self.base * 2.0 ** (self.failures - self.threshold), self.cap)
            self.until = max(self.until, now + hold)
            return hold

    def succeeded(self) -> None:
        with self.lock:
            self.reason, self.failures, self.until = "", 0, -math.inf

    def holding(self, now: float) -> bool:
        with self.lock:
            return now < self.until
