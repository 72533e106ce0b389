"""A test world: the runner emulation driving the real driver against the
docker-machine test double, each machine a real OpenSSH server.

Used by the integration tests, the benchmarks and the soak. Each world has its
own short temp dir (unix socket paths are short-limited) holding the
docker-machine storage and the driver's state, and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testing import docker_machine as double
from testing.runner import CustomExecutorConfig, Job, JobResult, RunnerEmulator

ROOT = Path(__file__).resolve().parents[1]
DOUBLE_BIN = ROOT / "testing" / "bin"
BUILD_FAILURE = 33  # not 1 and 2, so nothing can hard-code the runner's defaults
SYSTEM_FAILURE = 34


def driver_argv() -> list[str]:
    return [sys.executable, "-m", "driver"]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table; keys quoted (a sysctl's has dots)
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def write_config(path: Path, settings: dict[str, Any]) -> None:
    lines = [f"{k} = {toml_value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for section, values in settings.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{toml_value(k)} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


@dataclass
class Env:
    """One test's world: a docker-machine storage, a driver state dir, a runner."""

    base: Path
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def storage(self) -> Path:
        return self.base / "dm"

    @property
    def state_dir(self) -> Path:
        return self.base / "st"

    @property
    def config_path(self) -> Path:
        return self.base / "driver.toml"

    @property
    def runner_temp(self) -> Path:
        return self.base / "runner-tmp"

    def configure(self, **sections: Any) -> Path:
        self.settings = merge(self.settings, sections)
        write_config(self.config_path, self.settings)
        return self.config_path

    def process_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{DOUBLE_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(ROOT)
        return env

    def runner(self, **overrides: Any) -> RunnerEmulator:
        def call(stage: str) -> list[str]:
            return [*driver_argv()[1:], "--config", str(self.config_path), stage]

        exe = driver_argv()[0]
        config = CustomExecutorConfig(
            config_exec=exe,
            config_args=call("config"),
            prepare_exec=exe,
            prepare_args=call("prepare"),
            run_exec=exe,
            run_args=call("run"),
            cleanup_exec=exe,
            cleanup_args=call("cleanup"),
            build_failure_exit_code=BUILD_FAILURE,
            system_failure_exit_code=SYSTEM_FAILURE,
            graceful_kill_timeout=8.0,
            force_kill_timeout=5.0,
            preparation_retry_delay=0.1,
            cancel_wait=30.0,
            temp_root=str(self.runner_temp),
        )
        for key, value in overrides.items():
            setattr(config, key, value)
        return RunnerEmulator(config, env=self.process_env())

    def run_job(self, job: Job | None = None, **kwargs: Any) -> JobResult:
        return self.runner().run_job(job or Job(), **kwargs)

    def driver(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """One driver command, as an operator would type it."""
        return subprocess.run(
            [*driver_argv(), "--config", str(self.config_path), *args],
            env={**self.process_env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start_pool(self, quiet: bool = False) -> subprocess.Popen[str]:
        """`pool run` on this world's config, as an operator or systemd starts it;
        ``quiet``: its output dropped (a long benchmark would fill an unread pipe)."""
        return subprocess.Popen(
            [*driver_argv(), "--config", str(self.config_path), "pool", "run"],
            env=self.process_env(),
            stdout=subprocess.DEVNULL if quiet else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def pool_status(self) -> dict[str, Any]:
        """What `pool status --json` says."""
        out = self.driver("pool", "status", "--json")
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def stopped_machines(self) -> list[str]:
        """The pool's stopped tier ([pool] stopped_count), as `pool status` lists it."""
        machines = self.pool_status()["machines"]
        assert isinstance(machines, list)
        return [str(m["name"]) for m in machines if m["state"] == "stopped"]

    def machines(self) -> list[str]:
        return double.machine_names(str(self.storage))

    def ready_machines(self) -> list[str]:
        """The pool's ready machines: the markers a job's claim renames."""
        ready = self.state_dir / "pool" / "ready"
        return sorted(p.name for p in ready.glob("*"))

    def wait_ready(
        self, count: int = 1, service: subprocess.Popen[str] | None = None, timeout: float = 180
    ) -> None:
        """Until the pool has ``count`` ready machines; a hang detector, not a speed
        target. Fails early, with the service's output, if ``service`` ended."""
        deadline = time.monotonic() + timeout
        while len(self.ready_machines()) < count:
            if service is not None and service.poll() is not None:
                output = service.stdout.read() if service.stdout else ""
                raise AssertionError(f"the pool service ended ({service.returncode}): {output}")
            if time.monotonic() > deadline:
                status = self.driver("pool", "status").stdout
                wanted = f"{count} ready machine(s) not there in {timeout:g}s"
                raise AssertionError(f"{wanted}:\n{status}")
            time.sleep(0.5)

    def faults(self, **faults: Any) -> None:
        """Faults for the machines' creates. The certificates are made first (as the
        driver's first create would), so the faults hit machine creates only."""
        if not (self.storage / "certs" / "key.pem").exists():
            make = ["create", "--driver", "none", "--url", "tcp://127.0.0.1:2376", "certs"]
            for args in (make, ["rm", "-f", "certs"]):
                subprocess.run(
                    ["docker-machine", "--storage-path", str(self.storage), *args],
                    env=self.process_env(),
                    capture_output=True,
                    check=True,
                )
        double.set_faults(str(self.storage), faults)

    def job_dirs(self) -> list[str]:
        jobs = self.state_dir / "jobs"
        return sorted(p.name for p in jobs.iterdir()) if jobs.exists() else []

    def assert_nothing_left_but_runner_temp(self) -> None:
        """For jobs whose runner "died": its own temp dirs are the runner's business."""
        shutil.rmtree(self.runner_temp, ignore_errors=True)
        self.runner_temp.mkdir()
        self.assert_nothing_left()

    def assert_nothing_left(self) -> None:
        """No machine, no job state, no runner temp dir, no VM process."""
        deadline = time.monotonic() + 10
        while double.storage_pids(str(self.storage)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert self.machines() == []
        assert self.job_dirs() == []
        assert double.storage_pids(str(self.storage)) == []
        assert double.leftover_namespaces(str(self.storage)) == []
        leftover = list(self.runner_temp.iterdir()) if self.runner_temp.exists() else []
        assert leftover == [], f"runner temp dirs left: {leftover}"
        assert _ssh_masters(self.state_dir) == []


def _ssh_masters(state_dir: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "ssh" in line and str(state_dir) in line]


DEFAULT_SETTINGS: dict[str, Any] = {
    "builds_dir": "/builds",
    "cache_dir": "/cache",
    "machine": {"driver": "local", "name_prefix": "gmdt"},
    "create": {"timeout": 60, "attempts": 3, "backoff": 0.2, "backoff_max": 1},
    "ssh": {"ready_timeout": 20, "connect_timeout": 5, "keepalive_interval": 2},
    "docker": {"check": False, "ready_timeout": 30},
    "run": {"kill_grace": 2},
    "cleanup": {"timeout": 60, "remove_attempts": 2, "remove_timeout": 30},
}


def new_world(**settings: Any) -> Env:
    base = Path(tempfile.mkdtemp(prefix="gmd", dir="/tmp"))
    world = Env(base)
    world.runner_temp.mkdir()
    world.configure(
        **merge(
            merge(
                DEFAULT_SETTINGS,
                {
                    "state_dir": str(world.state_dir),
                    "docker_machine": {
                        "program": "docker-machine",
                        "storage_path": str(world.storage),
                    },
                },
            ),
            settings,
        )
    )
    return world


def stop_pool(service: subprocess.Popen[str], timeout: float = 120) -> str:
    """SIGTERM, as systemd stops it (with drain_on_stop its machines go with it); its
    output. SIGKILL, as systemd's stop timeout, if it outlasts ``timeout``."""
    service.send_signal(signal.SIGTERM)
    try:
        out, _ = service.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        service.kill()
        out, _ = service.communicate()
    return out or ""


def wait_for(check: Callable[[], bool], timeout: float = 60) -> None:
    """Until `check()` holds; a hang detector, not a speed target."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def destroy_world(world: Env) -> None:
    double.teardown_all(str(world.storage))
    subprocess.run(["pkill", "-f", str(world.state_dir)], check=False)
    shutil.rmtree(world.base, ignore_errors=True)
