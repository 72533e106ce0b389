"""Jobs announced ahead (a pipeline's next stage): the tracker and the demand policy."""

from __future__ import annotations

from driver.pool.control import DemandPolicy, Observation
from driver.pool.lookahead import Lookahead
from driver.settings import PoolSettings, parse_settings


def demand_pool(target: float = 0.95) -> PoolSettings:
    return parse_settings({"pool": {"policy": "demand", "hit_rate_target": target}}).pool


def test_an_announced_job_is_expected_until_it_arrives_and_its_lead_is_measured() -> None:
    ahead = Lookahead()
    ahead.announce([11, 12, 13], now=100.0)
    ahead.announce([11], now=150.0)  # announced again: the first time counts
    assert ahead.arrived(11, now=400.0, hit=True)
    assert not ahead.arrived(99, now=400.0, hit=False)  # never announced
    ahead.withdraw([13])  # skipped after all
    expected, leads, hits, misses = ahead.report()
    assert expected == (100.0,)  # job 12 only
    assert leads == (300.0,)
    assert (hits, misses) == (1, 0)
    assert ahead.report()[1:] == ((), 0, 0)  # reported once


def test_announced_jobs_get_machines_at_once_before_any_lead_is_known() -> None:
    policy = DemandPolicy(demand_pool(), create_seconds=90)
    announced = Observation(ready=(), creating=0, in_use=0, expected=(1000.0,) * 5)
    policy.observe(1000.0, announced)
    assert policy.wanted(1000.0, announced) == 5


def test_announced_machines_start_a_slow_create_before_an_early_arrival() -> None:
    policy = DemandPolicy(demand_pool(), create_seconds=90)
    # Announced jobs have come 600 s after their announcement; creates took 90-100 s.
    learned = Observation(
        ready=(),
        creating=0,
        in_use=0,
        leads=[600.0] * DemandPolicy.LEADS_NEEDED,
        create_seconds=[90.0, 95.0, 100.0],
    )
    policy.observe(0.0, learned)
    delay = policy.announced_start_delay()
    assert 450 <= delay <= 520
    fresh = Observation(ready=(), creating=0, in_use=0, expected=(1000.0, 1000.0))
    assert policy.wanted(1000.0 + delay - 1, fresh) == 0
    assert policy.wanted(1000.0 + delay, fresh) == 2


def test_announced_arrivals_do_not_count_as_unforeseen_fan_outs() -> None:
    policy = DemandPolicy(demand_pool(), create_seconds=90)
    now = 0.0
    for _ in range(30):  # a fan-out of 6 every 5 minutes, every job announced
        now += 300.0
        arrived = Observation(
            ready=(), creating=0, in_use=0, hits=6, announced_hits=6, leads=[300.0] * 6
        )
        policy.observe(now, arrived)
    assert policy.wanted(now, Observation(ready=(), creating=0, in_use=0)) == 0
    assert len(policy.sizes) == 0


def test_announced_hits_let_the_unannounced_jobs_aim_lower() -> None:
    def stock(announced_share: float) -> int:
        policy = DemandPolicy(demand_pool(0.95), create_seconds=90)
        now = 0.0
        announced = round(3 * announced_share / (1 - announced_share))
        for _ in range(400):  # every 2 minutes: 3 unannounced jobs, and the announced ones
            now += 120.0
            policy.observe(
                now,
                Observation(
                    ready=(),
                    creating=0,
                    in_use=0,
                    hits=3 + announced,
                    announced_hits=announced,
                ),
            )
        return policy.wanted(now, Observation(ready=(), creating=0, in_use=0))

    # With half the jobs announced (and found ready), the others need 90%, not 95%.
    assert stock(0.5) < stock(0.0)
