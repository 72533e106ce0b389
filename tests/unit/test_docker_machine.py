import json
from pathlib import Path

import pytest

from driver import settings
from driver.docker_machine import DockerMachine, _machine_info, classify_failure


def make(tmp_path: Path, **machine: object) -> DockerMachine:
    return DockerMachine(
        settings.parse_settings(
            {
                "docker_machine": {"program": "dm", "storage_path": str(tmp_path)},
                "machine": machine,
            }
        )
    )


def test_options_are_passed_as_docker_plus_machine_passes_machine_options(tmp_path: Path) -> None:
    dm = make(
        tmp_path,
        driver="amazonec2",
        options=["amazonec2-region=eu-west-1", "amazonec2-private-address-only"],
        engine_registry_mirror=["http://mirror:5000"],
        engine_label=["team=ci"],
        engine_storage_driver="overlay2",
    )
    argv = dm.create_argv("gmd-1", {"job": "1"})
    assert argv[:3] == ["dm", "--storage-path", str(tmp_path)]
    assert "--bugsnag-api-token=no-report" in argv
    assert argv[argv.index("create") :] == [
        "create",
        "--driver",
        "amazonec2",
        "--amazonec2-region=eu-west-1",
        "--amazonec2-private-address-only",
        "--engine-registry-mirror=http://mirror:5000",
        "--engine-label=team=ci",
        "--engine-label=gitlab-machine-driver.job=1",
        "--amazonec2-tags=gitlab-machine-driver-owner,,gitlab-machine-driver-job,1",
        "--engine-storage-driver=overlay2",
        "gmd-1",
    ]


def test_inspect_defaults_follow_docker_machine(tmp_path: Path) -> None:
    # The none driver's real output (shared/reference): empty user and key, port 0.
    data = {
        "Driver": json.loads(
            '{"IPAddress":"10.0.0.5","MachineName":"runner-abc-1","SSHKeyPath":"",'
            '"SSHPort":0,"SSHUser":"","StorePath":"/var/lib/machines"}'
        ),
        "DriverName": "none",
        "HostOptions": {"EngineOptions": {"Labels": ["gitlab-machine-driver.job=7", "x"]}},
    }
    info = _machine_info("runner-abc-1", data, tmp_path)
    assert info.ssh_user == "root"
    assert info.ssh_port == 22
    assert info.ssh_key == str(tmp_path / "machines" / "runner-abc-1" / "id_rsa")
    assert info.ca_cert == str(tmp_path / "certs" / "ca.pem")
    assert info.cloud_id == ""
    assert info.labels == {"gitlab-machine-driver.job": "7", "x": ""}


def test_certs_exist_only_when_all_four_do(tmp_path: Path) -> None:
    dm = make(tmp_path)
    (tmp_path / "certs").mkdir()
    for name in ("ca.pem", "ca-key.pem", "cert.pem"):
        (tmp_path / "certs" / name).write_text("x")
    assert not dm.certs_exist()
    (tmp_path / "certs" / "key.pem").write_text("x")
    assert dm.certs_exist()


@pytest.mark.parametrize(
    ("output", "kind"),
    [
        (
            "Error creating machine: Error in driver during machine creation: "
            "RequestLimitExceeded: "
            "Request limit exceeded.\n\tstatus code: 503, request id: x",
            "rate_limited",
        ),
        ("Incorrect Usage: flag provided but not defined: -amazonec2-regio", "permanent"),
        (
            "Error creating machine: Error in driver during machine creation: AuthFailure: "
            "AWS was not able to validate the provided access credentials",
            "permanent",
        ),
        (
            "Error creating machine: Error running provisioning: error installing docker",
            "transient",
        ),
        ("", "transient"),
    ],
)
def test_create_failures_are_classified(output: str, kind: str) -> None:
    assert classify_failure(output) == kind


def test_cloud_instances_carry_owner_and_job_tags_beside_the_admins(tmp_path: Path) -> None:
    dm = make(tmp_path, driver="amazonec2", options=["amazonec2-tags=team,ci"])
    argv = dm.create_argv("gmd-9", {"owner": "gmd", "job": "9"})
    tags = [a for a in argv if a.startswith("--amazonec2-tags")]
    assert tags == [
        "--amazonec2-tags=team,ci,gitlab-machine-driver-owner,gmd,gitlab-machine-driver-job,9"
    ]
    assert make(tmp_path, driver="generic").create_argv("gmd-9", {"job": "9"})[-1] == "gmd-9"


def test_a_read_racing_docker_machines_rewrite_of_an_entry_is_retried(tmp_path: Path) -> None:
    """docker-machine deletes config.json, then renames the new one into place: a
    reader in between fails once. That is not "no such machine"."""
    seen = tmp_path / "seen"
    fake = tmp_path / "dm"
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ ! -e {seen} ]; then touch {seen}; echo "open {tmp_path}/machines/gmd-1/'
        'config.json: no such file or directory" >&2; exit 1; fi\n'
        'echo "tcp://10.0.0.5:2999"\n'
    )
    fake.chmod(0o755)
    dm = DockerMachine(
        settings.parse_settings(
            {"docker_machine": {"program": str(fake), "storage_path": str(tmp_path)}}
        )
    )
    assert dm.url("gmd-1") == "tcp://10.0.0.5:2999"
    assert seen.exists()
