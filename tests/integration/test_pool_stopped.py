"""The stopped tier through the runner emulation: the pool service keeps a machine made
ready then stopped; a job that finds no ready one starts it (its address read again,
its engine certificates made again if it moved, its pinned host key enforced), runs
its script there, and cleanup removes it; the service makes another. A machine that
answers with another host key, or that the cloud will not start, costs the machine,
never the job: it creates its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from driver import metrics
from testing import docker_machine as double
from testing.runner import Job
from testing.world import Env, stop_pool, wait_for

WORLD = {
    "pool": {
        "idle_count": 0,
        "stopped_count": 1,
        "check_interval": 0.5,
        "health_interval": 2,
        "idle_time": 600,
        "drain_on_stop": True,
    },
}
SAY = "[gitlab-machine-driver] "


def said(lines: list[str], pattern: str) -> list[re.Match[str]]:
    """The driver's own job-log lines that match ``pattern`` whole."""
    return [m for line in lines if (m := re.fullmatch(re.escape(SAY) + pattern, line))]


def counter(env: Env, metric: metrics.Counter, label: str, value: str) -> float:
    counters = metrics.load(env.state_dir)["counters"]
    return float(counters.get(metric.key({label: value}), 0))


def test_a_job_starts_the_stopped_machine_and_the_service_makes_another(env: Env) -> None:
    service = env.start_pool()
    try:
        wait_for(lambda: len(env.stopped_machines()) == 1, timeout=180)
        [name] = env.stopped_machines()
        assert double.vm_pids(str(env.storage), name) == []  # stopped: nothing runs
        result = env.run_job(Job(script=['echo "on $(hostname)"']))
        assert result.outcome == "success", result.describe()
        lines = result.lines()
        assert said(lines, rf"Started machine {name} from the warm pool's stopped tier \(.*s\)")
        assert f"on {name}" in lines
        assert name not in env.machines()  # single use: cleanup removed it
        wait_for(
            lambda: len(env.stopped_machines()) == 1 and env.stopped_machines() != [name],
            timeout=180,
        )
        assert counter(env, metrics.POOL_STOPPED_STARTS, "result", "started") == 1
    finally:
        stop_pool(service)
    env.assert_nothing_left()


@pytest.mark.skipif(not Path("/usr/sbin/dockerd").exists(), reason="needs docker.io")
@pytest.mark.parametrize("check", [True, False])
def test_a_machine_back_at_a_new_address_is_used_there(env: Env, check: bool) -> None:
    """With [docker] check (the default) the engine is spoken to over TLS, and its
    certificate named the old address: made again. Without, SSH alone is used."""
    env.configure(docker={"check": check})
    service = env.start_pool()
    try:
        wait_for(lambda: len(env.stopped_machines()) == 1, timeout=180)
        [name] = env.stopped_machines()
        env.faults(start_new_address={"times": 1})
        result = env.run_job(Job(script=['echo "on $(hostname)"']))
        assert result.outcome == "success", result.describe()
        lines = result.lines()
        moved = said(lines, rf"Machine {name} came back at a new address: (\S+) \(was (\S+)\)")
        assert moved and moved[0][1] != moved[0][2]
        regenerated = said(lines, rf"Regenerating the engine certificates of {name} for .*")
        assert bool(regenerated) == check
        if check:
            answers = rf"Docker engine \S+ answers at tcp://{re.escape(moved[0][1])}:\d+ .*"
            assert said(lines, answers), lines
        assert f"on {name}" in lines
    finally:
        stop_pool(service)
    env.assert_nothing_left()


def test_another_host_key_is_refused_and_the_job_creates_its_own(env: Env) -> None:
    service = env.start_pool()
    try:
        wait_for(lambda: len(env.stopped_machines()) == 1, timeout=180)
        [name] = env.stopped_machines()
        double.rotate_host_key(str(env.storage), name)  # another VM would answer there
        result = env.run_job(Job(script=['echo "on $(hostname)"']))
        assert result.outcome == "success", result.describe()
        lines = result.lines()
        assert said(
            lines,
            rf"Stopped pool machine {name} was not used \(the machine at \S+ presented a "
            r"different SSH host key than at its creation: .*\); it was removed: creating one "
            "for this job",
        ), lines
        assert f"on {name}" not in lines
        assert any(line.startswith("on gmdt-") for line in lines)  # its own machine
        assert counter(env, metrics.POOL_DISCARDED, "reason", "host_key_changed") == 1
    finally:
        stop_pool(service)
    env.assert_nothing_left()


@pytest.mark.parametrize("fault", ["start_fail", "start_hang"])
def test_a_start_that_fails_or_hangs_costs_the_machine_not_the_job(env: Env, fault: str) -> None:
    env.configure(pool={"start_timeout": 5})  # a hung start is given up after this
    service = env.start_pool()
    try:
        wait_for(lambda: len(env.stopped_machines()) == 1, timeout=180)
        [name] = env.stopped_machines()
        env.faults(**{fault: {"times": 1}})
        result = env.run_job(Job(script=['echo "on $(hostname)"']))
        assert result.outcome == "success", result.describe()
        lines = result.lines()
        assert said(lines, rf"Stopped pool machine {name} was not used \(.*\); it was removed: .*")
        assert name not in env.machines()
        assert counter(env, metrics.POOL_DISCARDED, "reason", "start_failed") == 1
    finally:
        stop_pool(service)
    env.assert_nothing_left()


def test_a_job_waiting_for_capacity_takes_the_stopped_machine_that_holds_it(env: Env) -> None:
    """One slot ([limits] max_machines = 1), held by the tier's create in flight: the job
    waits for capacity, and takes the machine once it is stopped, as it would a ready one."""
    env.configure(limits={"max_machines": 1, "wait_timeout": 60})
    service = env.start_pool()
    try:
        wait_for(lambda: env.pool_status()["counts"]["creating"] == 1, timeout=60)
        result = env.run_job(Job(script=['echo "on $(hostname)"']))
        assert result.outcome == "success", result.describe()
        lines = result.lines()
        assert any(line.startswith(f"{SAY}Waiting for capacity: ") for line in lines), lines
        started = said(lines, r"Started machine (\S+) from the warm pool's stopped tier \(.*s\)")
        assert started and f"on {started[0][1]}" in lines
        assert len(result.execs("prepare")) == 1  # while it waited, not on a retry after
        histograms = metrics.load(env.state_dir)["histograms"]
        assert metrics.PREPARE_SECONDS.key({"source": "stopped"}) in histograms
    finally:
        stop_pool(service)
    env.assert_nothing_left()
