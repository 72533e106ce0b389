"""migrate on realistic docker+machine config.toml files, applied the way its output says."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from driver import settings
from driver.commands import migrate
from driver.errors import ConfigError
from driver.migration import convert
from driver.migration.runner_patch import redacted

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[3]
# Every credential in the fixtures: none may ever reach stdout.
SECRETS = [
    "AKIAMACHINEKEY",
    "machine-secret-value",
    "AKIACACHEKEY",
    "cache-secret-value",
    "glrt-AWS-RUNNER-TOKEN",
    "glrt-GCP-RUNNER-TOKEN",
    "XXXX",
]


def run(
    capsys: pytest.CaptureFixture[str],
    path: Path,
    output: Path | None = None,
    force: bool = False,
    expect_sha256: str | None = None,
) -> str:
    migrate.main(
        argparse.Namespace(
            runner_config=str(path),
            output=str(output) if output else None,
            force=force,
            apply=expect_sha256 is not None,
            expect_sha256=expect_sha256,
        )
    )
    return capsys.readouterr().out


def copy(fixture: str, tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    shutil.copyfile(FIXTURES / fixture, path)
    return path


def printed_patch(out: str) -> str:
    return out.split("# >>> patch begins\n", 1)[1].split("# <<< patch ends\n", 1)[0]


def written_patch(out_dir: Path) -> str:
    return (out_dir / "gitlab-runner-config.patch").read_text()


def printed_sha256(out: str) -> str:
    return str(re.findall(r"# SHA-256 of \S+ as read: ([0-9a-f]{64})", out)[0])


def apply_patch(config: Path, patch: str) -> dict[str, Any]:
    """As the printed instructions say: `patch --backup CONFIG PATCH`; then parse the result."""
    patch_file = config.with_suffix(".patch")
    patch_file.write_text(patch)
    subprocess.run(
        ["patch", "--backup", str(config), str(patch_file)], check=True, capture_output=True
    )
    return tomllib.loads(config.read_text())


def without_migrated_keys(runner: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in runner.items() if k not in ("executor", "custom", "custom_build_dir")}


@pytest.mark.parametrize("fixture", ["two-clouds.toml", "autoscale-aws.toml", "mixed.toml"])
def test_the_written_patch_applies_and_changes_only_what_it_must(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fixture: str
) -> None:
    config = copy(fixture, tmp_path)
    before = tomllib.loads(config.read_text())
    out_dir = tmp_path / "out"
    out = run(capsys, config, output=out_dir)
    assert redacted(written_patch(out_dir)) == printed_patch(out)
    after = apply_patch(config, written_patch(out_dir))
    assert (config.parent / "config.toml.orig").read_text() == (FIXTURES / fixture).read_text()
    assert {k: v for k, v in after.items() if k != "runners"} == {
        k: v for k, v in before.items() if k != "runners"
    }
    assert len(after["runners"]) == len(before["runners"])
    for old, new in zip(before["runners"], after["runners"], strict=True):
        # Nothing else in any runner moves: not the cache, not its S3 keys, not the token.
        assert without_migrated_keys(new) == without_migrated_keys(old)
        if old["executor"] == "docker+machine" and old.get("machine", {}).get("MachineDriver"):
            name = convert.slug(old["name"])
            config_path = str(out_dir / f"{name}.toml")
            assert new["executor"] == "custom"
            assert new["custom"]["run_exec"] == "gitlab-machine-driver"
            assert new["custom"]["run_args"] == ["--config", config_path, "run"]
            assert new["custom"]["prepare_args"] == ["--config", config_path, "prepare"]
            # GIT_CLONE_PATH works as on the docker executor.
            assert new["custom_build_dir"] == {"enabled": True}
        else:
            assert new == old


def test_the_patch_shows_no_secret_and_neither_does_anything_else(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = run(capsys, copy("two-clouds.toml", tmp_path))
    out += run(capsys, copy("autoscale-aws.toml", tmp_path))
    for secret in SECRETS:
        assert secret not in out
    assert "AWS_SECRET_ACCESS_KEY=<from MachineOptions>" in out
    assert "(not written; values never printed)" in out


def test_each_runner_gets_its_own_state_storage_and_artifact_support(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    run(capsys, copy("two-clouds.toml", tmp_path), output=out_dir)
    aws = settings.load_settings(out_dir / "aws-autoscale.toml")
    gcp = settings.load_settings(out_dir / "gcp.toml")
    assert aws.state_dir != gcp.state_dir
    assert aws.docker_machine.storage_path != gcp.docker_machine.storage_path
    assert aws.machine.name_prefix != gcp.machine.name_prefix
    assert (aws.machine.driver, gcp.machine.driver) == ("amazonec2", "google")
    # Artifacts and cache need gitlab-runner in the VM: migrate sets what uploads it, or,
    # where jobs keep running in their image ([runners.docker]), the helper image does.
    assert aws.image.mode == "container" and aws.image.default == "alpine:3.19"
    assert gcp.image.mode == "shell" and gcp.gitlab_runner_binary is not None
    assert aws.pool.idle_count == 2 and aws.pool.autoscaling[0].timezone == "Europe/Berlin"
    assert aws.limits.max_machines == 8


def test_secrets_go_to_0600_files_and_the_snippet_points_at_the_written_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = copy("two-clouds.toml", tmp_path)
    out_dir = tmp_path / "out"
    out = run(capsys, config, output=out_dir)
    for secret in SECRETS:
        assert secret not in out
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == [
        "aws-autoscale.env",
        "aws-autoscale.toml",
        "gcp.toml",
        "gitlab-runner-config.patch",
    ]
    for path in out_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    aws = settings.load_settings(out_dir / "aws-autoscale.toml")
    assert aws.machine.env_file == out_dir / "aws-autoscale.env"
    # Off docker-machine's argv, into its environment.
    assert aws.machine.docker_machine_env() == {
        "AWS_ACCESS_KEY_ID": "AKIAMACHINEKEY",
        "AWS_SECRET_ACCESS_KEY": "machine-secret-value",
    }
    assert not any("key" in option for option in aws.machine.options)
    assert "machine-secret-value" not in (out_dir / "aws-autoscale.toml").read_text()
    # The patch (printed and written) names the configs just written.
    assert redacted(written_patch(out_dir)) == printed_patch(out)
    runners = apply_patch(config, written_patch(out_dir))["runners"]
    assert runners[0]["custom"]["config_args"][1] == str(out_dir / "aws-autoscale.toml")
    assert runners[1]["custom"]["cleanup_args"][1] == str(out_dir / "gcp.toml")
    digest = printed_sha256(out)
    assert f"migrate {config} --output {out_dir} --apply --expect-sha256 {digest}" in out


def test_files_already_there_are_not_overwritten_silently(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = copy("two-clouds.toml", tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    mine = out_dir / "gcp.toml"
    mine.write_text("# the admin's own edits\n")
    with pytest.raises(ConfigError) as refused:
        run(capsys, config, output=out_dir)
    assert f"{mine} already exists; nothing was written" in str(refused.value)
    assert "--force" in str(refused.value)
    assert mine.read_text() == "# the admin's own edits\n"
    assert sorted(p.name for p in out_dir.iterdir()) == ["gcp.toml"]
    out = run(capsys, config, output=out_dir, force=True)
    assert f"# overwrote {mine} (--force)" in out
    settings.load_settings(mine)


def test_a_runner_without_its_machine_table_is_skipped_with_the_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = run(capsys, copy("two-clouds.toml", tmp_path))
    assert (
        "# runner 'half migrated': skipped: executor is docker+machine but it has no "
        "[runners.machine] table" in out
    )
    assert 'driver = ""' not in out
    assert "half-migrated" not in out


def test_the_units_the_note_names_are_the_ones_packaged(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = run(capsys, copy("two-clouds.toml", tmp_path))
    enable = next(line for line in out.splitlines() if "systemctl enable --now" in line)
    units = enable.split("systemctl enable --now", 1)[1].split()
    assert units == [
        "gitlab-machine-driver-sweep@aws-autoscale.timer",
        "gitlab-machine-driver-sweep@gcp.timer",
        "gitlab-machine-driver-pool@aws-autoscale.service",  # only aws has idle machines
    ]
    for unit in units:
        template = re.sub(r"@[^.]+\.", "@.", unit)
        assert (ROOT / "packaging" / "systemd" / template).is_file(), template
    assert (ROOT / "packaging" / "systemd" / "gitlab-machine-driver-sweep@.service").is_file()


def test_aws_autoscale_config_becomes_a_valid_driver_config() -> None:
    runner = tomllib.loads((FIXTURES / "autoscale-aws.toml").read_text())["runners"][0]
    s = settings.parse_settings(tomllib.loads(migrate.migrate(runner).driver_config))
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


def test_a_credential_without_a_known_variable_stays_a_flag_but_is_never_printed() -> None:
    runner = {
        "name": "rack",
        "executor": "docker+machine",
        "machine": {
            "MachineDriver": "rackspace",
            "MachineOptions": ["rackspace-api-key=sekrit-rack", "rackspace-region=DFW"],
        },
    }
    m = migrate.migrate(runner)
    assert (
        "rackspace-api-key=sekrit-rack"
        in settings.parse_settings(tomllib.loads(m.driver_config)).machine.options
    )
    assert "sekrit-rack" not in m.shown_config
    assert any("rackspace-api-key: no environment variable is known" in n for n in m.notes)


def test_what_has_no_equivalent_is_said_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run(capsys, FIXTURES / "autoscale-aws.toml")
    assert "MaxBuilds = 100: every machine now serves exactly one job" in out
    assert 'default = "ruby:2.7"' in out  # [runners.docker]: jobs keep their image
    assert "[runners.docker] disable_cache: not needed" in out
    out = run(capsys, FIXTURES / "mixed.toml")
    assert "OffPeakPeriods: removed from gitlab-runner itself" in out
    assert "# runner 'shell on the host': executor 'shell', not docker+machine: left alone" in out


def test_the_runner_file_is_never_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = copy("mixed.toml", tmp_path)
    before = source.read_bytes()
    run(capsys, source, output=tmp_path / "out")
    assert source.read_bytes() == before


def test_a_file_without_docker_machine_runners_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[runners]]\nname = "x"\nexecutor = "shell"\n')
    assert 'has no runner with executor = "docker+machine" to migrate' in run(capsys, path)


def test_git_clone_path_is_enabled_unless_the_admin_decided_otherwise(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = (FIXTURES / "mixed.toml").read_text()
    config = tmp_path / "config.toml"
    for table, enabled, note in [
        ("", True, ""),
        ("  [runners.custom_build_dir]\n    enabled = true\n", True, ""),
        ("  [runners.custom_build_dir]\n    enabled = false\n", False, "enabled = false: kept"),
        ("  [runners.custom_build_dir]\n", None, "add `enabled = true` to it by hand"),
    ]:
        config.write_text(text.replace("  [runners.machine]\n", table + "  [runners.machine]\n"))
        out = run(capsys, config, output=tmp_path / "out", force=True)
        runner = apply_patch(config, written_patch(tmp_path / "out"))["runners"][1]
        assert runner["executor"] == "custom"
        assert runner["custom_build_dir"].get("enabled") is enabled
        if note:
            assert note in out
        else:
            assert "# - [runners.custom_build_dir]" not in out


def test_a_runner_without_a_distributed_cache_is_warned_of_cold_caches(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run(capsys, FIXTURES / "mixed.toml")
    assert (
        "# - WARNING: no [runners.cache]: caches will be cold on fresh VMs; configure a "
        "distributed cache (S3/GCS) in [runners.cache]" in out
    )
    out = run(capsys, FIXTURES / "two-clouds.toml")
    assert "WARNING" not in out
    assert "[runners.cache] Shared, Type, s3: not carried over, not needed: they stay in" in out


def test_every_machine_key_not_carried_is_named() -> None:
    runner = {
        "name": "m",
        "executor": "docker+machine",
        "machine": {
            "MachineDriver": "amazonec2",
            "MaxBuilds": 1,
            "IdleCount": 1,
            "MachineOptionsWithName": ["x"],
        },
    }
    notes = migrate.migrate(runner).notes
    assert "[runners.machine] MachineOptionsWithName: no equivalent in the driver; left out" in (
        notes
    )
    assert not any("IdleCount:" in n or "MachineDriver:" in n for n in notes)


def gitlab_runner_adds_a_line(config: Path) -> None:
    """As gitlab-runner does when it rewrites config.toml: one line more in the first runner."""
    text = config.read_text()
    config.write_text(text.replace("  limit = 8\n", "  limit = 8\n  request_concurrency = 1\n", 1))


def test_the_patch_does_not_land_in_another_table_after_config_toml_changed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = copy("two-clouds.toml", tmp_path)
    out_dir = tmp_path / "out"
    run(capsys, config, output=out_dir)
    gitlab_runner_adds_a_line(config)
    changed = tomllib.loads(config.read_text())
    # A zero-context patch put [runners.custom] between IdleCount and Timezone of
    # [[runners.machine.autoscaling]]; with context, patch finds the right place.
    after = apply_patch(config, written_patch(out_dir))
    aws = after["runners"][0]
    assert aws["machine"]["autoscaling"] == changed["runners"][0]["machine"]["autoscaling"]
    assert aws["request_concurrency"] == 1
    assert aws["custom"]["run_args"] == ["--config", str(out_dir / "aws-autoscale.toml"), "run"]
    assert "custom" not in aws["machine"]["autoscaling"][0]
    assert after["runners"][1]["custom"]["run_exec"] == "gitlab-machine-driver"


def test_the_printed_patch_has_context_but_no_credential(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = run(capsys, copy("two-clouds.toml", tmp_path))
    patch = printed_patch(out)
    assert '   name = "aws autoscale"\n' in patch  # context: where it lands is visible
    assert "   token = <not shown: may hold a credential>\n" in patch
    for secret in SECRETS:
        assert secret not in out


def test_apply_refuses_when_config_toml_changed_since_the_preview(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = copy("two-clouds.toml", tmp_path)
    out_dir = tmp_path / "out"
    digest = printed_sha256(run(capsys, config, output=out_dir))
    gitlab_runner_adds_a_line(config)
    changed = config.read_bytes()
    with pytest.raises(ConfigError) as refused:
        run(capsys, config, output=out_dir, expect_sha256=digest)
    assert f"{config} changed since the preview" in str(refused.value)
    assert "nothing was written" in str(refused.value)
    assert f"gitlab-machine-driver migrate {config}` again" in str(refused.value)
    assert config.read_bytes() == changed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "out"]


def test_apply_needs_the_hash_of_the_preview(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = copy("two-clouds.toml", tmp_path)
    with pytest.raises(ConfigError) as refused:
        migrate.main(
            argparse.Namespace(
                runner_config=str(config), output=None, force=False, apply=True, expect_sha256=None
            )
        )
    assert "--apply --expect-sha256 HASH" in str(refused.value)


def test_apply_writes_atomically_with_a_backup_mode_and_owner_and_checks_the_result(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = copy("two-clouds.toml", tmp_path)
    config.chmod(0o640)
    before_text = config.read_text()
    before = tomllib.loads(before_text)
    out_dir = tmp_path / "out"
    digest = printed_sha256(run(capsys, config, output=out_dir))
    out = run(capsys, config, output=out_dir, expect_sha256=digest)
    backups = sorted(tmp_path.glob("config.toml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == before_text
    assert f"(backup: {backups[0]})" in out
    st = config.stat()
    assert st.st_mode & 0o7777 == 0o640
    assert backups[0].stat().st_mode & 0o7777 == 0o640
    assert (st.st_uid, st.st_gid) == (backups[0].stat().st_uid, backups[0].stat().st_gid)
    assert not list(tmp_path.glob(".config.toml.*"))  # no temporary file left behind
    after = tomllib.loads(config.read_text())
    assert [r["executor"] for r in after["runners"]] == ["custom", "custom", "docker+machine"]
    for old, new in zip(before["runners"], after["runners"], strict=True):
        assert without_migrated_keys(new) == without_migrated_keys(old)
    for secret in SECRETS:
        assert secret not in out


def test_apply_without_output_needs_the_driver_configs_in_place(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = copy("autoscale-aws.toml", tmp_path)
    digest = printed_sha256(run(capsys, config))
    before = config.read_bytes()
    with pytest.raises(ConfigError) as refused:
        run(capsys, config, expect_sha256=digest)
    assert "/etc/gitlab-machine-driver/autoscale-runner.toml not found" in str(refused.value)
    assert config.read_bytes() == before


def runner_with_idle(idle_count: int, periods: list[dict[str, Any]]) -> dict[str, Any]:
    machine: dict[str, Any] = {
        "IdleCount": idle_count,
        "IdleTime": 1800,
        "MachineDriver": "amazonec2",
        "MachineName": "ci-%s",
    }
    if periods:
        machine["autoscaling"] = periods
    return {"name": "ci", "executor": "docker+machine", "machine": machine}


def test_no_pool_and_no_pool_unit_for_a_runner_that_kept_no_idle_machines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # IdleCount = 0 with IdleTime set: a [pool] without machines would make the pool
    # service exit at start and systemd restart it every 10 s, forever.
    m = migrate.migrate(runner_with_idle(0, [{"Periods": ["* * * * * sat *"], "IdleCount": 0}]))
    assert not m.uses_pool
    assert "[pool]" not in m.driver_config
    assert settings.parse_settings(tomllib.loads(m.driver_config)).pool.idle_count == 0
    assert any("IdleCount = 0" in note and "IdleTime left out" in note for note in m.notes)
    config = tmp_path / "config.toml"
    text = (FIXTURES / "autoscale-aws.toml").read_text()
    config.write_text(
        text.replace("IdleCount = 5\n", "IdleCount = 0\n").replace(
            "IdleCount = 50\n", "IdleCount = 0\n"
        )
    )
    out = run(capsys, config)
    assert "gitlab-machine-driver-pool@" not in out
    assert "systemctl enable --now gitlab-machine-driver-sweep@autoscale-runner.timer\n" in out


def test_a_pool_only_in_some_periods_is_still_a_pool() -> None:
    m = migrate.migrate(runner_with_idle(0, [{"Periods": ["* * 9-17 * * * *"], "IdleCount": 3}]))
    assert m.uses_pool
    s = settings.parse_settings(tomllib.loads(m.driver_config))
    assert [p.idle_count for p in s.pool.autoscaling] == [3]
