"""Jobs announced ahead (a pipeline's next stage): the tracker and the demand policy."""

from __future__ import annotations

import json

import pytest

from driver.pool.announced import AnnouncedTiming
from driver.pool.control import DemandPolicy, Observation
from driver.pool.lookahead import Expected, Lookahead, Report
from driver.settings import PoolSettings, parse_settings


def ahead(
    expected: list[Expected] | None = None,
    leads: list[float] | None = None,
    errors: list[float] | None = None,
    hits: int = 0,
) -> Report:
    return Report(tuple(expected or ()), tuple(leads or ()), tuple(errors or ()), hits, 0)


def demand_pool(target: float = 0.95) -> PoolSettings:
    return parse_settings({"pool": {"policy": "demand", "hit_rate_target": target}}).pool


def test_an_announced_job_is_expected_until_it_arrives_and_its_lead_is_measured() -> None:
    ahead = Lookahead()
    ahead.announce([11, 12, 13], now=100.0)
    ahead.announce([11], now=150.0)  # announced again: the first time counts
    assert ahead.arrived(11, now=400.0, hit=True)
    assert not ahead.arrived(99, now=400.0, hit=False)  # never announced
    ahead.withdraw([13])  # skipped after all
    report = ahead.report()
    assert report.expected == (Expected(100.0),)  # job 12 only
    assert report.leads == (300.0,)
    assert (report.hits, report.misses) == (1, 0)
    again = ahead.report()  # reported once
    assert (again.leads, again.hits, again.misses) == ((), 0, 0)


def test_a_predicted_arrival_measures_how_far_off_it_was() -> None:
    ahead = Lookahead()
    ahead.announce([1], now=100.0, predicted=500.0)
    ahead.arrived(1, now=460.0, hit=False)
    report = ahead.report()
    assert report.errors == (-40.0,)  # 40 s early
    assert (report.hits, report.misses) == (0, 1)


def test_announced_jobs_get_machines_at_once_before_any_lead_is_known() -> None:
    policy = DemandPolicy(demand_pool(), create_seconds=90)
    announced = Observation(ready=(), creating=0, in_use=0, ahead=ahead([Expected(1000.0)] * 5))
    policy.observe(1000.0, announced)
    assert policy.wanted(1000.0, announced) == 5


def test_announced_machines_start_a_slow_create_before_an_early_arrival() -> None:
    policy = DemandPolicy(demand_pool(), create_seconds=90)
    # Announced jobs have come 600 s after their announcement; creates took 90-100 s.
    learned = Observation(
        ready=(),
        creating=0,
        in_use=0,
        ahead=ahead(leads=[600.0] * DemandPolicy.LEADS_NEEDED),
        create_seconds=[90.0, 95.0, 100.0],
    )
    policy.observe(0.0, learned)
    delay = policy.announced_start_delay()
    assert 450 <= delay <= 520
    fresh = Observation(ready=(), creating=0, in_use=0, ahead=ahead([Expected(1000.0)] * 2))
    assert policy.wanted(1000.0 + delay - 1, fresh) == 0
    assert policy.wanted(1000.0 + delay, fresh) == 2


def test_a_predicted_arrival_gets_its_machine_a_slow_create_before_it() -> None:
    policy = DemandPolicy(demand_pool(), create_seconds=90)
    # Predictions came true up to 30 s early; creates took 90-100 s.
    errors = [-30.0] + [0.0] * (DemandPolicy.LEADS_NEEDED - 1)
    learned = Observation(
        ready=(),
        creating=0,
        in_use=0,
        ahead=ahead(errors=errors),
        create_seconds=[90.0, 95.0, 100.0],
    )
    policy.observe(0.0, learned)
    due_at = Observation(
        ready=(), creating=0, in_use=0, ahead=ahead([Expected(1000.0, predicted=5000.0)])
    )
    early = -30.0 if AnnouncedTiming.ERROR_QUANTILE < 0.1 else 0.0
    start = 5000.0 + early - 100.0
    assert policy.wanted(start - 1, due_at) == 0
    assert policy.wanted(start, due_at) == 1
    # Before enough predictions were checked, it goes by the announcement (at once).
    novice = DemandPolicy(demand_pool(), create_seconds=90)
    assert novice.wanted(1000.0, due_at) == 1


def test_announced_arrivals_do_not_count_as_unforeseen_fan_outs() -> None:
    policy = DemandPolicy(demand_pool(), create_seconds=90)
    now = 0.0
    for _ in range(30):  # a fan-out of 6 every 5 minutes, every job announced
        now += 300.0
        arrived = Observation(
            ready=(), creating=0, in_use=0, hits=6, ahead=ahead(leads=[300.0] * 6, hits=6)
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
                    ahead=ahead(hits=announced),
                ),
            )
        return policy.wanted(now, Observation(ready=(), creating=0, in_use=0))

    # With half the jobs announced (and found ready), the others need 90%, not 95%.
    assert stock(0.5) < stock(0.0)


def test_what_the_demand_policy_learned_survives_a_restart() -> None:
    empty = Observation(ready=(), creating=0, in_use=0)
    policy = DemandPolicy(demand_pool(), create_seconds=90)
    now = 1_000_000.0
    for _ in range(200):  # a fan-out of 4 every 3 minutes, creates of 60 s
        now += 180.0
        policy.observe(
            now, Observation(ready=(), creating=0, in_use=0, hits=4, create_seconds=[60.0])
        )
    memory = json.loads(json.dumps(policy.memory()))  # through the file, as the service does

    restarted = DemandPolicy(demand_pool(), create_seconds=90)
    restarted.recall(memory, now + 60)
    restarted.observe(now + 60, empty)
    assert restarted.wanted(now + 60, empty) == policy.wanted(now + 60, empty) > 0
    # A week later nothing it knew of the fan-outs is current: it starts afresh.
    stale = DemandPolicy(demand_pool(), create_seconds=90)
    stale.recall(memory, now + 8 * 86400)
    assert len(stale.sizes) == 0 and len(stale.history) == 0
    assert list(stale.creates) == [60.0] * DemandPolicy.CREATES_KEPT  # create times stay


def test_a_memory_of_another_version_or_shape_is_refused() -> None:
    policy = DemandPolicy(demand_pool())
    for memory in ({"version": 99}, {"version": 1, "starts": [1.0]}, {"version": 1, "starts": "x"}):
        with pytest.raises((ValueError, TypeError, KeyError)):
            policy.recall(memory, 0.0)


def test_the_share_of_announced_jobs_that_come_here_is_learned_per_tag_set() -> None:
    """Two managers serving the same tags: each announced job is only a share of one."""
    ahead = Lookahead()
    docker, gpu = frozenset({"docker"}), frozenset({"gpu"})
    assert ahead.share(docker) == 1.0  # one manager, until another is seen taking jobs
    for job_id in range(1, 41):
        ahead.announce([job_id], now=0.0, tags=docker)
        if job_id % 2:
            ahead.arrived(job_id, now=10.0, hit=True)
        else:
            ahead.withdraw([job_id], elsewhere=True)  # running on the other manager
    assert ahead.share(docker) == pytest.approx(0.5, abs=0.02)
    assert ahead.share(gpu) == 1.0  # another tag set learns on its own
    ahead.withdraw([999], elsewhere=True)  # never announced: learns nothing
    ahead.announce([100], now=20.0, tags=docker)
    ahead.announce([101], now=20.0, tags=gpu)
    shares = {job.tags: job.share for job in ahead.report().expected}
    assert shares[docker] == pytest.approx(0.5, abs=0.02)
    assert shares[gpu] == 1.0
    ahead.withdraw([100])  # skipped or canceled: not the other manager's doing
    assert ahead.share(docker) == pytest.approx(0.5, abs=0.02)


def test_the_learned_share_follows_a_change_of_fleet() -> None:
    ahead = Lookahead()
    tags = frozenset({"docker"})
    for job_id in range(1000):  # long alone, then a second manager joins
        ahead.announce([job_id], now=0.0, tags=tags)
        ahead.arrived(job_id, now=1.0, hit=True)
    for job_id in range(1000, 1400):
        ahead.announce([job_id], now=0.0, tags=tags)
        if job_id % 2:
            ahead.arrived(job_id, now=1.0, hit=True)
        else:
            ahead.withdraw([job_id], elsewhere=True)
    assert ahead.share(tags) < 0.6
