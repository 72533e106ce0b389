"""Jobs known to be coming: a pipeline's next stage, announced before it starts.

GitLab creates every job of a pipeline when the pipeline starts; the jobs of a
later stage wait in status "created" until the stages before them end. So when
this runner takes a job, the jobs of the same pipeline's next stage are known
to be coming, often minutes ahead, long enough to create their machines in
time. `Lookahead` keeps those announced jobs by id, measures how long each
took to arrive after it was announced (the lead), and tells the pool
controller which arrivals were announced. Both the pool service (asking
GitLab, driver.pool.gitlab) and the replay (bench/replay.py, from the trace)
feed it, so both run the same policy code on what it reports.
"""

from __future__ import annotations

from collections.abc import Iterable


class Lookahead:
    """Announced jobs not yet arrived, and what arrived since the last report."""

    def __init__(self) -> None:
        self.expected: dict[int, float] = {}  # job id -> when it was first announced
        self.leads: list[float] = []  # announced-to-arrival seconds, since the last report
        self.hits = self.misses = 0  # announced jobs that found a ready machine, or not

    def announce(self, job_ids: Iterable[int], now: float) -> None:
        for job_id in job_ids:
            self.expected.setdefault(job_id, now)

    def withdraw(self, job_ids: Iterable[int]) -> None:
        """Jobs that will not come after all (skipped, canceled, taken by another runner)."""
        for job_id in job_ids:
            self.expected.pop(job_id, None)

    def arrived(self, job_id: int, now: float, hit: bool) -> bool:
        """A job arrived; True if it had been announced."""
        announced = self.expected.pop(job_id, None)
        if announced is None:
            return False
        self.leads.append(now - announced)
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        return True

    def report(self) -> tuple[tuple[float, ...], tuple[float, ...], int, int]:
        """For the next Observation: announce times of the jobs still expected, the leads
        measured, and the announced jobs that found a machine or not, since the last report."""
        leads, self.leads = tuple(self.leads), []
        hits, misses, self.hits, self.misses = self.hits, self.misses, 0, 0
        return tuple(self.expected.values()), leads, hits, misses
