"""The pool's controller and its policies, on a clock the test sets."""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from driver.pool import control
from driver.pool.control import (
    BURST_GAP,
    DemandPolicy,
    Observation,
    PoolController,
    ReadyMachine,
    jobs_within,
)
from driver.pool.lookahead import Expected, Report
from driver.settings import LimitSettings, PoolSettings, parse_settings

MONDAY_NOON = datetime(2026, 1, 5, 12, 0, tzinfo=UTC).timestamp()


class Harness:
    """A controller whose creates and removals are only recorded."""

    def __init__(
        self,
        pool: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        rate_tokens: int | None = None,
    ) -> None:
        settings = parse_settings({"pool": pool or {}, "limits": limits or {}})
        self.now = MONDAY_NOON
        self.created = 0
        self.removed: list[tuple[str, str]] = []
        self.tokens = rate_tokens
        self.controller = PoolController(
            settings.pool,
            settings.limits,
            clock=lambda: self.now,
            create=self._create,
            remove=lambda name, why: self.removed.append((name, why)),
        )

    def _create(self) -> bool:
        if self.tokens is not None:
            if self.tokens == 0:
                return False
            self.tokens -= 1
        self.created += 1
        return True

    def step(self, **observed: Any) -> control.Decision:
        observed.setdefault("ready", ())
        observed.setdefault("creating", 0)
        observed.setdefault("in_use", 0)
        return self.controller.step(Observation(**observed))


def ready(*idle_seconds: float, now: float = MONDAY_NOON) -> list[ReadyMachine]:
    """Ready machines that have idled these many seconds, the longest idle first."""
    longest_first = sorted(idle_seconds, reverse=True)
    return [ReadyMachine(f"m{i}", now - s) for i, s in enumerate(longest_first)]


# --- docker+machine's idle_count


def test_idle_count_counts_creates_in_flight_as_docker_machine_does() -> None:
    pool = Harness({"idle_count": 4})
    decision = pool.step(ready=ready(5), creating=1)
    assert (decision.wanted, decision.create, pool.created) == (4, 2, 2)


def test_claimed_machines_are_replaced_at_the_next_step() -> None:
    pool = Harness({"idle_count": 4})
    pool.step(ready=ready(60, 50, 40, 30))
    assert pool.created == 0
    pool.now += 2
    pool.step(ready=(), hits=4)  # a fan-out took all four
    assert pool.created == 4


def test_only_machines_beyond_the_target_and_past_idle_time_are_removed() -> None:
    pool = Harness({"idle_count": 1, "idle_time": 600})
    decision = pool.step(ready=ready(900, 700, 100))
    # Two beyond the target; of those, the two longest idle have passed idle_time.
    assert decision.remove == ("m0", "m1")
    assert [why for _, why in pool.removed] == ["idle past idle_time"] * 2
    young = Harness({"idle_count": 1, "idle_time": 600})
    assert young.step(ready=ready(100, 50)).remove == ()


def test_autoscaling_periods_follow_the_controller_clock() -> None:
    pool = Harness(
        {
            "idle_count": 1,
            "autoscaling": [
                {"periods": ["* * 9-17 * * mon-fri *"], "timezone": "UTC", "idle_count": 6}
            ],
        }
    )
    assert pool.step().wanted == 6  # Monday noon
    pool.now = datetime(2026, 1, 5, 20, 0, tzinfo=UTC).timestamp()
    assert pool.step().wanted == 1
    pool.now = datetime(2026, 1, 10, 12, 0, tzinfo=UTC).timestamp()  # Saturday
    assert pool.step().wanted == 1


def test_idle_scale_factor_follows_jobs_in_use() -> None:
    pool = Harness({"idle_count": 10, "idle_count_min": 2, "idle_scale_factor": 0.5})
    assert pool.step(in_use=0).wanted == 2
    assert pool.step(in_use=12).wanted == 6
    assert pool.step(in_use=100).wanted == 10


# --- limits: the pool stays within them, and jobs come first


def test_max_growth_rate_bounds_the_creates_in_flight() -> None:
    pool = Harness({"idle_count": 10, "max_growth_rate": 3})
    decision = pool.step(creating=1)
    assert (decision.create, decision.held_back) == (2, "max_growth_rate")


def test_max_machines_leaves_room_for_jobs_waiting_for_one() -> None:
    pool = Harness({"idle_count": 10}, {"max_machines": 12})
    decision = pool.step(machines=9, waiting=2)
    assert (decision.create, decision.held_back) == (1, "max_machines")
    assert Harness({"idle_count": 10}, {"max_machines": 12}).step(machines=12).create == 0


def test_max_creating_counts_the_jobs_creates_and_leaves_waiting_jobs_theirs() -> None:
    pool = Harness({"idle_count": 10}, {"max_creating": 5})
    decision = pool.step(job_creates=2, creating=1, waiting=1)
    assert (decision.create, decision.held_back) == (1, "max_creating")


def test_no_rate_token_is_taken_while_a_job_waits_for_one() -> None:
    pool = Harness({"idle_count": 3}, {"create_rate": 10})
    assert pool.step(waiting=1).create == 0
    assert pool.step().create == 3


def test_a_refused_rate_token_stops_this_steps_creates() -> None:
    pool = Harness({"idle_count": 5}, rate_tokens=2)
    decision = pool.step()
    assert (decision.create, decision.held_back) == (2, "create_rate")


def test_under_limits_replacements_wait_until_a_fan_out_has_arrived() -> None:
    """The rest of a fan-out may still be arriving: its jobs that miss need the create
    slots more than the pool's replacements do."""
    pool = Harness({"idle_count": 4}, {"max_creating": 16})
    decision = pool.step(hits=4)
    assert (decision.create, decision.held_back) == (0, "jobs arriving")
    pool.now += BURST_GAP + 1
    assert pool.step().create == 4


def test_without_limits_replacements_start_at_once() -> None:
    pool = Harness({"idle_count": 4})
    assert pool.step(hits=4).create == 4


# --- the demand policy


def poisson_quantile(mean: float, allowance: float) -> int:
    """The smallest S with P(Poisson(mean) > S) <= allowance, summed directly."""
    term = cdf = math.exp(-mean)
    n = 0
    while 1 - cdf > allowance:
        n += 1
        term *= mean / n
        cdf += term
    return n


@pytest.mark.parametrize(("per_hour", "allowance"), [(30, 0.05), (120, 0.01), (2, 0.2)])
def test_single_jobs_need_a_poisson_quantile_of_rate_times_create_time(
    per_hour: float, allowance: float
) -> None:
    rate = per_hour / 3600
    expected = poisson_quantile(rate * 90, allowance)
    assert jobs_within(rate, Counter({1: 7}), [90.0], allowance) == expected


def test_fan_outs_of_five_need_five_machines_per_fan_out() -> None:
    rate = 20 / 3600
    expected = 5 * poisson_quantile(rate * 120, 0.02)
    assert jobs_within(rate, Counter({5: 3}), [120.0], 0.02) == expected


def test_longer_creates_and_busier_hours_need_more_machines() -> None:
    sizes = Counter({1: 5, 3: 2, 10: 1})
    assert jobs_within(0.01, sizes, [60.0], 0.01) < jobs_within(0.01, sizes, [240.0], 0.01)
    assert jobs_within(0.002, sizes, [90.0], 0.01) < jobs_within(0.02, sizes, [90.0], 0.01)


def demand_pool(target: float = 0.95, window: float = 1800) -> PoolSettings:
    settings = parse_settings(
        {"pool": {"policy": "demand", "hit_rate_target": target, "demand_window": window}}
    )
    return settings.pool


def feed(
    policy: DemandPolicy, per_hour: float, hours: float, sizes: list[int], start: float = 0.0
) -> float:
    """Fan-outs as a Poisson process; every claim a hit. Returns the time reached."""
    rng = random.Random(7)
    now = start
    while now < start + hours * 3600:
        now += rng.expovariate(per_hour / 3600)
        policy.observe(now, Observation(ready=(), creating=0, in_use=0, hits=rng.choice(sizes)))
    return now


def test_the_demand_policy_keeps_nothing_before_any_job_arrived() -> None:
    policy = DemandPolicy(demand_pool())
    policy.observe(0.0, Observation(ready=(), creating=0, in_use=0))
    assert policy.wanted(0.0, Observation(ready=(), creating=0, in_use=0)) == 0


def test_the_demand_policy_follows_the_rate_up_and_down() -> None:
    empty = Observation(ready=(), creating=0, in_use=0)
    policy = DemandPolicy(demand_pool(), create_seconds=90)
    now = feed(policy, per_hour=6, hours=4, sizes=[1, 2, 3])
    quiet = policy.wanted(now, empty)
    now = feed(policy, per_hour=60, hours=1, sizes=[1, 2, 3], start=now)
    busy = policy.wanted(now, empty)
    assert busy > quiet
    # An hour and a half without a job: back to the quiet level or below.
    assert policy.wanted(now + 5400, empty) <= quiet


def test_one_pipeline_at_night_does_not_fill_the_pool() -> None:
    empty = Observation(ready=(), creating=0, in_use=0)
    policy = DemandPolicy(demand_pool(), create_seconds=90)
    now = feed(policy, per_hour=1, hours=12, sizes=[2])
    before = policy.fanout_rate(now)
    policy.observe(now + 60, Observation(ready=(), creating=0, in_use=0, misses=2))
    # The rate is taken over the last RATE_EVENTS fan-outs, not over one window.
    assert policy.fanout_rate(now + 60) < 2 * before
    assert policy.wanted(now + 60, empty) <= 2


def test_jobs_seen_over_two_steps_of_one_fan_out_are_one_fan_out() -> None:
    policy = DemandPolicy(demand_pool())
    policy.observe(100.0, Observation(ready=(), creating=0, in_use=0, hits=3))
    policy.observe(102.0, Observation(ready=(), creating=0, in_use=0, hits=2, misses=4))
    policy.observe(100.0 + 2 + BURST_GAP + 1, Observation((), 0, 0, misses=1))
    assert list(policy.sizes) == [9, 1]


def test_measured_create_times_replace_the_first_guess() -> None:
    policy = DemandPolicy(demand_pool(), create_seconds=120)
    policy.observe(0.0, Observation((), 0, 0, create_seconds=[300.0, 310.0]))
    assert list(policy.creates) == [300.0, 310.0]


def test_a_higher_target_keeps_more_machines_at_the_same_rate() -> None:
    empty = Observation(ready=(), creating=0, in_use=0)
    wanted = []
    for target in (0.8, 0.95, 0.99):
        policy = DemandPolicy(demand_pool(target), create_seconds=90)
        now = feed(policy, per_hour=20, hours=6, sizes=[1, 1, 2, 4, 8])
        wanted.append(policy.wanted(now, empty))
    assert wanted[0] < wanted[1] < wanted[2]


def test_the_allowance_is_calibrated_so_the_expected_hit_rate_is_the_target() -> None:
    policy = DemandPolicy(demand_pool(0.95), create_seconds=90)
    feed(policy, per_hour=20, hours=6, sizes=[1, 1, 2, 4, 8])
    model = policy.model
    assert model is not None

    def expected(allowance: float) -> float:
        """The share of the remembered jobs that the model expects to find a machine."""
        weighted = [
            (rate, model.tails(math.exp(round(math.log(rate) / 0.05) * 0.05)))
            for rate, *_ in policy.history
            if rate > 0
        ]
        total = sum(rate for rate, _ in weighted)
        return sum(rate * tails.hit_share(allowance) for rate, tails in weighted) / total

    allowances = [policy.calibrate(model, aim) for aim in (0.8, 0.9, 0.95, 0.99)]
    assert allowances == sorted(allowances, reverse=True)
    for aim, allowance in zip((0.8, 0.9, 0.95, 0.99), allowances, strict=True):
        assert aim <= expected(allowance) < aim + 0.03


def test_a_shortfall_seen_over_hours_raises_the_aim_less_than_one_seen_over_days() -> None:
    """Jobs that fell short of the target raise the aim; over a few hours that is mostly
    where one big fan-out happened to land, so it counts for little until days back it."""
    raised = []
    for hours in (3, 72):
        policy = DemandPolicy(demand_pool(0.9), create_seconds=90)
        rng = random.Random(7)
        now, jobs = 0.0, 0
        while now < hours * 3600:  # one job in eight misses: 2.5 points short of 0.9
            now += rng.expovariate(20 / 3600)
            jobs += 1
            hit = jobs % 8 != 0
            policy.observe(now, Observation((), 0, 0, hits=int(hit), misses=int(not hit)))
        raised.append(policy.aim - 0.9)
    full = DemandPolicy.AIM_GAIN * 0.025
    assert 0 <= raised[0] < full / 4  # a few hours: a small part of the shortfall
    assert raised[1] > full / 2  # three days: most of it


class ScriptedDemand(DemandPolicy):
    """The demand policy, wanting what the test says (its removal rule is under test)."""

    def __init__(self) -> None:
        super().__init__(parse_settings({"pool": {"policy": "demand", "idle_time": 600}}).pool)
        self.now_wanted = 0

    def wanted(self, now: float, obs: Observation) -> int:
        return self.now_wanted


def test_the_demand_policy_removes_only_what_it_wanted_none_of_for_idle_time() -> None:
    """The estimate wavers: a machine beyond today's number but wanted minutes ago stays
    (a removal then a create for it again costs a create, for a machine often never used)."""
    policy = ScriptedDemand()
    pool = Harness()
    pool.controller = PoolController(
        policy.pool,
        LimitSettings(),
        clock=lambda: pool.now,
        create=pool._create,
        remove=lambda name, why: pool.removed.append((name, why)),
        policy=policy,
    )
    start = pool.now
    policy.now_wanted = 5
    assert pool.step(ready=ready(700, 700, 700, 700, 700)).remove == ()
    pool.now = start + 300
    policy.now_wanted = 2
    # Three beyond the number wanted, idle past idle_time, but wanted 300 s ago: kept.
    assert pool.step(ready=ready(1000, 1000, 1000, 1000, 1000, now=pool.now)).remove == ()
    pool.now = start + 601
    assert pool.step(ready=ready(1300, 1300, 1300, 1300, 1300, now=pool.now)).remove == (
        "m0",
        "m1",
        "m2",
    )


def test_what_the_demand_policy_keeps_is_the_most_it_wanted_over_idle_time() -> None:
    policy = ScriptedDemand()
    assert [policy.kept(t, w) for t, w in [(0, 3), (100, 5), (200, 4), (700, 2)]] == [3, 5, 5, 5]
    assert policy.kept(701, 2) == 4  # 5 was wanted 601 s ago
    assert policy.kept(801, 1) == 2
    assert policy.kept(2000, 0) == 0


def test_machines_for_jobs_gitlab_told_of_are_not_held_but_guessed_ones_are() -> None:
    """A job GitLab announced is known: once it came (or was withdrawn) its machine is
    no longer wanted. A guessed stage (driver.pool.shapes) wavers as the stock does."""
    policy = ScriptedDemand()

    def wanted(now: float, *expected: Expected) -> int:
        ahead = Report(tuple(expected), (), (), 0, 0)
        return DemandPolicy.wanted(policy, now, Observation((), 0, 0, ahead=ahead))

    # The real policy's count of what is due (no fan-out seen: nothing else wanted).
    told, guessed = Expected(announced=0.0), Expected(announced=0.0, guess=True)
    assert policy.kept(10.0, wanted(10.0, told, told, told)) == 3
    assert policy.kept(20.0, wanted(20.0)) == 0  # they came: nothing to hold
    assert policy.kept(30.0, wanted(30.0, guessed, guessed, guessed)) == 3
    assert policy.kept(40.0, wanted(40.0)) == 3  # the guess gone: held for idle_time
    assert policy.kept(631.0, wanted(631.0)) == 0


def test_the_demand_policy_is_the_default_only_when_chosen() -> None:
    assert isinstance(control.make_policy(PoolSettings()), control.IdleCountPolicy)
    assert isinstance(control.make_policy(demand_pool()), DemandPolicy)
    assert PoolSettings(policy="demand").enabled
    assert not PoolSettings().enabled


def test_bad_demand_settings_are_config_errors() -> None:
    from driver.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[pool\] hit_rate_target"):
        parse_settings({"pool": {"policy": "demand", "hit_rate_target": 1.5}})
    with pytest.raises(ConfigError, match=r"\[pool\] policy"):
        parse_settings({"pool": {"policy": "predictive"}})
    limits = LimitSettings()
    assert limits.max_machines == 0
