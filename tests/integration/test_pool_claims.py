"""Prepare's fast path: with the pool service running, the service takes the ready
machine for the job (driver.pool.claims); without it, prepare takes one itself."""

from __future__ import annotations

import json
import re
import signal

from driver import metrics
from driver.state import StateDir
from testing.runner import Job
from testing.world import Env, stop_pool, wait_for
from tests.integration.test_pool import assert_one_hit_past_a_dead_machine, idle

POOL = {
    "idle_count": 2,
    "check_interval": 0.5,
    "health_interval": 3600,  # the jobs, not the service's checks, find a dead machine
    "idle_time": 600,
    "drain_on_stop": True,
}
WORLD = {"pool": POOL}  # the env fixture's world (tests/integration/conftest.py)


def took(name: str) -> re.Pattern[str]:
    """The job log's whole line for a pool machine taken (its idle time and claim time vary)."""
    return re.compile(
        rf"\[gitlab-machine-driver\] Took machine {re.escape(name)} from the warm pool "
        r"\(ready \d+s ago, host key pinned at its creation; [0-9.e-]+s\)"
    )


def admin_events(env: Env, job_id: int) -> list[dict[str, object]]:
    lines = (env.state_dir / "driver.log").read_text().splitlines()
    return [event for event in map(json.loads, lines) if event.get("job_id") == job_id]


def test_a_job_gets_its_machine_from_the_pool_service(env: Env) -> None:
    service = env.start_pool()
    try:
        wait_for(lambda: idle(env) == 2)
        ready = StateDir(env.state_dir).ready()
        job = Job(script=['echo "on $(hostname)"'])
        result = env.run_job(job)
        assert result.outcome == "success", result.describe()
        (line,) = [line for line in result.lines() if "from the warm pool" in line]
        name = next(n for n in ready if took(n).fullmatch(line))
        assert f"on {name}" in result.lines()  # what the script printed, not its echo
        claimed = [e for e in admin_events(env, job.id) if e["event"] == "claimed_from_pool"]
        assert [(e["machine"], e.get("via")) for e in claimed] == [(name, "pool_service")]
        assert name not in env.machines()  # its cleanup removed it
        assert (env.state_dir / "pool" / "claim.sock").exists()
    finally:
        stop_pool(service)
    assert not (env.state_dir / "pool" / "claim.sock").exists()
    env.assert_nothing_left()
    counters = metrics.load(env.state_dir)["counters"]
    assert counters.get(metrics.POOL_CLAIMS.key({"result": "hit"})) == 1
    assert metrics.POOL_CLAIMS.key({"result": "miss"}) not in counters


def test_with_the_service_gone_prepare_takes_the_machine_itself(env: Env) -> None:
    env.configure(pool={"idle_count": 1})
    service = env.start_pool()
    wait_for(lambda: idle(env) == 1)
    (name,) = StateDir(env.state_dir).ready()
    service.send_signal(signal.SIGKILL)  # its socket file stays, nobody answers on it
    service.communicate()
    assert (env.state_dir / "pool" / "claim.sock").exists()
    job = Job(script=['echo "on $(hostname)"'])
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    assert any(took(name).fullmatch(line) for line in result.lines()), result.describe()
    assert f"on {name}" in result.lines()
    claimed = [e for e in admin_events(env, job.id) if e["event"] == "claimed_from_pool"]
    assert [(e["machine"], e.get("via")) for e in claimed] == [(name, None)]
    env.assert_nothing_left()


def test_the_pool_service_passes_over_a_dead_machine_and_takes_the_next(env: Env) -> None:
    from testing import docker_machine as double

    service = env.start_pool()
    try:
        wait_for(lambda: idle(env) == 2)
        dead, live = StateDir(env.state_dir).ready()  # claimed in this order
        double.kill_vm(str(env.storage), dead)
        job = Job(script=['echo "on $(hostname)"'])
        result = env.run_job(job)
        assert result.outcome == "success", result.describe()
        lines = result.lines()
        left = f"[gitlab-machine-driver] Pool machine {dead} did not answer: left for the pool "
        left += "to remove"
        assert left in lines
        assert any(took(live).fullmatch(line) for line in lines), result.describe()
        assert f"on {live}" in lines
        events = admin_events(env, job.id)
        dead_at_claim = [e for e in events if e["event"] == "pool_machine_dead_at_claim"]
        assert [(e["machine"], e.get("via")) for e in dead_at_claim] == [(dead, "pool_service")]
        wait_for(lambda: dead not in env.machines() and idle(env) == 2)
    finally:
        stop_pool(service)
    env.assert_nothing_left()
    assert_one_hit_past_a_dead_machine(env)


def test_a_machine_taken_for_a_prepare_that_lost_the_answer_is_still_its_own(env: Env) -> None:
    """The service took a machine for the job, but its answer never reached the prepare
    (it gave up waiting): prepare's own path takes that machine over, removes nothing."""
    from driver.docker_machine import DockerMachine
    from driver.pool.claims import ClaimDesk, ClaimServer, Reply, Request
    from driver.settings import load_settings

    env.configure(pool={"idle_count": 1})
    service = env.start_pool()
    wait_for(lambda: idle(env) == 1)
    (name,) = StateDir(env.state_dir).ready()
    service.send_signal(signal.SIGKILL)  # its machine stays ready; a desk of ours answers
    service.communicate()
    settings = load_settings(env.config_path)
    desk = ClaimDesk(settings, env.config_path, DockerMachine(settings))

    def answer_lost(request: Request, peer_pid: int) -> Reply:
        assert desk.answer(request, peer_pid).outcome == "claimed"
        return Reply("error", "the answer was lost")

    server = ClaimServer(env.state_dir / "pool" / "claim.sock", answer_lost)
    server.start()
    try:
        job = Job(script=['echo "on $(hostname)"'])
        result = env.run_job(job)
    finally:
        server.stop()
    assert result.outcome == "success", result.describe()
    taken = f"[gitlab-machine-driver] Took machine {name} from the warm pool (claimed by the pool "
    assert taken + "service)" in result.lines()
    assert f"on {name}" in result.lines()
    assert "left over" not in result.job_log
    env.assert_nothing_left()
