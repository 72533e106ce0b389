"""The example config, the documentation's settings table and the settings model say the same."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from driver import settings
from driver.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
HEADER = re.compile(r"^#?\s*\[\[?([a-z_.]+)\]\]?\s*$")
KEY = re.compile(r"^#?\s*([a-z_]+)\s*=")


def model_settings(model: type[BaseModel] = settings.Settings, prefix: str = "") -> set[str]:
    """Every setting as `section.key` (`pool.autoscaling.periods` for the periods' keys)."""
    names = set()
    for name, field in model.model_fields.items():
        nested = [
            t
            for t in (field.annotation, *typing.get_args(field.annotation))
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        if nested:
            names |= model_settings(nested[0], f"{prefix}{name}.")
        else:
            names.add(prefix + name)
    return names


def example_settings(text: str) -> set[str]:
    """The keys the example shows, set or commented out, under their (possibly commented) table."""
    names, section = set(), ""
    for line in text.splitlines():
        if header := HEADER.match(line):
            section = header[1] + "."
        elif key := KEY.match(line):
            names.add(section + key[1])
    return names


SETTINGS_PAGE = ROOT / "docs" / "configuration.md"


def documented_settings(text: str) -> set[str]:
    """The first column of the configuration page's settings table: `[section] key`, `key`..."""
    table = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        section = ""
        for cell in re.findall(r"`([^`]+)`", row.split("|")[1]):
            if match := re.match(r"^\[\[?([a-z_.]+)\]\]?\s+(\w+)$", cell):
                section, key = match[1] + ".", match[2]
            else:
                key = cell
            names.add(section + key)
    return names


def test_every_setting_is_in_the_example_and_the_docs_and_nothing_else() -> None:
    model = model_settings()
    example = example_settings(settings.example_config_path().read_text())
    documented = documented_settings(SETTINGS_PAGE.read_text())
    assert model - example == set(), "settings missing from driver/data/config.example.toml"
    assert model - documented == set(), f"settings missing from the table in {SETTINGS_PAGE}"
    assert documented - model == set(), f"the table in {SETTINGS_PAGE} names unknown settings"
    assert example - model == set(), "the example names settings that do not exist"


def test_the_example_is_valid_with_its_optional_settings_uncommented() -> None:
    text = settings.example_config_path().read_text()
    # Uncomment every `# key = value` and `# [[table]]` line: they must be valid too.
    uncommented = re.sub(r"(?m)^# (\[\[?[a-z_.]+\]\]?|[a-z_]+ = .*)$", r"\1", text)
    assert uncommented != text
    import tomllib

    loaded = settings.parse_settings(tomllib.loads(uncommented), source="example")
    assert loaded.metrics.textfile is not None and loaded.pool.autoscaling
    settings.parse_settings(tomllib.loads(text), source="example")


def test_config_example_prints_the_shipped_example_and_hints_point_at_it(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "driver", "config-example"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == settings.example_config_path().read_text()
    with pytest.raises(ConfigError) as missing:
        settings.load_settings(tmp_path / "none.toml")
    assert f"gitlab-machine-driver config-example > {tmp_path / 'none.toml'}" in str(missing.value)
    bad = tmp_path / "bad.toml"
    bad.write_text("[machine]\ndriverr = 'x'\n")
    with pytest.raises(ConfigError) as typo:
        settings.load_settings(bad)
    assert "[machine] driverr: unknown setting" in str(typo.value)
    assert str(settings.example_config_path()) in str(typo.value)
    assert settings.example_config_path().is_file()
