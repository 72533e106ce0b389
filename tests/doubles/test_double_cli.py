"""The docker-machine double's own tests.

The command line: the transcript of the genuine program, flags, templates, ls, inspect.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.docker_machine.common import VERSION, does_not_exist
from tests.doubles.harness import (
    LAUNCHER,
    Machine,
    find_transcript,
    json_of,
    root_only,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def transcript() -> Path:
    return find_transcript()


def transcript_steps(path: Path) -> list[tuple[list[str], str, int]]:
    steps = []
    for block in path.read_text().split("$ docker-machine ")[1:]:
        command, _, rest = block.partition("\n")
        output, code = re.fullmatch(r"(.*)\[exit (\d+)\]\n*", rest, re.S).groups()  # type: ignore[union-attr]
        words = re.findall(r"(?:\{\{.*?\}\}|\S)+", command)  # {{json .}} is one word
        steps.append((words, output, int(code)))
    return steps


@contextlib.contextmanager
def tls_server_without_ip_sans(port: int) -> Iterator[None]:
    """A TLS endpoint like the transcript's 10.0.0.5:2376, whose cert has no IP SANs."""
    workdir = tempfile.mkdtemp(prefix="dmdtls", dir="/tmp")
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", "/CN=docker", "-days", "2", "-keyout", key, "-out", cert],
        capture_output=True, check=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1024)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        listener.close()
        shutil.rmtree(workdir)


def free_three_digit_port() -> int:
    for port in range(900, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1000")


@root_only
def test_none_driver_matches_the_transcript(machine: Machine, transcript: Path) -> None:
    # 127.0.0.1:9NN is as long as 10.0.0.5:2376, so the ls table keeps its column widths.
    port = free_three_digit_port()
    address = f"127.0.0.1:{port}"

    def local(text: str) -> str:
        text = text.replace("/var/lib/machines", machine.storage)
        return text.replace("10.0.0.5:2376", address).replace("10.0.0.5", "127.0.0.1")

    with tls_server_without_ip_sans(port):
        for args, expected, code in transcript_steps(transcript):
            assert machine.merged(*[local(a) for a in args]) == (local(expected), code), args


def test_transcript_steps_without_a_reachable_engine(machine: Machine, transcript: Path) -> None:
    """The same sequence verbatim (10.0.0.5), except ls: its address answers nothing here."""
    for args, expected, code in transcript_steps(transcript):
        if args[0] == "ls" and len(args) == 1:
            continue
        want = expected.replace("/var/lib/machines", machine.storage)
        assert machine.merged(*args) == (want, code), args


def test_a_missing_transcript_skips_but_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = (tmp_path / "missing.txt",)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        find_transcript(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no reference transcript"):
        find_transcript(missing)


def test_errors_go_to_stderr_and_info_to_stdout(machine: Machine) -> None:
    result = machine("inspect", "nope")
    assert result.stdout == ""
    assert result.stderr == does_not_exist("nope") + "\n"
    result = machine("rm", "-f", "nope")
    assert result.stdout.startswith("About to remove nope\nWARNING:")
    assert result.stderr.endswith('Can\'t remove "nope"\n')


def test_unknown_flag_is_refused_as_urfave_cli_does(machine: Machine) -> None:
    """stdout: "Incorrect Usage." and the command's help; stderr: the parse error; exit 1."""
    result = machine("create", "-d", "local", "--bogus", "x", "vm")
    assert (result.returncode, result.stderr) == (1, "flag provided but not defined: -bogus\n")
    assert result.stdout.startswith(
        "Incorrect Usage.\n\nUsage: docker-machine create [OPTIONS] [arg...]\n\n"
        "Create a machine\n\nDescription:\n"
    )
    options = result.stdout.split("Options:\n", 1)[1].splitlines()
    assert options[0].strip() == "" and len(options) == 21  # the shared flags and local's
    assert re.match(r'   --driver, -d "virtualbox" +Driver to create machine with\.', options[1])
    assert any(line.startswith('   --local-engine-port "2376" ') for line in options)
    # A misspelt flag of the chosen driver is refused the same way, with that driver's help.
    result = machine("create", "-d", "generic", "--generic-ip-adress", "10.0.0.1", "vm")
    assert (result.returncode, result.stderr) == (
        1,
        "flag provided but not defined: -generic-ip-adress\n",
    )
    assert "   --generic-ip-address " in result.stdout and "local-engine" not in result.stdout
    result = machine("create", "-d", "local", "--amazonec2-zone=a", "vm")
    assert result.stderr == "flag provided but not defined: -amazonec2-zone\n"
    assert not os.path.exists(os.path.join(machine.storage, "machines", "vm"))
    result = machine("ls", "--quite")
    assert (result.returncode, result.stderr) == (1, "flag provided but not defined: -quite\n")
    assert result.stdout.startswith("Incorrect Usage.\n\nUsage: docker-machine ls [OPTIONS]")
    assert "   --quiet, -q " in result.stdout


def test_none_driver_needs_a_url(machine: Machine) -> None:
    result = machine("create", "-d", "none", "x")
    assert result.returncode == 1
    assert result.stderr == (
        "Error setting machine configuration from flags provided: "
        "--url option is required when no driver is selected\n"
    )


def test_launcher_runs_on_its_own(machine: Machine) -> None:
    assert LAUNCHER.stat().st_mode & 0o777 == 0o755
    result = subprocess.run([str(LAUNCHER), "version"], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout) == (0, VERSION + "\n")


def test_global_flags_and_calls_log(machine: Machine) -> None:
    env = dict(os.environ, MACHINE_STORAGE_PATH=machine.storage)
    run = [sys.executable, str(LAUNCHER), "--bugsnag-api-token=no-report", "-D", "--native-ssh"]
    result = subprocess.run(
        [*run, "ls", "-q"], env=env, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout) == (0, "")
    machine.ok("ls")
    lines = Path(machine.storage, "calls.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "--bugsnag-api-token=no-report -D --native-ssh ls -q",
        f"-s {machine.storage} ls",
    ]


def test_inspect_fields_and_templates(machine: Machine) -> None:
    machine.ok(
        "create", "-d", "none", "--url", "tcp://10.1.2.3:2376",
        "--engine-label", "team=ci", "--engine-label=job=42", "--engine-env", "A=1",
        "--engine-insecure-registry", "r:5000", "--engine-registry-mirror", "http://m",
        "--engine-storage-driver", "overlay2", "--engine-opt", "log-level=warn",
        "--engine-install-url", "http://install", "--tls-san", "example.org", "m1",
    )  # fmt: skip
    config = Path(machine.storage, "machines", "m1", "config.json")
    assert config.stat().st_mode & 0o777 == 0o600
    assert machine.inspect("m1", "{{.Driver.IPAddress}}") == "10.1.2.3:2376"
    assert machine.inspect("m1", "{{.DriverName}} {{.Name}}") == "none m1"
    assert machine.inspect("m1", "{{json .HostOptions.EngineOptions.Labels}}") == (
        '["team=ci","job=42"]'
    )
    assert machine.inspect("m1", "{{.Driver.SSHPort}} {{.Missing}}") == "0 <no value>"
    full = machine.ok("inspect", "m1")
    assert full == config.read_text() + "\n"
    assert full.startswith('{\n    "ConfigVersion": 3,\n    "Driver": {\n        "IPAddress"')
    host = json.loads(full)
    assert list(host) == ["ConfigVersion", "Driver", "DriverName", "HostOptions", "Name"]
    engine = host["HostOptions"]["EngineOptions"]
    assert engine["Env"] == ["A=1"] and engine["StorageDriver"] == "overlay2"
    assert engine["InsecureRegistry"] == ["r:5000"] and engine["RegistryMirror"] == ["http://m"]
    assert engine["ArbitraryFlags"] == ["log-level=warn"]
    assert engine["InstallURL"] == "http://install"
    auth = host["HostOptions"]["AuthOptions"]
    assert auth["StorePath"] == os.path.join(machine.storage, "machines", "m1")
    assert auth["CaCertPath"] == os.path.join(machine.storage, "certs", "ca.pem")
    assert auth["ServerCertSANs"] == ["example.org"]
    assert json_of(machine.inspect("m1", "{{json .}}"))["Name"] == "m1"
    result = machine("inspect", "-f", "{{nope .}}", "m1")
    assert result.returncode == 1
    assert result.stderr == 'Template parsing error: template: :1: function "nope" not defined\n\n'


def test_create_twice_and_invalid_names(fast: Machine) -> None:
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "a")
    result = fast("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "a")
    assert (result.returncode, result.stderr) == (1, 'Docker machine "a" already exists\n')
    for bad in ("-x", "a_b", "a/b", ".a"):
        result = fast("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "--", bad)
        assert (result.returncode, result.stderr) == (
            1,
            "Error creating machine: Invalid hostname specified. "
            "Allowed hostname chars are: 0-9a-zA-Z . -\n",
        )
    for command in ("status", "ip", "url", "inspect", "config", "ssh", "stop", "start", "kill"):
        result = fast(command, "../certs")
        assert (result.returncode, result.stderr) == (1, does_not_exist("../certs") + "\n")


@root_only
def test_ls_table_filters_and_formats(fast: Machine) -> None:
    fast.ok("create", "-d", "local", "--engine-label", "owner=me", "vm-1")
    fast.ok(
        "create", "-d", "none", "--url", "tcp://127.0.0.1:9", "--engine-label", "owner=you", "n-2"
    )
    table = fast.ok("ls").splitlines()
    assert re.fullmatch(r"NAME +ACTIVE +DRIVER +STATE +URL +SWARM +DOCKER +ERRORS", table[0])
    assert table[1].split()[:4] == ["n-2", "-", "none", "Running"]
    assert table[2].split()[:4] == ["vm-1", "-", "local", "Running"]
    assert table[0].index("DRIVER") == table[2].index("local")  # columns line up
    assert "connect: connection refused" in table[1]
    fmt = "{{.Name}} {{.DriverName}} {{.State}} {{.URL}}|{{.Error}}"
    assert fast.ok("ls", "--filter", "label=owner=me", "--format", fmt).startswith(
        "vm-1 local Running tcp://"
    )
    assert fast.ok("ls", "-q", "--filter", "driver=none") == "n-2\n"
    assert fast.ok("ls", "-q", "--filter", "name=^vm", "--filter", "name=2$") == "n-2\nvm-1\n"
    assert fast.ok("ls", "-q", "--filter", "state=running", "--filter", "driver=local") == "vm-1\n"
    assert (
        fast.ok("ls", "-t", "5", "--format", "{{.Name}}\\t{{.State}}")
        == "n-2\tRunning\nvm-1\tRunning\n"
    )
    result = fast("ls", "--format", "{{json .}}")
    assert (result.returncode, result.stderr) == (1, 'template: :1: function "json" not defined\n')
    result = fast("ls", "--filter", "colour=red")
    assert (result.returncode, result.stderr) == (1, "Unsupported filter key 'colour'\n")
    os.mkdir(os.path.join(fast.storage, "machines", "broken"))  # an entry without config.json
    row = fast.ok("ls").splitlines()[1]
    assert re.fullmatch(r"broken +not found +Error +open \S+/broken/config\.json: no such.*", row)


@root_only
def test_config_and_env_fail_without_an_engine(fast: Machine) -> None:
    fast.ok("create", "-d", "local", "vm")
    ip = fast.ok("ip", "vm").strip()
    problem = (
        "Error checking and/or regenerating the certs: There was an error validating "
        f'certificates for host "{ip}:2376": dial tcp {ip}:2376: connect: connection refused\n'
        "You can attempt to regenerate them using 'docker-machine regenerate-certs [name]'.\n"
        "Be advised that this will trigger a Docker daemon restart which might stop running "
        "containers.\n\n"
    )
    result = fast("config", "vm")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "Error running connection boilerplate: " + problem
    result = fast("env", "vm", env=dict(os.environ, SHELL="/bin/bash"))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "Error checking TLS connection: " + problem
