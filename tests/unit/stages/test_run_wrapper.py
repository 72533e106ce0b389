"""The stage wrapper that runs in the VM, exercised locally with bash (no SSH)."""

import os
import subprocess
import time
from pathlib import Path

from driver.stages.run import PROBE, TRAILER, WRAPPER


def start(tmp_path: Path, script: bytes, grace: float = 1) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["bash", "-c", WRAPPER, "gmd-stage", str(grace), "tok123"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.stdin
    proc.stdin.write(b"%d\n" % len(script) + script + TRAILER)
    proc.stdin.flush()
    return proc


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, bytes, bytes]:
    # stdin stays open until the stage ends, as the driver's run keeps it: closing it
    # earlier is a cancel. (Outputs here are small enough not to fill the pipes.)
    proc.wait(timeout=30)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_exit_code_and_streams_pass_through(tmp_path: Path) -> None:
    rc, out, err = finish(start(tmp_path, b"echo out; echo err >&2; exit 42\n"))
    assert (rc, out, err) == (42, b"out\n", b"err\n")
    assert list(tmp_path.iterdir()) == []  # the script file is gone


def test_a_command_reading_stdin_cannot_eat_the_script(tmp_path: Path) -> None:
    rc, out, _ = finish(start(tmp_path, b"cat\necho after-cat\nread x || echo read-eof\n"))
    assert rc == 0
    assert out == b"after-cat\nread-eof\n"


def test_the_script_file_is_private(tmp_path: Path) -> None:
    rc, out, _ = finish(start(tmp_path, b'stat -c %a "$0"\n'))
    assert (rc, out) == (0, b"600\n")


def test_a_real_255_leaves_a_marker_for_the_probe(tmp_path: Path) -> None:
    rc, _, _ = finish(start(tmp_path, b"exit 255\n"))
    assert rc == 255
    probe = subprocess.run(
        ["bash", "-c", PROBE, "gmd-probe", "tok123"],
        capture_output=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        check=True,
    )
    assert probe.stdout.strip() == b"255"
    assert list(tmp_path.iterdir()) == []


def test_an_incomplete_upload_fails_as_the_wrapper_not_the_script(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        ["bash", "-c", WRAPPER, "gmd-stage", "1", "t"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    _, err = proc.communicate(b"100\necho short", timeout=10)
    assert proc.returncode == 255
    assert b"arrived incomplete" in err
    assert list(tmp_path.iterdir()) == []


def test_closing_stdin_stops_the_stage_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path.parent / f"{tmp_path.name}.pid"
    script = f"sleep 300 & echo $! > {pidfile}; trap '' TERM; wait\n".encode()
    proc = start(tmp_path, script, grace=1)
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert proc.stdin
    proc.stdin.close()  # what happens when the driver's run is cancelled or killed
    proc.wait(timeout=15)
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the stage's child survived"
        time.sleep(0.05)
    pidfile.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"
