import stat
from pathlib import Path

import pytest

from driver import contract
from driver.errors import BuildFailure, DriverError
from driver.main import error_handler, main, parser, run_stage_args


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "/tmp/s", "build_script"],
        ["--config", "/etc/c.toml", "run", "/tmp/s", "step_release"],
        ["--config=/etc/c.toml", "run", "/tmp/s", "after_script"],
    ],
)
def test_the_stage_fast_path_agrees_with_argparse(argv: list[str]) -> None:
    fast = run_stage_args(argv)
    full = parser().parse_args(argv)
    assert fast is not None
    assert ("run", fast.config_path, fast.script, fast.stage) == (
        full.command,
        full.config_path,
        full.script,
        full.stage,
    )


@pytest.mark.parametrize(
    "argv", [["run", "--help"], ["prepare"], ["run", "s"], ["--config", "c", "cleanup"]]
)
def test_anything_else_goes_through_argparse(argv: list[str]) -> None:
    assert run_stage_args(argv) is None


# The runner's failure codes, not its defaults (1 and 2): hard-coded codes fail these tests.
BUILD_FAILURE = 33
SYSTEM_FAILURE = 34


@pytest.fixture
def exit_code_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment the runner gives every stage; the script's own exit code goes here."""
    path = tmp_path / "build_exit_code"
    monkeypatch.setenv(contract.BUILD_FAILURE_ENV, str(BUILD_FAILURE))
    monkeypatch.setenv(contract.SYSTEM_FAILURE_ENV, str(SYSTEM_FAILURE))
    monkeypatch.setenv(contract.BUILD_EXIT_CODE_FILE_ENV, str(path))
    return path


def test_a_script_failure_is_a_build_failure_with_the_scripts_exit_code(
    exit_code_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited, error_handler():
        raise BuildFailure(42)
    assert exited.value.code == BUILD_FAILURE
    assert exit_code_file.read_text() == "42\n"
    assert stat.S_IMODE(exit_code_file.stat().st_mode) == 0o600
    assert "the script exited with code 42" in capsys.readouterr().err


def test_a_driver_error_is_a_system_failure_with_its_message_and_hint(
    exit_code_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited, error_handler():
        raise DriverError("could not create machine gmd-7", hint="check the cloud's quotas")
    assert exited.value.code == SYSTEM_FAILURE
    assert not exit_code_file.exists()  # the script never ran: it has no exit code
    err = capsys.readouterr().err
    assert "ERROR: could not create machine gmd-7\n  hint: check the cloud's quotas" in err


def test_an_unexpected_exception_is_a_system_failure_called_an_internal_error(
    exit_code_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited, error_handler():
        raise KeyError("missing")  # a bug, as the driver could have one
    assert exited.value.code == SYSTEM_FAILURE
    assert not exit_code_file.exists()
    err = capsys.readouterr().err
    assert "ERROR: internal error: KeyError: 'missing'" in err
    assert "this is a bug in gitlab-machine-driver" in err
    assert "Traceback (most recent call last)" in err  # for the bug report


def test_success_passes_through_silently(
    exit_code_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with error_handler():
        pass
    assert not exit_code_file.exists()
    assert capsys.readouterr().err == ""


def test_a_command_failing_is_a_system_failure_from_main(
    exit_code_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(tmp_path / "missing.toml"), "config"])
    assert exited.value.code == SYSTEM_FAILURE
    assert f"config file {tmp_path / 'missing.toml'} does not exist" in capsys.readouterr().err
