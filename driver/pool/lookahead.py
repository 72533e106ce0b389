"""Jobs known to be coming: a pipeline's next stage, announced before it starts.

GitLab creates every job of a pipeline when the pipeline starts; the jobs of a
later stage wait in status "created" until the stages before them end. So when
this runner takes a job, the jobs of the same pipeline's next stage are known
to be coming, often minutes ahead, long enough to create their machines in
time. When the jobs of the stage running now usually take a known time (their
past runs say), the next stage's arrival can even be predicted.

`Lookahead` keeps those announced jobs by id, measures how long each took to
arrive after it was announced (the lead) and how far its arrival was from the
prediction, and tells the pool controller which arrivals were announced.

Where several runner managers serve the same tags, an announced job may be
taken by another one. The lookahead learns, per set of tags, the share of
announced jobs that came here (`Expected.share`), so the policy counts an
announced job as that share of one, not as a sure arrival. Both
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
    share: float = 1.0  # the chance it comes to this runner manager, learned per tag set
    tags: frozenset[str] = frozenset()
    likely: float = 1.0  # the chance it comes at all (a guess: driver.pool.shapes); in share
    guess: bool = False  # guessed only as it draws near (driver.pool.shapes): due at once


@dataclass(frozen=True)
class Report:
    """What the lookahead learned since the last report, for the next Observation."""

    expected: tuple[Expected, ...]  # the jobs still expected
    leads: tuple[float, ...]  # announced-to-arrival seconds of those that came
    errors: tuple[float, ...]  # arrival minus prediction (negative: early), where predicted
    hits: int  # announced jobs that found a ready machine
    misses: int  # and that did not


NOTHING_AHEAD = Report((), (), (), 0, 0)

# How many announced jobs per tag set the learned share remembers: enough to be
# steady, few enough to follow a manager added to or taken from the fleet in a day.
SHARE_MEMORY = 200.0


@dataclass
class Share:
    """Announced jobs of one tag set that came here, and that another manager took.

    Starts as one arrival: a single manager, until another is seen taking jobs."""

    came: float = 1.0
    elsewhere: float = 0.0

    @property
    def value(self) -> float:
        return self.came / (self.came + self.elsewhere)

    def add(self, came: bool) -> None:
        if self.came + self.elsewhere >= SHARE_MEMORY:  # forget the oldest, evenly
            scale = (SHARE_MEMORY - 1.0) / (self.came + self.elsewhere)
            self.came, self.elsewhere = self.came * scale, self.elsewhere * scale
        if came:
            self.came += 1.0
        else:
            self.elsewhere += 1.0


class Lookahead:
    """Announced jobs not yet arrived, and what arrived since the last report.

    Thread-safe: the pool service announces from the thread that asks GitLab.
    """

    def __init__(self) -> None:
        self.expected: dict[int, Expected] = {}  # by job id
        self.leads: list[float] = []
        self.errors: list[float] = []
        self.hits = self.misses = 0
        self.shares: dict[frozenset[str], Share] = {}
        self.lock = threading.Lock()

    def announce(
        self,
        job_ids: Iterable[int],
        now: float,
        predicted: float = math.nan,
        tags: frozenset[str] = frozenset(),
        likely: float = 1.0,
        guess: bool = False,
    ) -> None:
        """Jobs known to be coming (with the tags they ask for), or, `likely` below 1,
        guessed to come with that chance; announced again, they keep their first
        announcement and take the newest prediction. A `guess` (driver.pool.shapes) is
        announced only when it is near: its machine is due at once, and its arrival
        teaches nothing of how far ahead announcements come."""
        with self.lock:
            share = self.shares.get(tags, Share()).value * likely
            for job_id in job_ids:
                known = self.expected.get(job_id)
                announced = now if known is None else known.announced
                self.expected[job_id] = Expected(announced, predicted, share, tags, likely, guess)

    def withdraw(self, job_ids: Iterable[int], elsewhere: bool = False) -> None:
        """Jobs that will not come after all: skipped, canceled, or (`elsewhere`) taken
        by another runner manager, which lowers the share learned for their tags."""
        with self.lock:
            for job_id in job_ids:
                known = self.expected.pop(job_id, None)
                if known is not None and elsewhere:
                    self.shares.setdefault(known.tags, Share()).add(came=False)
                    self._reshare(known.tags)

    def share(self, tags: frozenset[str]) -> float:
        """The share of announced jobs with these tags that came to this manager."""
        with self.lock:
            return self.shares.get(tags, Share()).value

    def _reshare(self, tags: frozenset[str]) -> None:
        """Jobs still expected with these tags take the newly learned share."""
        share = self.shares[tags].value
        for job_id, known in self.expected.items():
            if known.tags == tags:
                self.expected[job_id] = Expected(
                    known.announced,
                    known.predicted,
                    share * known.likely,
                    tags,
                    known.likely,
                    known.guess,
                )

    def arrived(self, job_id: int, now: float, hit: bool) -> bool:
        """A job arrived; True if it had been announced."""
        with self.lock:
            known = self.expected.pop(job_id, None)
            if known is None:
                return False
            self.shares.setdefault(known.tags, Share()).add(came=True)
            self._reshare(known.tags)
            if not known.guess:
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
