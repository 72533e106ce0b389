"""Jobs known to be coming: a pipeline's next stage, announced before it starts.

GitLab creates every job of a pipeline when the pipeline starts; the jobs of a
later stage wait in status "created" until the stages before them end. So when
this runner takes a job, the jobs of the same pipeline's next stage are known
to be coming, often minutes ahead, long enough to create their machines in
time. When the jobs of the stage running now usually take a known time (their
past runs say), the next stage's arrival can even be predicted.

`Lookahead` keeps those announced jobs by id, measures how long each took to
arrive after it was announced (the lead) and how far its arrival was from the
prediction, and tells the pool controller which arrivals were announced. Both
the pool service (asking GitLab, driver.pool.pipelines) and the replay
(bench/replay.py, from the trace) feed it, so both run the same policy code
on what it reports.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Expected:
    """One job known to be coming."""

    announced: float  # when it was first announced (clock seconds)
    predicted: float = math.nan  # when it should arrive, if that can be told


@dataclass(frozen=True)
class Report:
    """What the lookahead learned since the last report, for the next Observation."""

    expected: tuple[Expected, ...]  # the jobs still expected
    leads: tuple[float, ...]  # announced-to-arrival seconds of those that came
    errors: tuple[float, ...]  # arrival minus prediction (negative: early), where predicted
    hits: int  # announced jobs that found a ready machine
    misses: int  # and that did not


NOTHING_AHEAD = Report((), (), (), 0, 0)


class Lookahead:
    """Announced jobs not yet arrived, and what arrived since the last report.

    Thread-safe: the pool service announces from the thread that asks GitLab.
    """

    def __init__(self) -> None:
        self.expected: dict[int, Expected] = {}  # by job id
        self.leads: list[float] = []
        self.errors: list[float] = []
        self.hits = self.misses = 0
        self.lock = threading.Lock()

    def announce(self, job_ids: Iterable[int], now: float, predicted: float = math.nan) -> None:
        """Jobs known to be coming; announced again, they keep their first announcement
        and take the newest prediction."""
        with self.lock:
            for job_id in job_ids:
                known = self.expected.get(job_id)
                announced = now if known is None else known.announced
                self.expected[job_id] = Expected(announced, predicted)

    def withdraw(self, job_ids: Iterable[int]) -> None:
        """Jobs that will not come after all (skipped, canceled, taken by another runner)."""
        with self.lock:
            for job_id in job_ids:
                self.expected.pop(job_id, None)

    def arrived(self, job_id: int, now: float, hit: bool) -> bool:
        """A job arrived; True if it had been announced."""
        with self.lock:
            known = self.expected.pop(job_id, None)
            if known is None:
                return False
            self.leads.append(now - known.announced)
            if not math.isnan(known.predicted):
                self.errors.append(now - known.predicted)
            if hit:
                self.hits += 1
            else:
                self.misses += 1
            return True

    def report(self) -> Report:
        with self.lock:
            report = Report(
                tuple(self.expected.values()),
                tuple(self.leads),
                tuple(self.errors),
                self.hits,
                self.misses,
            )
            self.leads, self.errors, self.hits, self.misses = [], [], 0, 0
            return report
