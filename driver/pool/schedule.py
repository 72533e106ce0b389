"""How many idle machines the pool wants now: docker+machine's IdleCount model.

The base [pool] settings, overridden by the last autoscaling period that
matches the time, scaled by IdleScaleFactor when that is set.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from driver.cron import cron_fields
from driver.settings import PoolSettings


@dataclass(frozen=True)
class Target:
    idle_count: int
    idle_count_min: int
    idle_scale_factor: float
    idle_time: float

    def idle_wanted(self, in_use: int) -> int:
        if self.idle_scale_factor <= 0:
            return self.idle_count
        scaled = math.ceil(in_use * self.idle_scale_factor)
        return max(self.idle_count_min, min(self.idle_count, scaled))


def current_target(pool: PoolSettings, now: datetime) -> Target:
    """The base settings, overridden by the last autoscaling period that matches now."""
    target = Target(pool.idle_count, pool.idle_count_min, pool.idle_scale_factor, pool.idle_time)
    for period in pool.autoscaling:
        local = now.astimezone(ZoneInfo(period.timezone)).replace(tzinfo=None)
        if any(cron_matcher(p)(local) for p in period.periods):
            target = Target(
                period.idle_count if period.idle_count is not None else target.idle_count,
                period.idle_count_min
                if period.idle_count_min is not None
                else target.idle_count_min,
                period.idle_scale_factor
                if period.idle_scale_factor is not None
                else target.idle_scale_factor,
                period.idle_time if period.idle_time is not None else target.idle_time,
            )
    return target


@functools.cache
def cron_matcher(period: str) -> Callable[[datetime], bool]:
    """Whether a local time falls in `period`, read once: croniter.match parses the
    expression on every call, too slow for a replay that asks each minute of a week."""
    from croniter import croniter

    five = cron_fields(period)
    cron = croniter(five)
    if any(c in five for c in "LW#?") or cron.nth_weekday_of_month:
        return functools.partial(croniter.match, five)  # rare forms: croniter itself
    minutes, hours, days, months, weekdays = (
        None if field == ["*"] else frozenset(int(value) for value in field)
        for field in cron.expanded
    )

    def match(local: datetime) -> bool:
        if minutes is not None and local.minute not in minutes:
            return False
        if hours is not None and local.hour not in hours:
            return False
        if months is not None and local.month not in months:
            return False
        day = days is None or local.day in days
        weekday = weekdays is None or (local.weekday() + 1) % 7 in weekdays  # cron: 0 = Sunday
        if days is not None and weekdays is not None:
            return day or weekday  # cron's rule when both are restricted
        return day and weekday

    return match
