"""How long one sweep takes when GitLab does not answer (issue 16, point 14).

    PATH=$PWD/testing/bin:$PATH .venv/bin/python -m bench.sweep_gitlab --machines 50

A state dir with --machines ready job machines whose runners live (this
process's own chain: so only GitLab's answer could decide), and the real
`gitlab-machine-driver sweep` run against a GitLab that

  silent   accepts connections and never answers (a proxy whose upstream is gone)
  refused  refuses them (nothing listens on its port)

Prints, for each, the sweep's wall time, how many questions reached GitLab and
what the sweep said; the bound to meet is 60 s for 50 machines (the sweep's
timer unit may not outlast its next start). No machine may be removed.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from driver.state import JobPhase, JobRecord, StateDir, ancestors, boot_id, pid_namespace
from testing.world import driver_argv, toml_value


class Silent:
    """Accepts every connection, reads nothing, answers nothing."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connections are refused


def world(base: Path, machines: int, url: str) -> Path:
    storage, state_dir = base / "dm", base / "state"
    token = base / "token"
    token.write_text("glpat-bench\n")
    config = base / "config.toml"
    values = {
        "state_dir": str(state_dir),
        "log_file": str(base / "driver.log"),
    }
    config.write_text(
        "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
        + '[machine]\ndriver = "local"\nname_prefix = "bench"\n'
        + f"[docker_machine]\nstorage_path = {toml_value(str(storage))}\n"
        + f"[gitlab]\nurl = {toml_value(url)}\ntoken_file = {toml_value(str(token))}\n"
    )
    state = StateDir(state_dir)
    for job_id in range(1000, 1000 + machines):
        name = f"bench-{job_id}"
        (storage / "machines" / name).mkdir(parents=True)
        (storage / "machines" / name / "config.json").write_text("{}")
        job = state.job(job_id)
        job.create()
        job.save(
            JobRecord(
                job_id=job_id,
                project_id=7,
                machine=name,
                phase=JobPhase.READY,
                owners=ancestors(),
                boot_id=boot_id(),
                pid_ns=pid_namespace(),
                taken_at=time.time(),
            )
        )
    return config


def measure(kind: str, machines: int) -> float:
    silent = Silent() if kind == "silent" else None
    port = silent.port if silent else refused_port()
    with tempfile.TemporaryDirectory(prefix="gmd-bench-sweep-") as tmp:
        config = world(Path(tmp), machines, f"http://127.0.0.1:{port}")
        started = time.monotonic()
        done = subprocess.run(
            [*driver_argv(), "--config", str(config), "sweep"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        took = time.monotonic() - started
        kept = len(list((Path(tmp) / "dm" / "machines").iterdir()))
        log = (Path(tmp) / "driver.log").read_text()
    asked = len(silent.accepted) if silent else "-"
    if silent:
        silent.close()
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    print(
        f"{kind:8} {machines} machines: {took:6.1f}s, exit {done.returncode}, "
        f"connections GitLab accepted: {asked}, machines kept: {kept}/{machines}"
    )
    print(f"         {summary}")
    print(f"         alarm logged: {'sweep_gitlab_stopped' in log}")
    if kept != machines:
        raise SystemExit("a machine was removed on no answer")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--bound", type=float, default=60.0)
    args = parser.parse_args()
    worst = max(measure(kind, args.machines) for kind in ("silent", "refused"))
    print(f"slowest sweep: {worst:.1f}s (bound {args.bound:g}s)")
    return 0 if worst <= args.bound else 1


if __name__ == "__main__":
    sys.exit(main())
