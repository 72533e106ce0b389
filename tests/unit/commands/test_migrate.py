import argparse
import tomllib
from pathlib import Path

import pytest

from driver import settings
from driver.commands import migrate

FIXTURES = Path(__file__).parent / "fixtures"


def run(capsys: pytest.CaptureFixture[str], path: Path, output: str | None = None) -> str:
    migrate.main(argparse.Namespace(runner_config=str(path), output=output))
    return capsys.readouterr().out


def driver_config(path: Path, index: int = 0) -> settings.Settings:
    runners = migrate._docker_machine_runners(path)
    return settings.parse_settings(tomllib.loads(migrate.migrate(runners[index]).driver_config))


def test_aws_autoscale_config_becomes_a_valid_driver_config() -> None:
    s = driver_config(FIXTURES / "autoscale-aws.toml")
    assert s.machine.driver == "amazonec2"
    assert s.machine.name_prefix == "auto-scale"
    assert "amazonec2-region=us-central-1" in s.machine.options
    assert "amazonec2-use-private-address=true" in s.machine.options
    # Engine options move to their own settings, passed the same way to docker-machine.
    assert s.machine.engine_registry_mirror == ["http://10.11.12.13:6000"]
    assert all(not o.startswith("engine-") for o in s.machine.options)
    assert s.limits.max_machines == 10
    assert s.limits.max_creating == 1
    # The idle machines become the warm pool, periods and all.
    assert (s.pool.idle_count, s.pool.idle_time, s.pool.max_growth_rate) == (5, 600, 1)
    assert [p.idle_count for p in s.pool.autoscaling] == [50, 5]
    assert s.pool.autoscaling[0].periods == ["* * 9-17 * * mon-fri *"]
    assert s.pool.autoscaling[1].timezone == "UTC"


def test_what_has_no_equivalent_is_said_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run(capsys, FIXTURES / "autoscale-aws.toml")
    assert "MaxBuilds = 100: every machine now serves exactly one job" in out
    assert "run the pool service" in out
    assert 'default = "ruby:2.7"' in out  # [runners.docker]: jobs keep their image
    assert "[runners.docker] disable_cache: not needed" in out
    assert 'config_exec = "gitlab-machine-driver"' in out
    assert (
        'run_args = ["--config", "/etc/gitlab-machine-driver/autoscale-runner.toml", "run"]' in out
    )


def test_only_docker_machine_runners_are_migrated(tmp_path: Path) -> None:
    runners = migrate._docker_machine_runners(FIXTURES / "mixed.toml")
    assert [r["name"] for r in runners] == ["GCE single use"]
    s = driver_config(FIXTURES / "mixed.toml")
    assert s.builds_dir == "/srv/builds"
    assert s.machine.name_prefix == "gce-ci"
    assert s.machine.engine_storage_driver == "overlay2"
    assert s.machine.engine_label == ["team=platform"]
    assert s.cleanup.remove_attempts == 30


def test_the_runner_file_is_never_written_and_output_goes_where_asked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "config.toml"
    source.write_text((FIXTURES / "mixed.toml").read_text())
    before = source.read_bytes()
    out = run(capsys, source, output=str(tmp_path / "out"))
    assert source.read_bytes() == before
    written = tmp_path / "out" / "gce-single-use.toml"
    assert f"driver config written to {written}" in out
    assert "OffPeakPeriods: removed from gitlab-runner itself" in out
    settings.load_settings(written)
    assert written.stat().st_mode & 0o077 == 0


def test_a_file_without_docker_machine_runners_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[runners]]\nname = "x"\nexecutor = "shell"\n')
    assert 'has no runner with executor = "docker+machine"' in run(capsys, path)
