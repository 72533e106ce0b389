"""When to start the machines of jobs announced ahead, for either policy.

The lookahead (driver.pool.lookahead) tells the policy which jobs are coming
and, where it can, when. Both policies (driver.pool.control) keep one machine
per announced job on top of what they keep otherwise, each started so it is
ready when its job is likely to come; this is that timing, learned from the
creates measured and from how announced jobs actually came.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence

from driver.pool.lookahead import Expected, Report


def quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class AnnouncedTiming:
    """Create times measured, and announced jobs' leads and prediction errors."""

    CREATES_KEPT = 50  # create times remembered
    LEADS_KEPT, LEADS_NEEDED = 200, 10  # announced-to-arrival times remembered, and trusted
    CREATE_QUANTILE, ARRIVAL_RISK, DELAY_STEP = 0.9, 0.1, 5.0  # see start_delay
    ERROR_QUANTILE = 0.1  # how early a predicted arrival may come, see due

    def __init__(self, create_seconds: float) -> None:
        self.creates: deque[float] = deque([create_seconds], maxlen=self.CREATES_KEPT)
        self.leads: deque[float] = deque(maxlen=self.LEADS_KEPT)
        self.errors: deque[float] = deque(maxlen=self.LEADS_KEPT)  # arrival - prediction
        self.measured = False  # the prior above goes at the first measured create
        # (slow create, how early predictions come, start delay): computed once per change.
        self._learned: tuple[float, float, float] | None = None

    def observe(self, create_seconds: Sequence[float], ahead: Report) -> None:
        for seconds in create_seconds:
            if not self.measured:
                self.creates.clear()
                self.measured = True
            self.creates.append(seconds)
        self.leads.extend(ahead.leads)
        self.errors.extend(ahead.errors)
        if create_seconds or ahead.leads or ahead.errors:
            self.changed()

    def changed(self) -> None:
        """The remembered times changed (observed, or recalled from memory)."""
        self._learned = None

    def learned(self) -> tuple[float, float, float]:
        if self._learned is None:
            create = quantile(sorted(self.creates), self.CREATE_QUANTILE)
            early = math.nan
            if len(self.errors) >= self.LEADS_NEEDED:
                early = quantile(sorted(self.errors), self.ERROR_QUANTILE)
            self._learned = (create, early, self._start_delay(create))
        return self._learned

    def due(self, now: float, expected: Sequence[Expected]) -> int:
        """The machines the announced jobs should have ready or on their way now.

        A job with a predicted arrival gets its machine a slow create before it,
        moved earlier by how early such predictions came true (once LEADS_NEEDED were
        checked); one without, `start_delay` after its announcement. Each counts as
        its share (the chance it comes to this runner manager rather than another),
        and the sum is rounded up: a part of a machine is a machine.
        """
        if not expected:
            return 0
        create, early, delay = self.learned()
        due = 0.0
        for job in expected:
            if job.guess:
                started = True
            elif math.isnan(job.predicted) or math.isnan(early):
                started = now >= job.announced + delay
            else:
                started = now >= job.predicted + early - create
            if started:
                due += job.share
        return math.ceil(due - 1e-9)

    def start_delay(self) -> float:
        return self.learned()[2]

    def _start_delay(self, create: float) -> float:
        """Seconds after its announcement a job's machine is started: the first moment
        a job not yet arrived has a chance of ARRIVAL_RISK to arrive within a slow
        create, from the leads measured (before LEADS_NEEDED of them: at once)."""
        if len(self.leads) < self.LEADS_NEEDED:
            return 0.0
        leads = sorted(self.leads)
        waited = 0.0
        while True:
            later = len(leads) - bisect.bisect_right(leads, waited)
            if later < self.LEADS_NEEDED:
                return waited  # too few ever came this late to tell: start it
            within = bisect.bisect_right(leads, waited + create) - (len(leads) - later)
            if within >= self.ARRIVAL_RISK * later:
                return waited
            waited += self.DELAY_STEP
