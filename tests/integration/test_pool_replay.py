"""The replay (driver.pool.replay) and the real pool service agree on a short trace.

The same jobs arrive, at the same seconds, at the pool service on the
docker-machine double (creates slowed down, as a cloud's are) and at the
replay's simulated pool, which runs the same controller on a virtual clock
with the create time measured on the double. Which jobs find a ready machine
must agree: the whole figure of merit of the replay rests on it.
"""

from __future__ import annotations

import json
import random
import threading
import time

from driver.pool.replay.simulate import Replay
from driver.pool.replay.trace import Trace, TraceJob
from driver.state import StateDir
from testing.runner import Job, JobResult
from testing.world import Env, stop_pool

CREATE_DELAY = 8.0  # seconds each create of the double sleeps first
POOL = {
    "idle_count": 2,
    "check_interval": 0.5,
    "health_interval": 600,
    "idle_time": 600,
    "drain_on_stop": True,
}
# (second, jobs): two hits; a miss while both replacements are being made; a
# fan-out of four into the refilled pool of two (two hits, two misses); two
# hits once it has refilled. Every arrival is more than 10 s away from the
# moment a replacement becomes ready (about 10 s after its claim), so a slow
# moment of the host cannot turn a hit into a miss or back.
ARRIVALS = [(0.0, 2), (3.0, 1), (30.0, 4), (55.0, 1), (60.0, 1)]
HIT = "from the warm pool"
# Stated tolerance: the replay may disagree with the service on one job of nine.
TOLERANCE = 1


WORLD = {
    "pool": POOL,
    "create": {"timeout": 120},
}  # the env fixture (tests/integration/conftest.py) makes it


class Constant:
    """Create times for the replay: what the double took."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def draw(self, rng: random.Random) -> float:
        return self.seconds


def idle(env: Env) -> int:
    out = env.driver("pool", "status", "--json")
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)["counts"]["idle"])


def wait_idle(env: Env, wanted: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while idle(env) < wanted:
        assert time.monotonic() < deadline, f"the pool never had {wanted} ready machines"
        time.sleep(0.5)


def pool_create_seconds(env: Env) -> list[float]:
    state = StateDir(env.state_dir)
    records = [state.load_pool(name) for name in state.ready()]
    return [r.ready_at - r.created for r in records if r is not None and r.ready_at > r.created]


def run_for_real(env: Env) -> list[tuple[float, bool]]:
    """Each job in its own thread at its second; (arrival, found a ready machine)."""
    results: list[tuple[float, JobResult | None]] = []
    lock = threading.Lock()

    def one(at: float) -> None:
        result: JobResult | None = None
        try:
            result = env.run_job(Job(script=["sleep 2"]))
        finally:
            with lock:
                results.append((at, result))

    threads = []
    start = time.monotonic()
    for at, count in ARRIVALS:
        time.sleep(max(0.0, start + at - time.monotonic()))
        for _ in range(count):
            thread = threading.Thread(target=one, args=(at,), daemon=True)
            thread.start()
            threads.append(thread)
    for thread in threads:
        thread.join(timeout=300)
    outcomes = []
    for at, result in sorted(results, key=lambda r: r[0]):
        assert result is not None and result.outcome == "success", result and result.describe()
        outcomes.append((at, HIT in result.job_log))
    return outcomes


def replay_of(create_seconds: float) -> list[tuple[float, bool]]:
    from driver.settings import LimitSettings, parse_settings

    jobs = [TraceJob(at, 3.0, create_seconds) for at, count in ARRIVALS for _ in range(count)]
    trace = Trace(jobs, ARRIVALS[-1][0] + 120.0, "the test's trace")
    pool = parse_settings({"pool": POOL}).pool
    sim = Replay(
        trace,
        pool,
        LimitSettings(),
        seed=1,
        creates=Constant(create_seconds),
        claim_seconds=1.0,
        start_ready=2,
    )
    result = sim.run("idle_count 2")
    return [(r.job.arrival, bool(r.hit)) for r in sorted(result.runs, key=lambda r: r.job.arrival)]


def test_the_replay_and_the_service_agree_on_which_jobs_find_a_machine(env: Env) -> None:
    # Certificates first (as on a host that has made machines), then slow creates.
    env.faults(create_delay=CREATE_DELAY)
    service = env.start_pool()
    try:
        wait_idle(env, 2, timeout=120)
        measured = pool_create_seconds(env)
        assert measured, "the pool's records hold no create times"
        real = run_for_real(env)
    finally:
        out = stop_pool(service, timeout=180)
    assert "pool: stopped" in out, out
    simulated = replay_of(sum(measured) / len(measured))

    real_hits = sum(hit for _, hit in real)
    simulated_hits = sum(hit for _, hit in simulated)
    assert simulated_hits == 6  # the trace is built for 6 hits of 9; see ARRIVALS
    disagreements = sum(1 for a, b in zip(sorted(real), sorted(simulated), strict=True) if a != b)
    assert abs(real_hits - simulated_hits) <= TOLERANCE, (real, simulated)
    assert disagreements <= TOLERANCE, (real, simulated)
    env.assert_nothing_left()


def test_the_demand_policy_grows_the_pool_from_the_jobs_it_sees(env: Env) -> None:
    env.configure(pool={"policy": "demand", "idle_count": 0, "demand_window": 600})
    service = env.start_pool()
    try:
        time.sleep(3)
        assert idle(env) == 0  # no job seen yet: nothing to be ready for
        threads = [
            threading.Thread(target=lambda: env.run_job(Job(script=["true"])), daemon=True)
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        # A fan-out of three came: the pool now keeps machines ready for the next one.
        wait_idle(env, 1, timeout=120)
        status = json.loads(env.driver("pool", "status", "--json").stdout)
        assert status["target_idle"] >= 1
        assert status["service"]["idle_wanted"] >= 1
    finally:
        out = stop_pool(service, timeout=180)
    assert "keeping ready machines for 95.0% of jobs (policy demand)" in out, out
    assert "pool: stopped" in out, out
    env.assert_nothing_left()
