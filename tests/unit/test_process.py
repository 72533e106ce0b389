"""driver.process.run: the one door every program the driver starts goes through."""

import contextlib
import hashlib
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from driver import process
from driver.errors import CommandError, CommandTimedOut

# Long enough that a test still waiting on it has certainly hung (pytest-timeout fails it).
FOREVER = "3600"
HUNG = pytest.mark.timeout(60)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (reaped, or a zombie nobody waits for)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def leftover(tmp_path: Path) -> Iterator[Path]:
    """A file for the pid of a grandchild a test leaves running on purpose; killed afterwards."""
    pid_file = tmp_path / "leftover.pid"
    yield pid_file
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_output_and_exit_code_come_back() -> None:
    result = process.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30, check=False)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.output == "out\nerr"


def test_a_failing_command_raises_with_its_output_and_hint() -> None:
    with pytest.raises(CommandError) as failed:
        process.run(
            ["sh", "-c", "echo cannot do it >&2; exit 4"],
            timeout=30,
            what="doing it",
            hint="do something else",
        )
    assert failed.value.exit_code == 4
    assert str(failed.value) == (
        "doing it failed (exit code 4)\n  hint: do something else\n    cannot do it"
    )


@HUNG
def test_a_command_over_its_timeout_is_stopped_with_its_output_so_far() -> None:
    with pytest.raises(CommandTimedOut) as timed_out:
        process.run(
            ["sh", "-c", f"echo $$; echo working >&2; exec sleep {FOREVER}"],
            timeout=0.5,
            what="waiting",
        )
    pid, *_ = timed_out.value.output.split()
    assert gone(int(pid))
    assert timed_out.value.timeout == 0.5
    assert timed_out.value.exit_code is None
    assert "working" in timed_out.value.output
    assert str(timed_out.value).startswith("waiting did not finish within 0.5s and was stopped")


@HUNG
def test_a_child_ignoring_sigterm_gets_sigkill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "KILL_GRACE", 0.5)
    stubborn = python(
        f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(os.getpid(), flush=True)
        time.sleep({FOREVER})
        """
    )
    with pytest.raises(CommandTimedOut) as timed_out:
        process.run(stubborn, timeout=1)
    assert timed_out.value.output, "the output before SIGKILL is kept"
    assert gone(int(timed_out.value.output))


@HUNG
def test_a_grandchild_holding_the_output_open_does_not_outlast_the_timeout(
    monkeypatch: pytest.MonkeyPatch, leftover: Path
) -> None:
    # The child exits at once; the sleep it leaves holds its stdout and stderr for an hour.
    # Waiting on the pipes (up to KILL_GRACE after the timeout, as run() did) would hang.
    monkeypatch.setattr(process, "KILL_GRACE", float(FOREVER))
    with pytest.raises(CommandTimedOut) as timed_out:
        process.run(
            ["sh", "-c", f'sleep {FOREVER} & echo $! > "$0"; echo started', str(leftover)],
            timeout=1,
            what="starting a daemon",
        )
    assert timed_out.value.output.strip() == "started"
    assert "hint: it exited (0), but a process it left running kept its output open" in str(
        timed_out.value
    )


@HUNG
def test_a_grandchild_holding_the_output_does_not_delay_the_stop(
    monkeypatch: pytest.MonkeyPatch, leftover: Path
) -> None:
    # The child dies of SIGTERM at once; the sleep it left holds the pipes for an hour.
    monkeypatch.setattr(process, "KILL_GRACE", float(FOREVER))
    script = f'sleep {FOREVER} & echo $! > "$0"; echo $$; exec sleep {FOREVER}'
    with pytest.raises(CommandTimedOut) as timed_out:
        process.run(["sh", "-c", script, str(leftover)], timeout=1)
    assert gone(int(timed_out.value.output))


def test_the_jobs_variables_never_reach_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOM_ENV_CI_JOB_TOKEN", "secret-token")
    monkeypatch.setenv("CUSTOM_ENV_PATH", "/job/bin")
    monkeypatch.setenv("GMD_TEST_ADMIN_SETTING", "kept")
    env = process.run(["env"], timeout=30).stdout.splitlines()
    assert "GMD_TEST_ADMIN_SETTING=kept" in env
    assert not [line for line in env if line.startswith("CUSTOM_ENV_")]
    assert "secret-token" not in "\n".join(env)


def test_an_explicit_environment_is_the_childs_whole_environment() -> None:
    env = process.run(["/usr/bin/env"], timeout=30, env={"ONLY": "this"}).stdout
    assert env == "ONLY=this\n"


def test_stdin_is_empty_unless_given() -> None:
    assert process.run(["cat"], timeout=30).stdout == ""


def test_stdin_from_bytes_larger_than_a_pipe() -> None:
    data = os.urandom(3 * 1024 * 1024)
    result = process.run(
        python("import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"),
        timeout=60,
        input=data,
    )
    assert result.stdout.strip() == hashlib.sha256(data).hexdigest()


def test_stdin_streamed_from_a_file(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("echo from the file\n")
    assert process.run(["sh"], timeout=30, stdin_file=script).stdout == "from the file\n"


def test_a_missing_program_is_exit_127_with_a_hint() -> None:
    with pytest.raises(CommandError) as missing:
        process.run(["/nonexistent/docker-machine", "ls"], timeout=30)
    assert missing.value.exit_code == 127
    assert str(missing.value) == (
        "starting /nonexistent/docker-machine (No such file or directory) failed (exit code 127)"
        "\n  hint: install /nonexistent/docker-machine or set its path in the config file"
    )


def test_a_missing_program_keeps_the_callers_hint(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("true\n")
    with pytest.raises(CommandError, match="hint: install OpenSSH"):
        process.run(["gmd-no-such-ssh"], timeout=30, stdin_file=script, hint="install OpenSSH")


class Cancelled(Exception):
    pass


@HUNG
def test_a_cancel_while_waiting_stops_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def cancel(signum: int, frame: FrameType | None) -> None:
        if pid_file.exists() and pid_file.read_text().strip():
            raise Cancelled  # as the stages' SIGTERM handler does

    previous = signal.signal(signal.SIGALRM, cancel)
    signal.setitimer(signal.ITIMER_REAL, 0.2, 0.2)
    try:
        with pytest.raises(Cancelled):
            process.run(
                ["sh", "-c", f'echo $$ > "$0"; exec sleep {FOREVER}', str(pid_file)],
                timeout=float(FOREVER),
            )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert gone(int(pid_file.read_text()))
