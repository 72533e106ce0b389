"""What admins see: JSON logs with the job bound to every line, Prometheus
metrics, and never a secret in either, on argv, or in a world-readable file."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from testing.runner import Job, Variable
from testing.world import Env, driver_argv

SECRET = "s3cr3t-Value-that-must-not-leak"


def host_cmdlines() -> list[str]:
    lines = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                lines.append(
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
            except OSError:
                continue
    return lines


def test_secrets_stay_out_of_logs_argv_and_files(env: Env) -> None:
    job = Job(
        variables=[Variable("DEPLOY_KEY", SECRET, masked=True)],
        script=["sleep 3", 'test -n "$DEPLOY_KEY" && echo has-the-key'],
    )
    seen_on_argv: list[str] = []
    readable_by_others: set[str] = set()
    seen_files: set[str] = set()
    done = threading.Event()

    def watch_argv() -> None:
        while not done.is_set():
            seen_on_argv.extend(c for c in host_cmdlines() if SECRET in c or job.token in c)
            # While the job runs: its SSH config, pinned key, record, markers, sockets.
            for path in [env.state_dir, *env.state_dir.rglob("*")]:
                try:
                    mode = stat.S_IMODE(path.lstat().st_mode)
                except OSError:
                    continue  # removed meanwhile
                seen_files.add(path.name)
                if mode & 0o077:
                    readable_by_others.add(f"{path} is mode {mode:o}")
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_argv)
    watcher.start()
    try:
        result = env.run_job(job)
    finally:
        done.set()
        watcher.join()
    assert result.outcome == "success", result.describe()
    assert "has-the-key" in result.lines()
    assert seen_on_argv == []
    assert readable_by_others == set()
    assert {"state.json", "ssh_config", "known_hosts", "cm", "stage.lock"} <= seen_files
    log = (env.state_dir / "driver.log").read_text()
    assert SECRET not in log and job.token not in log
    # Every line is JSON with the job bound to it.
    events = [json.loads(line) for line in log.splitlines()]
    assert {e["job_id"] for e in events} == {job.id}
    assert {"prepared", "machine_created", "cleaned_up"} <= {e["event"] for e in events}
    assert all(e["machine"] == f"gmdt-{job.id}" for e in events if "machine" in e)
    # Nothing the driver keeps on the host is readable by others.
    for path in [env.state_dir, *env.state_dir.rglob("*")]:
        if path.is_file() or path.is_dir():
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o077 == 0, f"{path} is mode {mode:o}"


def test_pool_service_serves_prometheus_metrics(env: Env) -> None:
    env.configure(
        pool={
            "idle_count": 1,
            "check_interval": 0.5,
            "drain_on_stop": True,
            "metrics_address": "127.0.0.1:19402",
        }
    )
    assert env.run_job(Job()).outcome == "success"  # a job made and removed its own machine
    service = subprocess.Popen(
        [*driver_argv(), "--config", str(env.config_path), "pool", "run"],
        env=env.process_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        text = ""
        while 'gitlab_machine_driver_machines{state="idle"} 1.0' not in text:
            assert time.monotonic() < deadline, text
            time.sleep(0.5)
            try:
                with urllib.request.urlopen("http://127.0.0.1:19402/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                continue
        assert 'gitlab_machine_driver_machine_creations_total{by="job"} 1.0' in text
        assert 'gitlab_machine_driver_machine_creations_total{by="pool"}' in text
        assert 'gitlab_machine_driver_pool_claims_total{result="miss"} 1.0' in text
        assert 'gitlab_machine_driver_machine_removals_total{result="clean"}' in text
        assert "gitlab_machine_driver_prepare_seconds_bucket" in text
        assert "gitlab_machine_driver_machine_create_seconds_count" in text
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=120)
    env.assert_nothing_left()
