"""docker+machine's cron periods ([[runners.machine.autoscaling]] Periods), read with croniter."""

from __future__ import annotations


def cron_fields(period: str) -> str:
    """docker+machine's cron (seconds first, year last, both optional) as 5 fields."""
    from croniter import croniter

    fields = period.split()
    if len(fields) == 7:
        fields = fields[1:6]
    elif len(fields) == 6:
        fields = fields[:5]
    five = " ".join(fields)
    if len(fields) != 5 or not croniter.is_valid(five):
        raise ValueError(f"{period!r} is not a cron expression like '* * 9-17 * * mon-fri *'")
    return five
