from pathlib import Path

import pytest

from driver import settings
from driver.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config" / "config.example.toml"


def test_the_example_config_is_valid_and_means_what_it_says() -> None:
    s = settings.load_settings(EXAMPLE)
    assert s.machine.driver == "amazonec2"
    assert "amazonec2-region=eu-west-1" in s.machine.options
    assert s.create.attempts == 3
    assert s.builds_dir == "/builds"


def test_a_file_with_only_the_machine_driver_gives_working_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[machine]\ndriver = "amazonec2"\n')
    s = settings.load_settings(path)
    assert s.machine.name_prefix == "gmd"
    assert s.docker.check is True
    assert s.log_path == s.state_dir / "driver.log"


def test_a_missing_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        settings.load_settings(tmp_path / "nope.toml")
    assert "nope.toml does not exist" in str(e.value)
    assert "--config" in str(e.value)


def test_bad_toml_names_the_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[machine]\ndriver = "x\n')
    with pytest.raises(ConfigError) as e:
        settings.load_settings(path)
    assert str(path) in str(e.value)
    assert "line 2" in str(e.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[create]\nattempts = 0\n",
            "[create] attempts: Input should be greater than or equal to 1 (got 0)",
        ),
        ("[machine]\noptions = ['--amazonec2-region=x']\n", "without leading dashes"),
        ("[machine]\nname_prefix = 'Bad_Prefix'\n", "[machine] name_prefix"),
        (
            "[machine]\ndriverr = 'x'\n",
            "[machine] driverr: unknown setting; did you mean 'driver'?",
        ),
        (
            "[sweeper]\nmax_agee = 60\n",
            "[sweeper] max_agee: unknown setting; did you mean 'max_age'?",
        ),
        ("stat_dir = '/x'\n", "stat_dir: unknown setting; did you mean 'state_dir'?"),
        ("[machine]\nzzz = 1\n", "[machine] zzz: unknown setting (a typo?)"),
        ("builds_dir = 'relative'\n", "builds_dir: must be an absolute path"),
        ("[ssh]\nready_timeout = -1\n", "[ssh] ready_timeout: Input should be greater than 0"),
    ],
)
def test_each_mistake_names_the_field_and_what_is_allowed(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        settings.load_settings(path)
    assert expected in str(e.value)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("text", ["", "[machine]\nname_prefix = 'ci'\n"])
def test_a_missing_machine_driver_is_an_error_naming_the_file_the_key_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    # It used to default to virtualbox: VMs on the runner host, or a create failing late.
    (tmp_path / "c.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        settings.load_settings("c.toml")
    message = str(e.value)
    assert f"config file {tmp_path / 'c.toml'}: [machine] driver is not set" in message
    assert 'driver = "amazonec2"' in message
    assert "virtualbox" not in message.replace("no longer defaults to virtualbox", "")


def test_config_path_prefers_the_flag_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(settings.CONFIG_PATH_ENV, "/from/env.toml")
    assert settings.config_path("/given.toml") == Path("/given.toml")
    assert settings.config_path(None) == Path("/from/env.toml")
    monkeypatch.delenv(settings.CONFIG_PATH_ENV)
    assert settings.config_path(None) == settings.DEFAULT_CONFIG_PATH


def test_a_stopped_tier_needs_a_driver_that_stops_and_starts_machines() -> None:
    for driver in ("none", "generic"):
        with pytest.raises(ConfigError, match="stopped_count needs a driver that stops and st"):
            settings.parse_settings({"machine": {"driver": driver}, "pool": {"stopped_count": 1}})
    cloud = {"machine": {"driver": "amazonec2"}, "pool": {"stopped_count": 1}}
    pool = settings.parse_settings(cloud).pool
    assert pool.stopped_count == 1 and pool.enabled
