"""The compiled period matcher agrees with croniter, minute by minute."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from croniter import croniter

from driver.cron import cron_fields
from driver.pool.schedule import cron_matcher

PERIODS = [
    "* * 9-17 * * mon-fri *",  # docker+machine's form
    "* * * * * sat,sun *",
    "*/5 * * * *",
    "0 9 1 * *",
    "* * 1 * mon",  # day of month OR day of week, as cron has it
    "0 0 * * 7",  # 7 is Sunday too
    "30 */2 1-15 jan,jul *",
    "* 22-23,0-5 * * *",
    "* * L * *",  # the rare forms go to croniter itself
    "* * * * 5#2",
]


@pytest.mark.parametrize("period", PERIODS)
def test_matches_exactly_where_croniter_does(period: str) -> None:
    rng = random.Random(period)
    match = cron_matcher(period)
    start = datetime(2026, 1, 1)
    for _ in range(400):
        moment = start + timedelta(minutes=rng.randrange(2 * 366 * 24 * 60))
        assert match(moment) == croniter.match(cron_fields(period), moment), moment
