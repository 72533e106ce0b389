"""Machines for announced jobs: counted by their share, kept by either policy."""

from __future__ import annotations

from driver.pool.control import DemandPolicy, IdleCountPolicy, Observation, make_policy
from driver.pool.lookahead import Expected, Lookahead, Report
from driver.settings import PoolSettings, parse_settings


def told(*expected: Expected) -> Observation:
    return Observation(ready=(), creating=0, in_use=0, ahead=Report(expected, (), (), 0, 0))


def pool(**settings: object) -> PoolSettings:
    return parse_settings({"pool": settings}).pool


def test_an_announced_job_counts_as_its_share_of_a_machine_rounded_up() -> None:
    policy = DemandPolicy(pool(policy="demand"))
    # Two managers share the tags: each announced job comes here half the time.
    half = [Expected(100.0, share=0.5)] * 4
    assert policy.announced_due(100.0, half) == 2
    assert policy.announced_due(100.0, half[:3]) == 2  # 1.5 machines: 2
    assert policy.announced_due(100.0, [Expected(100.0, share=0.1)]) == 1
    # A single manager (share 1, the default) keeps one machine per job, exactly.
    assert policy.announced_due(100.0, [Expected(100.0)] * 3) == 3


def test_the_share_learned_from_withdrawals_reaches_the_policy() -> None:
    ahead = Lookahead()
    tags = frozenset({"docker"})
    # Of 20 announced jobs, the other manager took 10: the next ones count for about half.
    ahead.announce(range(20), now=0.0, tags=tags)
    ahead.withdraw(range(10), elsewhere=True)
    for job in range(10, 20):
        ahead.arrived(job, now=60.0, hit=True)
    ahead.announce(range(100, 110), now=100.0, tags=tags)
    policy = DemandPolicy(pool(policy="demand"))
    assert 5 <= policy.announced_due(100.0, ahead.report().expected) <= 6


def test_idle_count_keeps_a_machine_more_for_each_announced_job() -> None:
    policy = make_policy(pool(idle_count=2))
    assert isinstance(policy, IdleCountPolicy)
    assert policy.wanted(1000.0, told()) == 2
    coming = told(*[Expected(1000.0)] * 3)
    policy.observe(1000.0, coming)
    assert policy.wanted(1000.0, coming) == 5
    # The same timing as the demand policy: a predicted arrival gets its machine a slow
    # create (here the 120 s before any create was measured) before it, not at once.
    later = told(Expected(1000.0, predicted=5000.0))
    assert policy.wanted(1000.0, later) == 3  # before predictions were checked: at once
    demand = DemandPolicy(pool(policy="demand"))
    assert policy.timing.due(1000.0, later.ahead.expected) == demand.announced_due(
        1000.0, later.ahead.expected
    )
