from pathlib import Path

import pytest

from driver import process, ssh
from driver.errors import CommandError, DriverError
from driver.state import JobDir


def config(job_dir: JobDir) -> str:
    return ssh.config_text(
        job_dir,
        machine="gmd-1",
        host="10.0.0.5",
        port=2222,
        user="ubuntu",
        key_path="/keys/id_rsa",
        connect_timeout=10,
        keepalive_interval=5,
    )


def test_the_host_key_is_pinned_per_job_and_enforced(tmp_path: Path) -> None:
    job_dir = JobDir(tmp_path, 1)
    text = config(job_dir)
    assert "StrictHostKeyChecking yes" in text
    assert "StrictHostKeyChecking no" not in text
    assert f"UserKnownHostsFile {job_dir.known_hosts}" in text
    assert "GlobalKnownHostsFile /dev/null" in text
    # Keyed by machine name, so a reused IP address never matches another VM's key.
    assert "HostKeyAlias gmd-1" in text


def test_one_master_connection_serves_every_stage(tmp_path: Path) -> None:
    job_dir = JobDir(tmp_path, 1)
    text = config(job_dir)
    assert f"ControlPath {job_dir.control_path}" in text
    assert "ControlMaster auto" in text
    assert "HostName 10.0.0.5\n  Port 2222\n  User ubuntu\n  IdentityFile /keys/id_rsa" in text


def test_a_state_dir_too_long_for_a_socket_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="set state_dir to a path shorter"):
        ssh.check_control_path(JobDir(tmp_path / ("x" * 100), 1))
    ssh.check_control_path(JobDir(Path("/var/lib/gitlab-machine-driver"), 123456))


def test_a_host_key_that_changes_while_waiting_fails_at_once_as_a_possible_attack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def changed_key(argv: list[str], **kwargs: object) -> object:
        calls.append(argv)
        raise CommandError(
            argv,
            255,
            "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\n"
            "Host key verification failed.",
        )

    monkeypatch.setattr(process, "run", changed_key)
    with pytest.raises(DriverError, match="may be an attack"):
        ssh.wait_ready(
            JobDir(tmp_path, 1),
            target="root@10.0.0.5:22",
            timeout=300,
            connect_timeout=5,
            progress=lambda _: None,
        )
    assert len(calls) == 1  # not retried until ready_timeout
