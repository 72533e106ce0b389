"""doctor, check by check: what it finds, and the fix it names."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from driver import settings
from driver.commands import doctor
from driver.errors import ConfigError
from driver.state import JobDir, JobRecord, pid_namespace
from testing.fake_gitlab import FakeGitLab

TOKEN = "glpat-doctor"


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Short, unlike pytest's: the state dir's SSH socket paths must fit a unix socket."""
    base = Path(tempfile.mkdtemp(prefix="gmdd", dir="/tmp"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def fake_docker_machine(tmp_path: Path, version: str) -> Path:
    program = tmp_path / "docker-machine"
    program.write_text(f"#!/bin/sh\necho '{version}'\n")
    program.chmod(0o755)
    return program


def make_config(tmp_path: Path, **sections: Mapping[str, object]) -> Path:
    """A config whose every check passes, but for what `sections` changes."""
    program = fake_docker_machine(tmp_path, "docker-machine version 0.16.2-gitlab.19, build x")
    runner = tmp_path / "gitlab-runner"
    runner.write_text("#!/bin/sh\n")
    runner.chmod(0o755)
    state = tmp_path / "st"
    state.mkdir(mode=0o700, exist_ok=True)
    data: dict[str, dict[str, object]] = {
        "": {"state_dir": str(state), "gitlab_runner_binary": str(runner)},
        "docker_machine": {"program": str(program), "storage_path": str(tmp_path / "dm")},
        "machine": {"driver": "amazonec2"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    lines = []
    for name, values in data.items():
        if name:
            lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None]
    path = tmp_path / "driver.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_doctor(
    capsys: pytest.CaptureFixture[str], config: Path, projects: list[int] | None = None
) -> tuple[int, str]:
    args = argparse.Namespace(config_path=str(config), create=False, project=projects or [])
    code = doctor.main(args)
    return code, capsys.readouterr().out


def line(out: str, check: str) -> str:
    return next(x for x in out.splitlines() if f" {check}:" in x[:40] and x[:4] != "    ")


def test_all_well_but_a_warning_exits_0_and_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = make_config(tmp_path, **{"": {"gitlab_runner_binary": None}})
    code, out = run_doctor(capsys, config)
    assert code == 0, out
    assert line(out, "gitlab-runner binary").startswith("WARN  gitlab-runner binary:")
    assert "artifacts and caches are silently skipped" in out
    assert 'hint: set gitlab_runner_binary = "/usr/bin/gitlab-runner"' in out
    assert out.splitlines()[-1] == "everything works; 1 warning(s)"


def test_gitlabs_fork_is_told_from_upstream(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    _, out = run_doctor(capsys, config)
    assert "GitLab's fork, 0.16.2-gitlab.19" in line(out, "docker-machine")
    fake_docker_machine(tmp_path, "docker-machine version 0.16.2, build bd45ab13")
    code, out = run_doctor(capsys, config)
    assert code == 0
    warn = line(out, "docker-machine")
    assert warn.startswith("WARN  docker-machine:") and "is upstream docker-machine" in warn
    assert "hint: install GitLab's fork" in out


@pytest.mark.parametrize(
    ("program", "says"),
    [
        ("/etc/passwd", "'/etc/passwd' is not executable (mode 644)"),
        ("/etc", "'/etc' is a directory"),
        ("/no/such/docker-machine", "'/no/such/docker-machine' is not found"),
        ("no-such-docker-machine", "'no-such-docker-machine' is not found"),
    ],
)
def test_a_program_that_cannot_run_says_why(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, program: str, says: str
) -> None:
    if program == "/etc/passwd" and os.stat(program).st_mode & 0o777 != 0o644:
        pytest.skip("this host's /etc/passwd is not mode 644")
    config = make_config(tmp_path, docker_machine={"program": program})
    code, out = run_doctor(capsys, config)
    assert code == 1
    assert line(out, "docker-machine") == f"FAIL  docker-machine: docker-machine program {says}"


# --- docker-machine's certificates ---------------------------------------------------------


def certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(signer, hashes.SHA256())
    )


def write_certs(
    certs: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    client_signer: ec.EllipticCurvePrivateKey,
    client_key: ec.EllipticCurvePrivateKey,
) -> None:
    """docker-machine's store: ca.pem/ca-key.pem and cert.pem/key.pem (all named root)."""
    certs.mkdir(parents=True, exist_ok=True)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca = certificate("root", ca_key, "root", ca_key)
    client = certificate("root", client_key, "root", client_signer)
    (certs / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (certs / "ca-key.pem").write_bytes(pem_key(ca_key))
    (certs / "cert.pem").write_bytes(client.public_bytes(serialization.Encoding.PEM))
    (certs / "key.pem").write_bytes(pem_key(client_key))


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_a_consistent_certificate_chain_passes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = new_key()
    write_certs(tmp_path / "dm" / "certs", ca, ca, new_key())
    _, out = run_doctor(capsys, make_config(tmp_path))
    assert line(out, "docker-machine storage") == (
        f"ok    docker-machine storage: {tmp_path / 'dm'}; its client certificate is signed "
        "by its CA and matches its key"
    )


def test_a_client_certificate_from_the_concurrent_create_race_is_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Two first creates: one's CA overwrote the other's, whose client cert stayed."""
    certs = tmp_path / "dm" / "certs"
    write_certs(certs, new_key(), new_key(), new_key())  # cert.pem signed by a lost CA
    code, out = run_doctor(capsys, make_config(tmp_path))
    assert code == 1
    assert line(out, "docker-machine storage").startswith(
        f"FAIL  docker-machine storage: {certs}/cert.pem is not signed by {certs}/ca.pem"
    )
    assert f"hint: move {certs} away so the next create makes a consistent set" in out


def test_a_key_that_is_not_the_certificates_is_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = new_key()
    certs = tmp_path / "dm" / "certs"
    write_certs(certs, ca, ca, new_key())
    other = new_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (certs / "key.pem").write_bytes(other)
    code, out = run_doctor(capsys, make_config(tmp_path))
    assert code == 1
    assert f"{certs}/key.pem is not the key of cert.pem" in line(out, "docker-machine storage")


# --- GitLab ----------------------------------------------------------------------------------


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab(TOKEN) as fake:
        yield fake


def job_record(state_dir: Path, project: int, job: int) -> None:
    """A job with a machine on this host, as far as doctor reads its record."""
    record = state_dir / "jobs" / str(job) / "state.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"job_id": job, "project_id": project, "machine": f"m-{job}"}))


def gitlab_config(tmp_path: Path, fake: FakeGitLab) -> Path:
    return make_config(tmp_path, gitlab={"url": fake.url, "token": TOKEN, "timeout": 5})


def test_the_token_reads_the_jobs_of_this_hosts_machines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, gitlab: FakeGitLab
) -> None:
    config = gitlab_config(tmp_path, gitlab)
    job_record(tmp_path / "st", 7, 70)
    gitlab.jobs[(7, 70)] = "running"
    code, out = run_doctor(capsys, config)
    assert code == 0, out
    assert "token reads the jobs of 1 job(s) of machines on this host" in line(out, "GitLab API")
    assert "/api/v4/projects/7/jobs/70" in gitlab.requests


def test_a_run_of_404s_for_this_hosts_jobs_is_a_configuration_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, gitlab: FakeGitLab
) -> None:
    """GitLab says 404 for jobs the token cannot see: these jobs exist (their machines run
    here), so that is the token or the URL, never proof that the jobs are over."""
    config = gitlab_config(tmp_path, gitlab)
    for job in (80, 81, 82):
        job_record(tmp_path / "st", 8, job)
    code, out = run_doctor(capsys, config)
    assert code == 1
    fail = line(out, "GitLab API")
    assert fail.startswith("FAIL  GitLab API: GitLab answered 404 for 3 of 3 job(s) of machines")
    assert "(project(s) 8): a configuration problem" in fail
    assert "hint: the [gitlab] token needs read_api on every project this runner serves" in out
    gitlab.jobs[(8, 80)] = "running"
    gitlab.jobs[(8, 81)] = "running"
    code, out = run_doctor(capsys, config)  # some refused: a warning
    assert code == 0
    assert line(out, "GitLab API").startswith("WARN  GitLab API: GitLab answered 404 for 1 of 3")


def test_a_project_the_token_cannot_read_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, gitlab: FakeGitLab
) -> None:
    config = gitlab_config(tmp_path, gitlab)
    gitlab.projects.add(5)
    code, out = run_doctor(capsys, config, projects=[5])
    assert code == 0
    assert "token reads the jobs of project(s) [5]" in line(out, "GitLab API")
    code, out = run_doctor(capsys, config, projects=[5, 6])
    assert code == 1
    assert "GitLab answered 404 for project 6's jobs: the token cannot read them" in out
    code, out = run_doctor(capsys, config)
    assert "no job on this host to check it against" in line(out, "GitLab API")


def test_a_refused_token_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, gitlab: FakeGitLab
) -> None:
    config = make_config(tmp_path, gitlab={"url": gitlab.url, "token": "wrong"})
    code, out = run_doctor(capsys, config)
    assert code == 1
    assert f"FAIL  GitLab API: GitLab at {gitlab.url} refused the token" in out


# --- the state dir's owner, and --create's job id --------------------------------------------


def test_a_state_dir_used_by_another_config_with_other_machines_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    other = tmp_path / "other.toml"
    other.write_text(config.read_text().replace('driver = "amazonec2"', 'driver = "google"'))
    from driver import state_owner

    state_owner.claim(settings.load_settings(other), other)
    code, out = run_doctor(capsys, config)
    assert code == 1
    assert line(out, "state dir owner").startswith(
        f"FAIL  state dir owner: state dir {tmp_path / 'st'} is used by {other} (driver google"
    )


def test_create_uses_job_ids_no_real_job_has_and_names_docker_machine_accepts() -> None:
    ids = {doctor.doctor_job_id() for _ in range(100)}
    assert len(ids) == 100  # random: two doctors at once never share a machine
    assert all(2**62 <= i < 2**63 for i in ids)  # GitLab's ids count up from 1; int64
    longest = settings.parse_settings({"machine": {"name_prefix": "a" * 40}})
    assert all(len(longest.machine_name(i)) <= doctor.HOSTNAME_MAX for i in ids)


def test_a_metrics_textfile_node_exporter_cannot_get_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "no-collector" / "gmd.prom"
    code, out = run_doctor(capsys, make_config(tmp_path, metrics={"textfile": str(missing)}))
    assert code == 1
    assert line(out, "metrics textfile") == (
        f"FAIL  metrics textfile: [metrics] textfile {missing}: its directory "
        f"{missing.parent} does not exist"
    )
    wrong = tmp_path / "gmd.txt"
    code, out = run_doctor(capsys, make_config(tmp_path, metrics={"textfile": str(wrong)}))
    assert code == 0
    assert "does not end in .prom: node_exporter ignores it" in line(out, "metrics textfile")


def test_the_pool_lookahead_is_said_on_or_off_and_why(tmp_path: Path) -> None:
    def lookahead(config: Mapping[str, object]) -> str:
        context = doctor.Context(settings.parse_settings(dict(config)), tmp_path / "config.toml")
        return doctor.check_pool_lookahead(context)

    assert lookahead({}) == "off (no pool)"
    demand = {"pool": {"policy": "demand"}}
    with pytest.raises(doctor.Advice, match=r"\[gitlab\] is not set") as advice:
        lookahead(demand)
    assert "read_api" in advice.value.hint
    assert advice.value.message.endswith(
        "keeps only what its policy guesses and what the pipeline shapes it learns from "
        "the jobs here foretell"
    )
    with pytest.raises(doctor.Advice) as advice:
        lookahead({"pool": {"policy": "demand", "learn_shapes": False}})
    assert advice.value.message.endswith("keeps only what its policy guesses")
    gitlab = {"url": "https://gitlab.example.com", "token": "t"}
    assert lookahead({**demand, "gitlab": gitlab}).startswith("on: ")
    # docker+machine's periods take the lookahead too.
    periods = {"pool": {"idle_count": 2}}
    with pytest.raises(doctor.Advice, match=r"\[gitlab\] is not set"):
        lookahead(periods)
    assert lookahead({**periods, "gitlab": gitlab}).startswith("on: ")
    off = {"pool": {"policy": "demand", "lookahead": False}, "gitlab": gitlab}
    assert lookahead(off) == "off ([pool] lookahead = false)"


def test_a_runner_in_another_pid_namespace_is_warned_about(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    job = JobDir(tmp_path / "st", 31)
    job.create()
    job.save(
        JobRecord(
            job_id=31, project_id=1, machine="gmd-31", owners=[[123, 4]], pid_ns=pid_namespace()
        )
    )
    _, out = run_doctor(capsys, config)
    assert line(out, "runner processes").startswith("ok")
    record = job.load()
    record.pid_ns += 1  # the runner in a container, this doctor (and the sweeper) on the host
    job.save(record)
    _, out = run_doctor(capsys, config)
    warn = line(out, "runner processes")
    assert warn.startswith("WARN") and "another PID namespace" in warn, out


# --- never "fine" before a failure (issue 17) -------------------------------------------------


def refuse_temp_files(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """As a read-only mount (EROFS) or a directory of another user (EACCES) would, for root."""

    def refused(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refused)


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (30, "is on a read-only file system"),
        (13, "is not writable by this user (Permission denied)"),
    ],
)
def test_a_state_dir_that_cannot_be_made_fails_through_its_nearest_parent(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    says: str,
) -> None:
    state = tmp_path / "ro" / "a" / "st"
    (tmp_path / "ro").mkdir()
    config = make_config(tmp_path, **{"": {"state_dir": str(state)}})
    refuse_temp_files(monkeypatch, code)
    code_, out = run_doctor(capsys, config)
    assert code_ == 1
    assert line(out, "state dir") == (
        f"FAIL  state dir: state_dir {state} (in {config}) does not exist, and it cannot be "
        f"made: {tmp_path / 'ro'} {says}"
    )
    assert "everything" not in out and "fine" not in out


def test_a_state_dir_under_a_file_or_unwritable_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("")
    config = make_config(tmp_path, **{"": {"state_dir": str(tmp_path / "file" / "st")}})
    code, out = run_doctor(capsys, config)
    assert code == 1
    assert line(out, "state dir").endswith(
        f"cannot be made: {tmp_path / 'file'} is not a directory"
    )
    config = make_config(tmp_path)  # the state dir exists, mode 0700
    refuse_temp_files(monkeypatch, 30)
    code, out = run_doctor(capsys, config)
    assert code == 1
    assert line(out, "state dir") == (
        f"FAIL  state dir: state_dir {tmp_path / 'st'} (in {config}): {tmp_path / 'st'} is on a "
        "read-only file system"
    )


@pytest.mark.parametrize("setting", ["env_file", "token_file"])
def test_a_credential_file_others_can_read_fails_with_the_chmod(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, setting: str
) -> None:
    secret = tmp_path / f"{setting}.txt"
    secret.write_text("AWS_SECRET_ACCESS_KEY=x\n" if setting == "env_file" else "glpat-x\n")
    secret.chmod(0o644)
    section = "machine" if setting == "env_file" else "gitlab"
    extra: dict[str, object] = {setting: str(secret)}
    if section == "machine":
        extra["driver"] = "amazonec2"
    config = make_config(tmp_path, **{section: extra})
    if setting == "env_file":  # what prepare, cleanup and sweep do with it
        with pytest.raises(ConfigError, match="accessible to other users"):
            settings.load_settings(config).machine.docker_machine_env()
    code, out = run_doctor(capsys, config)
    assert code == 1
    assert line(out, "credential files") == (
        f"FAIL  credential files: [{section}] {setting} {secret} (in {config}) is readable by "
        "other users (mode 644); it holds secrets, so prepare, cleanup and sweep refuse it: "
        "every job fails and machines stay up"
    )
    assert f"hint: chmod 600 {secret}" in out
    secret.chmod(0o600)
    _, out = run_doctor(capsys, config)
    assert line(out, "credential files").startswith("ok")


def test_a_missing_machine_driver_fails_naming_the_file_and_the_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    config.write_text(config.read_text().replace('driver = "amazonec2"\n', ""))
    code, out = run_doctor(capsys, config)
    assert code == 1
    assert line(out, "config file") == (
        f"FAIL  config file: config file {config}: [machine] driver is not set; it names the "
        "docker-machine driver that makes each job's VM (it no longer defaults to virtualbox)"
    )
    assert 'driver = "amazonec2"' in out


def test_the_shipped_example_does_not_fail_on_a_host_without_gitlab_runner(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = settings.load_settings(settings.example_config_path())
    context = doctor.Context(example, settings.example_config_path())
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no gitlab-runner on this host
    with pytest.raises(doctor.Advice):  # a WARN, not a FAIL
        doctor.check_runner_binary(context)
    missing = tmp_path / "gitlab-runner-missing"
    config = make_config(tmp_path, **{"": {"gitlab_runner_binary": str(missing)}})
    code, out = run_doctor(capsys, config)
    assert code == 1
    hint = next(x for x in out.splitlines() if x.startswith("  hint: install gitlab-runner"))
    assert str(missing) not in hint and "comment gitlab_runner_binary out" in hint


@pytest.mark.parametrize(
    ("section", "setting", "refused"),
    [
        ("gitlab", "webhook_secret_file", "`pool run` refuses to start: no warm pool"),
        ("image", "auth_config_file", "prepare refuses it: every image-mode job fails"),
    ],
)
def test_the_webhook_secret_and_registry_logins_are_checked_like_the_other_secrets(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, section: str, setting: str, refused: str
) -> None:
    secret = tmp_path / f"{setting}.txt"
    secret.write_text("s3cret\n" if setting == "webhook_secret_file" else '{"auths": {}}\n')
    secret.chmod(0o640)
    extra: dict[str, object] = {setting: str(secret)}
    if section == "gitlab":
        extra["url"] = "https://gitlab.example.com"
    config = make_config(tmp_path, **{section: extra})
    code, out = run_doctor(capsys, config)
    assert code == 1
    assert line(out, "credential files") == (
        f"FAIL  credential files: [{section}] {setting} {secret} (in {config}) is readable by "
        f"other users (mode 640); it holds secrets, so {refused}"
    )
    secret.chmod(0o600)
    _, out = run_doctor(capsys, config)
    assert line(out, "credential files").startswith("ok")
