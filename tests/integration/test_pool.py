"""The warm pool: the service keeps machines ready, prepare claims one, a machine
serves one job and is destroyed, jobs run whether the service is up or not."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from driver import metrics
from driver.state import StateDir
from testing import docker_machine as double
from testing.runner import Job
from testing.world import Env, stop_pool, wait_for

POOL = {
    "idle_count": 2,
    "check_interval": 0.5,
    "health_interval": 2,
    "idle_time": 600,
    "drain_on_stop": True,
}


# The world the env fixture (tests/integration/conftest.py) makes for each test.
WORLD = {"pool": POOL}


def idle(env: Env) -> int:
    counts = env.pool_status()["counts"]
    assert isinstance(counts, dict)
    return int(counts["idle"])


def machine_names(env: Env) -> list[str]:
    """The machines `pool status` lists."""
    machines = env.pool_status()["machines"]
    assert isinstance(machines, list)
    return [str(m["name"]) for m in machines]


def test_a_job_takes_a_ready_machine_and_the_pool_replaces_it(env: Env) -> None:
    service = env.start_pool()
    try:
        wait_for(lambda: idle(env) == 2)
        ready_before = set(machine_names(env))
        job = Job(script=['echo "on $(hostname)"'])
        result = env.run_job(job)
        assert result.outcome == "success", result.describe()
        assert "from the warm pool" in result.job_log
        used = next(name for name in ready_before if f"on {name}" in result.job_log)
        assert "No ready machine" not in result.job_log  # its speed is bench/pool.py's
        # Single use: the job's machine is destroyed, never returned to the pool.
        assert used not in env.machines()
        wait_for(lambda: idle(env) == 2)
        assert used not in machine_names(env)
    finally:
        out = stop_pool(service)
    assert "pool: stopped" in out
    env.assert_nothing_left()


def test_two_jobs_at_once_never_share_a_machine(env: Env) -> None:
    env.configure(pool={"idle_count": 1})
    service = env.start_pool()
    try:
        wait_for(lambda: idle(env) == 1)
        jobs = [Job(script=['echo "on $(hostname)"']) for _ in range(2)]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(env.run_job, jobs))
        hosts = set()
        for result in results:
            assert result.outcome == "success", result.describe()
            hosts |= {line for line in result.job_log.splitlines() if line.startswith("on ")}
        assert len(hosts) == 2
        assert sum("from the warm pool" in r.job_log for r in results) == 1
        assert sum("No ready machine in the warm pool" in r.job_log for r in results) == 1
    finally:
        stop_pool(service)
    env.assert_nothing_left()


def test_jobs_run_when_the_service_is_down(env: Env) -> None:
    result = env.run_job(Job())
    assert result.outcome == "success", result.describe()
    assert "No ready machine in the warm pool: creating one" in result.job_log
    env.assert_nothing_left()


def test_a_job_waiting_for_capacity_takes_the_pool_machine_that_holds_it(env: Env) -> None:
    # One machine allowed: the pool's create in flight holds the only slot when the job
    # comes. The job must not wait for a slot that machine will never give back.
    env.configure(pool={"idle_count": 1}, limits={"max_machines": 1, "wait_timeout": 60})
    env.faults(create_delay=5)
    service = env.start_pool()
    try:
        wait_for(lambda: bool(env.pool_status()["service"].get("creating")))
        result = env.run_job(Job(script=['echo "on $(hostname)"']))
        assert result.outcome == "success", result.describe()
        assert "No ready machine in the warm pool" in result.job_log
        assert "Waiting for capacity: 1 of 1 machines in use" in result.job_log
        assert "from the warm pool" in result.job_log
        # At once, not after a failed attempt the runner retried (the slot never came).
        assert "Preparation failed" not in result.job_log
    finally:
        stop_pool(service)
    env.assert_nothing_left()


def test_a_restarted_service_adopts_ready_machines_and_drains_on_stop(env: Env) -> None:
    env.configure(pool={"drain_on_stop": False})
    service = env.start_pool()
    wait_for(lambda: idle(env) == 2)
    first = set(machine_names(env))
    stop_pool(service)
    assert set(env.machines()) == first  # kept across a restart (drain is off)
    env.configure(pool={"drain_on_stop": True})
    service = env.start_pool()
    time.sleep(3)
    assert set(machine_names(env)) == first
    stop_pool(service)
    assert env.machines() == []
    env.assert_nothing_left()


def test_an_unhealthy_idle_machine_is_replaced(env: Env) -> None:
    env.configure(pool={"idle_count": 1})
    service = env.start_pool()
    try:
        wait_for(lambda: idle(env) == 1)
        (sick,) = machine_names(env)
        double.kill_vm(str(env.storage), str(sick))
        wait_for(lambda: sick not in env.machines() and idle(env) == 1, timeout=90)
    finally:
        stop_pool(service)
    env.assert_nothing_left()
    counters = metrics.load(env.state_dir)["counters"]
    assert counters.get(metrics.POOL_DISCARDED.key({"reason": "ssh_lost"})) == 1


def master_port(control_path: Path) -> int:
    """The local TCP port of the SSH master connection opened at ``control_path`` (a
    master names itself "ssh: CONTROL_PATH [mux]")."""
    title = f"ssh: {control_path} [mux]"
    masters = [
        pid
        for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
        if _cmdline(pid).startswith(title)
    ]
    assert len(masters) == 1, masters
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in out.splitlines() if f"pid={masters[0]}," in line]
    return int(line.split()[3].rpartition(":")[2])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def test_the_job_goes_on_over_the_connection_the_pool_kept_open(env: Env) -> None:
    env.configure(pool={"idle_count": 1, "health_interval": 3600})
    service = env.start_pool()
    try:
        wait_for(lambda: idle(env) == 1)
        (name,) = StateDir(env.state_dir).ready()
        port = master_port(StateDir(env.state_dir).pool_dir(name).control_path)
        result = env.run_job(Job(script=['echo "client: $SSH_CONNECTION"']))
        assert result.outcome == "success", result.describe()
        assert f"Took machine {name} from the warm pool" in result.job_log
        (client,) = [line for line in result.job_log.splitlines() if line.startswith("client:")]
        assert client.split()[2] == str(port)  # the same TCP connection, no new one
    finally:
        stop_pool(service)
    env.assert_nothing_left()


def test_a_job_passes_over_a_ready_machine_that_died_and_takes_the_next(env: Env) -> None:
    # No health check in between: the job, not the service, finds the dead one.
    env.configure(pool={"health_interval": 3600})
    service = env.start_pool()
    try:
        wait_for(lambda: idle(env) == 2)
        dead, live = StateDir(env.state_dir).ready()  # claimed in this order
        double.kill_vm(str(env.storage), dead)
        result = env.run_job(Job(script=['echo "on $(hostname)"']))
        assert result.outcome == "success", result.describe()
        assert f"Pool machine {dead} did not answer" in result.job_log
        assert f"Took machine {live} from the warm pool" in result.job_log
        assert f"on {live}" in result.lines()  # what the script printed, not its echo
        assert "No ready machine" not in result.job_log
        # Removed by the service (the job did not wait for that), and replaced.
        wait_for(lambda: dead not in env.machines() and idle(env) == 2)
        assert dead not in machine_names(env)
    finally:
        stop_pool(service)
    env.assert_nothing_left()
    assert_one_hit_past_a_dead_machine(env)


def test_sweep_leaves_the_pool_alone_and_status_reports(env: Env) -> None:
    service = env.start_pool()
    try:
        wait_for(lambda: idle(env) == 2)
        swept = env.driver("sweep")
        assert swept.stdout.count("keeping (idle in the warm pool)") == 2, swept.stdout
        text = env.driver("pool", "status").stdout
        assert "service: running" in text and "idle 2" in text
    finally:
        stop_pool(service)
    env.assert_nothing_left()


def assert_one_hit_past_a_dead_machine(env: Env) -> None:
    """One claim, a hit, counted once; the dead machine it passed over counted once."""
    counters = metrics.load(env.state_dir)["counters"]
    assert counters.get(metrics.POOL_DISCARDED.key({"reason": "dead_at_claim"})) == 1
    assert counters.get(metrics.POOL_CLAIMS.key({"result": "hit"})) == 1
    assert metrics.POOL_CLAIMS.key({"result": "miss"}) not in counters
