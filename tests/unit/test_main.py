import pytest

from driver.main import parser, run_stage_args


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
