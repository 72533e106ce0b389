from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from driver import cron, settings
from driver.errors import ConfigError
from driver.pool import schedule


@pytest.mark.parametrize(
    ("period", "five"),
    [
        ("* * 9-17 * * mon-fri *", "* 9-17 * * mon-fri"),  # docker+machine: seconds..year
        ("* 9-17 * * mon-fri 2026", "* 9-17 * * mon-fri"),
        ("*/5 * * * *", "*/5 * * * *"),
    ],
)
def test_docker_machine_periods_are_read(period: str, five: str) -> None:
    assert cron.cron_fields(period) == five


def test_bad_periods_and_zones_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="is not a cron expression"):
        settings.parse_settings({"pool": {"autoscaling": [{"periods": ["every day"]}]}})
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Base'"):
        settings.parse_settings(
            {"pool": {"autoscaling": [{"periods": ["* * * * *"], "timezone": "Mars/Base"}]}}
        )


def test_the_last_matching_period_wins_in_its_time_zone() -> None:
    s = settings.parse_settings(
        {
            "pool": {
                "idle_count": 2,
                "idle_time": 600,
                "autoscaling": [
                    {
                        "periods": ["* * 9-17 * * mon-fri *"],
                        "timezone": "Europe/Paris",
                        "idle_count": 10,
                    },
                    {"periods": ["* * * * * sat,sun *"], "idle_count": 0, "idle_time": 60},
                ],
            }
        }
    )
    utc = ZoneInfo("UTC")
    friday_10_paris = datetime(2026, 11, 27, 9, 0, tzinfo=utc)  # 10:00 in Paris
    friday_night = datetime(2026, 11, 27, 22, 0, tzinfo=utc)
    saturday = datetime(2026, 11, 28, 12, 0, tzinfo=utc)
    assert schedule.current_target(s.pool, friday_10_paris).idle_count == 10
    assert schedule.current_target(s.pool, friday_night).idle_count == 2
    weekend = schedule.current_target(s.pool, saturday)
    assert (weekend.idle_count, weekend.idle_time) == (0, 60)


def test_idle_scale_factor_follows_machines_in_use() -> None:
    target = schedule.Target(idle_count=10, idle_count_min=2, idle_scale_factor=0.5, idle_time=60)
    assert [target.idle_wanted(n) for n in (0, 3, 10, 40)] == [2, 2, 5, 10]
    plain = schedule.Target(idle_count=4, idle_count_min=0, idle_scale_factor=0, idle_time=60)
    assert plain.idle_wanted(100) == 4
