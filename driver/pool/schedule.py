"""How many idle machines the pool wants now: docker+machine's IdleCount model.

The base [pool] settings, overridden by the last autoscaling period that
matches the time, scaled by IdleScaleFactor when that is set.
"""

from __future__ import annotations

import math
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
    from croniter import croniter

    target = Target(pool.idle_count, pool.idle_count_min, pool.idle_scale_factor, pool.idle_time)
    for period in pool.autoscaling:
        local = now.astimezone(ZoneInfo(period.timezone)).replace(tzinfo=None)
        if any(croniter.match(cron_fields(p), local) for p in period.periods):
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
