"""GitLab's API as the pool's lookahead asks it: every call counted, quiet after a 429.

python-gitlab would obey a 429 by sleeping `Retry-After` seconds, up to ten times,
inside the call: the lookahead's thread would hang for minutes. It is asked never to
retry; a 429 raises `RateLimited` with GitLab's `Retry-After` (or `RateLimit-Reset`),
and the pipeline watch asks nothing until then (driver.pool.pipelines).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

# Without a Retry-After, GitLab's rate limits are per minute: try again after one.
DEFAULT_QUIET = 60.0
LONGEST_QUIET = 600.0  # a wrong or hostile header never silences the lookahead for long
PER_PAGE = 100  # GitLab's largest page: a 200-job pipeline in 2 requests, not 10


class RateLimited(Exception):
    """GitLab answered 429: ask nothing for `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"GitLab's rate limit: quiet for {seconds:g}s")
        self.seconds = seconds


def quiet_for(headers: Mapping[str, str], now: float) -> float:
    """How long GitLab asks to wait, from a 429's headers (Retry-After in seconds, or
    RateLimit-Reset as a Unix time, as GitLab sends them), within LONGEST_QUIET."""
    seconds = DEFAULT_QUIET
    try:
        if "Retry-After" in headers:
            seconds = float(headers["Retry-After"])
        elif "RateLimit-Reset" in headers:
            seconds = float(headers["RateLimit-Reset"]) - now
    except ValueError:  # an HTTP date, say: the default
        pass
    return min(LONGEST_QUIET, max(1.0, seconds))


class ApiCalls:
    """Requests made to GitLab, by API (rest, graphql), and the last 429's quiet time.

    Fed by the HTTP clients' response hooks; thread-safe."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.limited: float | None = None  # seconds to stay quiet, from the last 429
        self.lock = threading.Lock()

    def seen(self, api: str, status: int, headers: Mapping[str, str]) -> None:
        with self.lock:
            self.counts[api] = self.counts.get(api, 0) + 1
            if status == 429:
                self.limited = quiet_for(headers, time.time())

    def take_limited(self) -> float | None:
        """The quiet time asked by a 429 since the last call, once."""
        with self.lock:
            limited, self.limited = self.limited, None
            return limited

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)
