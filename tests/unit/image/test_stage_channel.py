"""Image mode's stage path without Docker: the VM-side wrapper (driver/stages/run.py)
talking to a container's keeper (driver/image/sh/keeper.sh) through its channel dir.

The "container" is a keeper process run by a shell (dash, busybox sh, bash) on this
host, which reads the keeper from its stdin as in a container, and every process
started under it (they carry CONTAINER_MARK in their environment, as a container's
processes share its PID namespace even when their parent dies); a stand-in `docker`
answers `inspect` from a file and does the cancel's fallback `exec -u 0 ... kill` on
those processes only, sparing the keeper, and notes that it was used.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from driver.image.programs import keeper
from driver.stages.run import PROBE, TRAILER, WRAPPER

SHELLS = [
    pytest.param(
        ["dash"], id="dash", marks=pytest.mark.skipif(not shutil.which("dash"), reason="no dash")
    ),
    pytest.param(
        ["busybox", "sh"],
        id="busybox",
        marks=pytest.mark.skipif(not shutil.which("busybox"), reason="no busybox"),
    ),
    pytest.param(["bash"], id="bash"),  # what the detect script finds first in most images
]

CONTAINER_MARK = "GMD_TEST_CONTAINER"
FAKE_DOCKER = f"""#!{sys.executable}
import os, re, signal, sys
here = os.path.dirname(os.path.abspath(__file__))
args = sys.argv[1:]
if args[0] == "inspect":
    print(open(os.path.join(here, "running")).read().strip())
elif args[0] == "logs":  # logs -f -t [--since T] NAME: "tick N" every 0.1 s from the start
    import time
    name, since = args[-1], args[args.index("--since") + 1] if "--since" in args else ""
    start_file = os.path.join(here, "started-" + name)
    if not os.path.exists(start_file):
        open(start_file, "w").write(str(time.time_ns()))
    start = int(open(start_file).read())
    for i in range(100000):
        at = start + i * 100_000_000
        while time.time_ns() < at:
            time.sleep(0.01)
        stamp = f"{{at:020d}}"
        if stamp >= since:
            print(f"{{stamp}} tick {{i}}", flush=True)
elif args[0] == "exec":
    if len(args) > 2:  # the wrapper's, not the test's own stop of the "container"
        open(os.path.join(here, "exec-used"), "a").write(args[-1] + "\\n")
    keeper = int(open(os.path.join(here, "keeper")).read())
    mark = ("{CONTAINER_MARK}=" + here).encode()
    sig = getattr(signal, "SIG" + re.search(r"kill -(\\w+)", args[-1]).group(1))
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (keeper, os.getpid()):
            continue
        try:
            with open(f"/proc/{{entry}}/environ", "rb") as f:
                if mark in f.read().split(b"\\0"):
                    os.kill(int(entry), sig)
        except OSError:
            pass
"""


@dataclass
class Container:
    tmp: Path  # the VM's TMPDIR
    channel: Path
    bin: Path
    keeper: subprocess.Popen[bytes]

    def stop(self) -> None:
        """The container stops: all its processes die at once."""
        self.keeper.kill()
        self.keeper.wait()
        subprocess.run([str(self.bin / "docker"), "exec", "kill -KILL"], check=True)

    def env(self) -> dict[str, str]:
        return {**os.environ, "TMPDIR": str(self.tmp), "PATH": f"{self.bin}:{os.environ['PATH']}"}

    def exec_used(self) -> bool:
        """Did a cancel need the stand-in's `docker exec`?"""
        return (self.bin / "exec-used").exists()

    def start_stage(
        self, script: bytes, grace: float = 1, services: str = ""
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["bash", "-c", WRAPPER, "gmd-stage", str(grace), "0123abcd", "ctr",
             str(self.keeper.pid), str(self.channel), services],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(),
        )  # fmt: skip
        assert proc.stdin
        proc.stdin.write(b"%d\n" % len(script) + script + TRAILER)
        proc.stdin.flush()
        return proc

    def run_stage(self, script: bytes, services: str = "") -> tuple[int, bytes, bytes]:
        proc = self.start_stage(script, services=services)
        proc.wait(timeout=30)  # stdin open until the stage ends, as `run` keeps it
        out, err = proc.communicate(timeout=30)
        return proc.returncode, out, err

    def probe(self) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["bash", "-c", PROBE, "gmd-probe", "0123abcd"], capture_output=True, env=self.env()
        )


# A container's processes start with every signal at its default disposition, whatever
# the test runner ignored: a non-interactive shell's background job ignores SIGINT and
# SIGQUIT, and a child inherits that (`env --default-signal` undoes it, coreutils 8.31+).
AS_IN_A_CONTAINER = ["env", "--default-signal"]


def start_container(shell: list[str], tmp_path: Path, path: str | None = None) -> Container:
    """The keeper as the container's command starts it: a shell reading it from stdin,
    which stays open (``path``: the container's PATH)."""
    tmp, channel, bin_dir = tmp_path / "tmp", tmp_path / "channel", tmp_path / "bin"
    for d in (tmp, bin_dir):
        d.mkdir()
    channel.mkdir(mode=0o711)
    os.mkfifo(channel / "ctl", 0o644)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    (bin_dir / "running").write_text("true\n")
    proc = subprocess.Popen(
        [*map(_which, AS_IN_A_CONTAINER[:1]), *AS_IN_A_CONTAINER[1:], _which(shell[0]), *shell[1:]],
        stdin=subprocess.PIPE,  # the keeper, then open and silent, as the container's stdin
        stdout=subprocess.DEVNULL,
        env={**os.environ, CONTAINER_MARK: str(bin_dir), **({"PATH": path} if path else {})},
        start_new_session=True,  # as a container's processes, apart from ours
    )
    assert proc.stdin
    proc.stdin.write(keeper(str(channel)).encode())
    proc.stdin.flush()
    (bin_dir / "keeper").write_text(str(proc.pid))
    return Container(tmp, channel, bin_dir, proc)


def _which(program: str) -> str:
    return shutil.which(program) or program


@pytest.fixture(params=SHELLS)
def container(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Container]:
    box = start_container(request.param, tmp_path)
    try:
        yield box
    finally:
        box.stop()


def _ignored_signals(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
    return int(line.split()[1], 16)


def test_the_keeper_starts_as_a_containers_process_whatever_the_suite_ignores(
    tmp_path: Path,
) -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `make test &`
    try:
        box = start_container(["sh"], tmp_path)
    finally:
        signal.signal(signal.SIGINT, before)
    try:
        rc, out, _ = box.run_stage(b"sh -c 'kill -INT $$; echo ignored'; echo rc=$?\n")
        assert (rc, out) == (0, b"rc=130\n")
        # The keeper has run a stage: it is the shell now. None of the signals a shell's
        # job control ignores is (glibc's own real-time ones, 32 and up, are no concern).
        ignored = _ignored_signals(box.keeper.pid)
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
            assert not ignored & (1 << (sig - 1)), sig.name
    finally:
        box.stop()


def test_exit_code_and_streams_pass_through(container: Container) -> None:
    rc, out, err = container.run_stage(b"echo out; echo err >&2; exit 42\n")
    assert (rc, out, err) == (42, b"out\n", b"err\n")
    # Nothing left: not the script in the VM's temp dir, no FIFO but the keeper's own.
    assert list(container.tmp.iterdir()) == []
    assert [p.name for p in container.channel.iterdir()] == ["ctl"]
    rc, out, _ = container.run_stage(b"echo second stage\n")  # the keeper takes the next
    assert (rc, out) == (0, b"second stage\n")


def test_a_real_255_is_told_apart_from_a_lost_container(container: Container) -> None:
    rc, _, _ = container.run_stage(b"exit 255\n")
    assert rc == 255
    assert container.probe().stdout.strip() == b"255"


def test_the_stage_may_trap_sigint(container: Container) -> None:
    # An asynchronous list in sh starts with SIGINT ignored, beyond a trap's reach.
    rc, out, _ = container.run_stage(b"sh -c 'kill -INT $$; echo ignored'; echo rc=$?\n")
    assert (rc, out) == (0, b"rc=130\n")


def test_the_channel_is_private_to_the_vm_user_and_the_container(container: Container) -> None:
    proc = container.start_stage(b"sleep 1\n")
    deadline = time.monotonic() + 10
    while not list(container.tmp.iterdir()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert stat.S_IMODE(container.channel.stat().st_mode) == 0o711  # nobody lists tokens
    proc.wait(timeout=30)
    proc.communicate()


def test_closing_stdin_stops_the_stage_even_if_it_ignores_sigterm(container: Container) -> None:
    pidfile = container.tmp.parent / "child.pid"
    proc = container.start_stage(
        f"trap '' TERM; sleep 300 & echo $! > {pidfile}; wait\n".encode(), grace=1
    )
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert proc.stdin
    proc.stdin.close()  # what happens when the driver's run is cancelled or killed
    cancelled = time.monotonic()
    while _alive(child):  # SIGKILL after the grace (1 s)
        assert time.monotonic() < cancelled + 2.5, "the stage's child survived"
        time.sleep(0.05)
    proc.wait(timeout=15)
    assert not container.exec_used()  # the keeper ended them
    assert container.keeper.poll() is None  # the keeper lives on for after_script
    rc, out, _ = container.run_stage(b"echo next\n")
    assert (rc, out) == (0, b"next\n")


def test_a_container_that_stops_mid_stage_is_a_lost_container(container: Container) -> None:
    proc = container.start_stage(b"echo begun; sleep 300\n")
    assert proc.stdout
    assert proc.stdout.readline() == b"begun\n"
    (container.bin / "running").write_text("false\n")
    container.stop()  # its processes die, the pipes close
    proc.wait(timeout=30)
    assert proc.returncode == 255
    assert b"the job container ctr is not running" in container.probe().stderr


def _alive(pid: int) -> bool:
    """Running, not a zombie. Reaped between any two steps here: gone (the kernel says
    so at the open, FileNotFoundError, or at the read, ProcessLookupError)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_debug_services_follows_their_output_during_each_stage(container: Container) -> None:
    services = "svc-0=db,svc-1=web-www"
    shown: list[str] = []
    for script in (b"sleep 1; echo done\n", b"true\n", b"true\n", b"sleep 1; echo done\n"):
        rc, _, err = container.run_stage(script, services=services)
        assert rc == 0
        shown += err.decode().splitlines()
    assert subprocess.run(["pgrep", "-f", f"{container.bin}/docker logs"]).returncode == 1
    # Prefixed as the docker executor does; every line once, none lost between stages
    # (the short stages may end before their followers show anything).
    for label in ("db", "web-www"):
        ticks = [int(line.split()[-1]) for line in shown if line.startswith(f"[service:{label}]")]
        assert ticks == list(range(len(ticks))), ticks
        # Two one-second stages at ten lines a second: about 20, fewer when a loaded
        # host starts the followers late; none at all would mean nothing was followed.
        assert len(ticks) >= 5
    # Without CI_DEBUG_SERVICES nothing is followed.
    assert container.run_stage(b"sleep 0.5\n") == (0, b"", b"")


def test_a_stage_killing_its_process_group_spares_the_keeper(container: Container) -> None:
    # A common cleanup idiom: it must end the stage's own processes only. Now and then
    # bash loses the SIGTERM its background child gets before it execs: that child must
    # not hold the stage open.
    rc, out, _ = container.run_stage(b"trap 'kill 0' EXIT; sleep 300 & echo bye\n")
    assert (rc, out) == (143, b"bye\n")
    assert container.keeper.poll() is None
    assert container.run_stage(b"echo next\n") == (0, b"next\n", b"")


def test_what_a_stage_leaves_in_its_process_group_ends_with_it(container: Container) -> None:
    # As docker ends a container with its shell: else the child, holding the stage's
    # output, would keep the stage open for its 300 s. One that has left the group (a
    # daemon: its PID file is written after its setsid) lives on.
    left, apart = container.tmp.parent / "left.pid", container.tmp.parent / "apart.pid"
    rc, out, _ = container.run_stage(
        f"sleep 300 & echo $! > {left}\n"
        f"setsid sh -c 'echo $$ > {apart}; exec sleep 300' > /dev/null 2>&1 &\n"
        f"until [ -s {apart} ]; do sleep 0.01; done; echo bye\n".encode()
    )
    assert (rc, out) == (0, b"bye\n")
    deadline = time.monotonic() + 10
    while _alive(int(left.read_text())):
        assert time.monotonic() < deadline, "the stage's background child survived it"
        time.sleep(0.05)
    assert _alive(int(apart.read_text()))
    assert container.run_stage(b"echo next\n") == (0, b"next\n", b"")


def _cancel_and_time(container: Container, grace: float) -> tuple[float, subprocess.Popen[bytes]]:
    """Cancel a stage running `sleep 300` (SIGTERM ends it): seconds until the sleep is gone."""
    pidfile = container.tmp.parent / "sleep.pid"
    proc = container.start_stage(f"sleep 300 & echo $! > {pidfile}; wait\n".encode(), grace)
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child = int(pidfile.read_text())
    assert proc.stdin
    proc.stdin.close()
    cancelled = time.monotonic()
    while _alive(child):
        assert time.monotonic() < cancelled + grace + 5, "the stage's sleep survived"
        time.sleep(0.01)
    return time.monotonic() - cancelled, proc


def test_a_cancel_is_the_keepers_to_do_and_as_quick_as_in_the_shell(
    container: Container,
) -> None:
    # The keeper signals the stage's process group itself: no docker exec (seconds on a
    # slow VM), and the SIGTERM arrives at once, well within the grace.
    took, proc = _cancel_and_time(container, grace=3)
    assert took < 1.0, took
    assert not container.exec_used()
    proc.wait(timeout=15)
    assert proc.returncode == 255  # cancelled: the driver's run reports it
    assert container.keeper.poll() is None
    assert container.run_stage(b"echo next\n") == (0, b"next\n", b"")


def test_without_setsid_a_cancel_falls_back_to_docker_exec(tmp_path: Path) -> None:
    # No setsid in the image: the stage has no process group of its own for the keeper
    # to signal, so the wrapper stops the container's processes with a docker exec.
    tools = tmp_path / "image-bin"
    tools.mkdir()
    (tools / "sleep").symlink_to(shutil.which("sleep") or "/bin/sleep")
    box = start_container(["bash"], tmp_path, path=str(tools))
    try:
        _, proc = _cancel_and_time(box, grace=1)
        assert box.exec_used()
        proc.wait(timeout=15)
        assert box.keeper.poll() is None
        assert box.run_stage(b"echo next\n") == (0, b"next\n", b"")
    finally:
        box.stop()
