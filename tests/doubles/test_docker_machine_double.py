"""Tests of the docker-machine test double itself (tests/doubles/docker_machine.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.doubles import docker_machine as dm
from tests.doubles.docker_machine.certs import verify_offline
from tests.doubles.docker_machine.common import DOCKERD, VERSION, does_not_exist
from tests.doubles.docker_machine.netns import claimed_indexes, cmdline
from tests.doubles.docker_machine.store import Store, read_vm, settings

pytestmark = pytest.mark.timeout(180)

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "bin" / "docker-machine"
TRANSCRIPT = Path("/work/shared/reference/docker-machine-none-driver.txt")

needs_transcript = pytest.mark.skipif(not TRANSCRIPT.exists(), reason="no reference transcript")
root_only = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nsenter") is None, reason="VMs in namespaces need root"
)
needs_dockerd = pytest.mark.skipif(not os.path.exists(DOCKERD), reason="dockerd is missing")


class Machine:
    """Runs the double against one storage, as a driver would (a separate process)."""

    def __init__(self, storage: str) -> None:
        self.storage = storage

    def __call__(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(LAUNCHER), "-s", self.storage, *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
        result = self(*args, stdin=stdin, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def merged(self, *args: str) -> tuple[str, int]:
        """Output as a terminal shows it (stdout and stderr in order) and the exit code."""
        result = subprocess.run(
            [sys.executable, str(LAUNCHER), "-s", self.storage, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=False,
        )
        return result.stdout, result.returncode

    def inspect(self, name: str, template: str) -> str:
        return self.ok("inspect", "--format", template, name).strip()

    def ssh_target(self, name: str) -> tuple[str, str, str]:
        driver = self.inspect(name, "{{.Driver.IPAddress}} {{.Driver.SSHPort}}").split()
        key = os.path.join(self.storage, "machines", name, "id_rsa")
        return driver[0], driver[1], key


@pytest.fixture
def storage() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="dmd", dir="/tmp")
    try:
        yield path
    finally:
        dm.teardown_all(path)
        assert dm.storage_pids(path) == []
        assert dm.leftover_namespaces(path) == []
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def machine(storage: str) -> Machine:
    return Machine(storage)


@pytest.fixture(scope="session")
def certs() -> Iterator[str]:
    """Certificates the double bootstrapped once, for stores that should start with them."""
    path = tempfile.mkdtemp(prefix="dmdcerts", dir="/tmp")
    try:
        Machine(path).ok("create", "-d", "none", "--url", "tcp://192.0.2.1:2376", "bootstrap")
        yield os.path.join(path, "certs")
    finally:
        shutil.rmtree(path)


@pytest.fixture
def fast(machine: Machine, certs: str) -> Machine:
    """A store whose certificates exist already, and VMs without an engine: quick creates."""
    shutil.copytree(certs, os.path.join(machine.storage, "certs"))
    dm.set_faults(machine.storage, {"engine": "none"})
    return machine


def ssh(
    machine: Machine,
    name: str,
    command: str,
    known_hosts: str | None = None,
    strict: str = "yes",
    timeout: int = 5,
) -> subprocess.CompletedProcess[str]:
    """The system ssh as the driver runs it: the machine's key and a pinned host key."""
    ip, port, key = machine.ssh_target(name)
    user = machine.inspect(name, "{{.Driver.SSHUser}}") or "root"
    options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}"]
    options += ["-o", "IdentitiesOnly=yes"]
    if known_hosts is None:
        options += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    else:
        options += [
            "-o",
            f"StrictHostKeyChecking={strict}",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
        ]
    return subprocess.run(
        ["ssh", "-F", "/dev/null", *options, "-i", key, "-p", port, f"{user}@{ip}", command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- the none driver: the transcript of the genuine program --------------------------------------


def transcript_steps() -> list[tuple[list[str], str, int]]:
    steps = []
    for block in TRANSCRIPT.read_text().split("$ docker-machine ")[1:]:
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


@needs_transcript
@root_only
def test_none_driver_matches_the_transcript(machine: Machine) -> None:
    # 127.0.0.1:9NN is as long as 10.0.0.5:2376, so the ls table keeps its column widths.
    port = free_three_digit_port()
    address = f"127.0.0.1:{port}"

    def local(text: str) -> str:
        text = text.replace("/var/lib/machines", machine.storage)
        return text.replace("10.0.0.5:2376", address).replace("10.0.0.5", "127.0.0.1")

    with tls_server_without_ip_sans(port):
        for args, expected, code in transcript_steps():
            assert machine.merged(*[local(a) for a in args]) == (local(expected), code), args


@needs_transcript
def test_transcript_steps_without_a_reachable_engine(machine: Machine) -> None:
    """The same sequence verbatim (10.0.0.5), except ls: its address answers nothing here."""
    for args, expected, code in transcript_steps():
        if args[0] == "ls" and len(args) == 1:
            continue
        want = expected.replace("/var/lib/machines", machine.storage)
        assert machine.merged(*args) == (want, code), args


def test_errors_go_to_stderr_and_info_to_stdout(machine: Machine) -> None:
    result = machine("inspect", "nope")
    assert result.stdout == ""
    assert result.stderr == does_not_exist("nope") + "\n"
    result = machine("rm", "-f", "nope")
    assert result.stdout.startswith("About to remove nope\nWARNING:")
    assert result.stderr.endswith('Can\'t remove "nope"\n')


def test_unknown_flag_is_a_usage_error(machine: Machine) -> None:
    result = machine("create", "-d", "local", "--bogus", "x", "vm")
    assert (result.returncode, result.stderr) == (
        1,
        "Incorrect Usage: flag provided but not defined: -bogus\n",
    )
    result = machine("create", "-d", "local", "--amazonec2-zone=a", "vm")
    assert "flag provided but not defined: -amazonec2-zone" in result.stderr
    assert not os.path.exists(os.path.join(machine.storage, "machines", "vm"))


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


def json_of(text: str) -> dict[str, object]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


def test_driver_flags_are_stored_in_the_driver_section(fast: Machine) -> None:
    fast.ok(
        "create", "-d", "amazonec2", "--amazonec2-instance-type", "t3.micro",
        "--amazonec2-tags=a,b", "--amazonec2-private-address-only", "vm",
    )  # fmt: skip
    driver = json_of(fast.inspect("vm", "{{json .Driver}}"))
    assert driver["InstanceType"] == "t3.micro"
    assert driver["Tags"] == "a,b"
    assert driver["PrivateAddressOnly"] is True
    assert fast.inspect("vm", "{{.DriverName}}") == "amazonec2"


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


# --- rm ------------------------------------------------------------------------------------------


def test_rm_without_y_prompts_and_keeps_the_machine(fast: Machine) -> None:
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "keep")
    result = fast("rm", "keep", stdin="")
    assert (result.returncode, result.stdout) == (
        0,
        "About to remove keep\nWARNING: This action will delete both local reference and "
        "remote instance.\nAre you sure? (y/n): ",
    )
    assert fast.ok("ls", "-q") == "keep\n"
    assert fast("rm", "keep", stdin="no\n").returncode == 0
    assert fast.ok("ls", "-q") == "keep\n"
    assert "Successfully removed keep" in fast.ok("rm", "keep", stdin="yes\n")
    assert fast.ok("ls", "-q") == ""


def test_rm_y_and_f(fast: Machine) -> None:
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "a")
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "b")
    result = fast("rm", "-y", "a", "missing", "b")
    assert result.returncode == 1
    assert result.stdout.count("Successfully removed") == 2
    assert result.stderr.startswith('Error removing host "missing": Docker machine "missing"')
    assert fast.ok("ls", "-q") == ""
    result = fast("rm", "-f", "missing")
    assert result.returncode == 0


# --- simulated VMs -------------------------------------------------------------------------------


@root_only
def test_vm_create_ssh_and_stable_host_key(fast: Machine, tmp_path: Path) -> None:
    out = fast.ok("create", "-d", "local", "vm")
    assert out.startswith("Running pre-create checks...\nCreating machine...\n")
    assert out.endswith(
        "To see how to connect your Docker Client to the Docker Engine running on this "
        "virtual machine, run: docker-machine env vm\n"
    )
    ip, port, key = fast.ssh_target("vm")
    assert re.fullmatch(r"10\.213\.\d+\.\d+", ip) and port == "22"
    assert fast.inspect("vm", "{{.Driver.SSHUser}}|{{.Driver.SSHKeyPath}}") == f"|{key}"
    known = str(tmp_path / "known_hosts")
    first = subprocess.run(
        ["ssh", "-i", key, "-o", f"UserKnownHostsFile={known}", "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=accept-new", f"root@{ip}", "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    for _ in range(2):  # the same host key on every connection
        assert ssh(fast, "vm", "true", known, strict="yes").returncode == 0
    assert fast.ok("status", "vm") == "Running\n"
    assert fast.ok("ip", "vm") == ip + "\n"
    assert fast.ok("url", "vm") == f"tcp://{ip}:2376\n"
    assert fast.ok("ssh", "vm", "echo", "hello") == "hello\n"
    result = fast("ssh", "vm", "exit 7")
    assert (result.returncode, result.stderr) == (1, "exit status 7\n")


@root_only
def test_vms_have_private_dirs_and_own_addresses(fast: Machine) -> None:
    for name in ("a", "b"):
        fast.ok("create", "-d", "local", name)
    assert fast.ok("ip", "a") != fast.ok("ip", "b")
    assert (
        ssh(fast, "a", "echo x > /tmp/f && echo y > /builds/f && test -d /run/sshd").returncode == 0
    )
    assert ssh(fast, "b", "test ! -e /tmp/f && test ! -e /builds/f").returncode == 0
    assert not os.path.exists("/builds/f")
    assert ssh(fast, "a", "cat /tmp/f /builds/f").stdout == "x\ny\n"


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


@root_only
@needs_dockerd
def test_engine_answers_inside_the_vm(machine: Machine) -> None:
    started = time.monotonic()
    machine.ok("create", "-d", "local", "--engine-label", "role=ci", "vm")
    created = time.monotonic() - started
    info = ssh(machine, "vm", "docker -H unix:///run/docker.sock info --format '{{.Labels}}'")
    assert info.returncode == 0, info.stderr
    assert "role=ci" in info.stdout
    ip = machine.ok("ip", "vm").strip()
    config = machine.ok("config", "vm")
    assert config.endswith(f"-H=tcp://{ip}:2376\n")
    mdir = os.path.join(machine.storage, "machines", "vm")
    env = machine.ok("env", "vm", env=dict(os.environ, SHELL="/bin/bash"))
    assert env == (
        f'export DOCKER_TLS_VERIFY="1"\nexport DOCKER_HOST="tcp://{ip}:2376"\n'
        f'export DOCKER_CERT_PATH="{mdir}"\nexport DOCKER_MACHINE_NAME="vm"\n'
        "# Run this command to configure your shell: \n"
        f"# eval $(docker-machine -s {machine.storage} env vm)\n"
    )
    no_shell = machine("env", "vm", env={k: v for k, v in os.environ.items() if k != "SHELL"})
    assert (no_shell.returncode, no_shell.stderr) == (1, "Error: Unknown shell\n")
    fish = machine.ok("env", "--shell", "fish", "vm")
    assert fish.startswith('set -gx DOCKER_TLS_VERIFY "1";\n')
    row = machine.ok("ls").splitlines()[1]
    assert re.search(r"Running +tcp://\S+:2376 +v\d+\.\d+", row), row
    assert created < 30


def mini_image_files() -> list[str]:
    """A root file system for a container: dash, sleep and the libraries they need."""
    found = subprocess.run(["ldd", "/usr/bin/sleep"], capture_output=True, text=True, check=True)
    libraries = re.findall(r"(/\S+) \(0x", found.stdout)
    return [p.lstrip("/") for p in ["/bin/dash", "/usr/bin/sleep", *libraries]]


@root_only
@needs_dockerd
def test_containers_run_in_the_vm_and_go_with_it(machine: Machine) -> None:
    # A long name moves dockerd's exec root to the VM's /run: socket paths are short.
    name = "runner-abcdefgh-project-12345-concurrent-0-1700000000-0123abcd"
    machine.ok("create", "-d", "local", name)
    files = " ".join(mini_image_files())
    script = (
        "export DOCKER_HOST=unix:///run/docker.sock && "
        f"tar -C / -ch {files} 2>/dev/null | docker import - mini >/dev/null && "
        "docker run -d mini /usr/bin/sleep 1000 && "
        "docker run --rm mini /bin/dash -c 'echo from a container'"
    )
    result = ssh(machine, name, script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("from a container\n")
    index = claimed_indexes(Store(machine.storage), name)[0]
    assert os.path.isdir(f"/sys/fs/cgroup/pids/dmd-vm-{index}") or not os.path.isdir(
        "/sys/fs/cgroup/pids"
    )
    sleeper = [p for p in dm.vm_pids(machine.storage, name) if b"sleep\x001000" in cmdline(p)]
    assert len(sleeper) == 1
    machine.ok("rm", "-y", name)
    assert not os.path.exists(f"/proc/{sleeper[0]}/cmdline") or cmdline(sleeper[0]) == b""
    assert not [
        d
        for d in os.listdir("/sys/fs/cgroup")
        if os.path.isdir(os.path.join("/sys/fs/cgroup", d, f"dmd-vm-{index}"))
    ]


@root_only
@needs_dockerd
def test_engine_that_cannot_start_fails_the_create(machine: Machine) -> None:
    result = machine("create", "-d", "local", "--engine-opt", "no-such-flag=1", "vm")
    assert result.returncode == 1
    assert result.stderr == (
        "Error creating machine: Error running provisioning: Unable to verify the Docker "
        "daemon is listening: Maximum number of retries (10) exceeded\n"
    )
    assert machine.ok("status", "vm") == "Error\n"
    assert dm.vm_pids(machine.storage, "vm") == []


@root_only
def test_stop_start_restart_keep_address_and_host_key(fast: Machine, tmp_path: Path) -> None:
    fast.ok("create", "-d", "local", "vm")
    known = str(tmp_path / "known_hosts")
    assert ssh(fast, "vm", "true", known, strict="accept-new").returncode == 0
    ip = fast.ok("ip", "vm")
    assert fast.ok("stop", "vm") == 'Stopping "vm"...\nMachine "vm" was stopped.\n'
    assert fast.ok("status", "vm") == "Stopped\n"
    assert dm.vm_pids(fast.storage, "vm") == []
    result = fast("ssh", "vm", "true")
    assert result.stderr == 'Error: Cannot run SSH command: Host "vm" is not running\n'
    assert fast("url", "vm").stderr == "Host is not running\n"
    assert fast("stop", "vm").stderr == 'Machine "vm" is already stopped.\n'
    assert fast.ok("start", "vm").startswith('Starting "vm"...\nMachine "vm" was started.\n')
    assert fast("start", "vm").stderr == 'Machine "vm" is already running.\n'
    assert fast.ok("ip", "vm") == ip
    assert ssh(fast, "vm", "true", known).returncode == 0
    fast.ok("restart", "vm")
    fast.ok("kill", "vm")
    assert fast.ok("status", "vm") == "Stopped\n"
    fast.ok("start", "vm")
    assert ssh(fast, "vm", "true", known).returncode == 0


# --- helpers for tests ---------------------------------------------------------------------------


@root_only
def test_kill_vm_then_start(fast: Machine, tmp_path: Path) -> None:
    fast.ok("create", "-d", "local", "vm")
    known = str(tmp_path / "known_hosts")
    assert (
        ssh(fast, "vm", "sleep 300 >/dev/null 2>&1 &", known, strict="accept-new").returncode == 0
    )
    assert len(dm.vm_pids(fast.storage, "vm")) >= 3
    dm.kill_vm(fast.storage, "vm")
    assert dm.vm_pids(fast.storage, "vm") == []
    assert fast.ok("status", "vm") == "Stopped\n"
    assert dm.machine_names(fast.storage) == ["vm"]
    assert ssh(fast, "vm", "true", known, timeout=1).returncode == 255  # no route to it
    fast.ok("start", "vm")
    assert ssh(fast, "vm", "true", known).returncode == 0


@root_only
def test_kill_sshd_and_rotate_host_key(fast: Machine, tmp_path: Path) -> None:
    fast.ok("create", "-d", "local", "vm")
    known = str(tmp_path / "known_hosts")
    session = subprocess.Popen(
        ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-i", fast.ssh_target("vm")[2],
         f"root@{fast.ssh_target('vm')[0]}", "sleep 60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)
    dm.kill_sshd(fast.storage, "vm")
    assert session.wait(timeout=30) == 255  # the session died with the server
    assert fast.ok("status", "vm") == "Running\n"
    assert ssh(fast, "vm", "true").returncode == 255
    fast.ok("restart", "vm")
    assert ssh(fast, "vm", "true", known, strict="accept-new").returncode == 0
    dm.rotate_host_key(fast.storage, "vm")
    changed = ssh(fast, "vm", "true", known)
    assert changed.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in changed.stderr
    assert ssh(fast, "vm", "true").returncode == 0


@root_only
def test_local_mode_uses_a_port_on_localhost(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"vm_mode": "local"})
    fast.ok("create", "-d", "local", "vm")
    assert fast.inspect("vm", "{{.Driver.IPAddress}} {{.Driver.SSHUser}}") == "127.0.0.1 root"
    assert int(fast.inspect("vm", "{{.Driver.SSHPort}}")) > 1024
    assert ssh(fast, "vm", "echo ok").stdout == "ok\n"
    assert dm.leftover_namespaces(fast.storage) == []
    dm.kill_vm(fast.storage, "vm")
    assert fast.ok("status", "vm") == "Stopped\n"


# --- faults --------------------------------------------------------------------------------------


def test_create_fail_counts_down(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"create_fail": {"times": 2, "message": "boom"}})
    for name in ("a", "b"):
        result = fast("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", name)
        assert result.returncode == 1
        assert result.stderr == (
            "Error creating machine: Error in driver during machine creation: boom\n"
        )
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "c")
    assert fast.ok("ls", "-q") == "a\nb\nc\n"
    assert settings(Store(fast.storage))["create_fail"]["times"] == 0
    dm.set_faults(fast.storage, {"create_fail": {"times": -1}})
    assert fast("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "d").returncode == 1
    dm.set_faults(fast.storage, {"create_fail": None})
    fast.ok("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "e")


@root_only
def test_create_fail_leaves_error_none_or_vm(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"create_fail": {"times": 1}})
    result = fast("create", "-d", "local", "err")
    assert "InsufficientInstanceCapacity" in result.stderr
    assert fast.ok("status", "err") == "Error\n"
    assert dm.vm_pids(fast.storage, "err") == []
    dm.set_faults(fast.storage, {"create_fail": {"times": 1, "leave": "none"}})
    assert fast("create", "-d", "local", "gone").returncode == 1
    assert dm.machine_names(fast.storage) == ["err"]
    dm.set_faults(fast.storage, {"create_fail": {"times": 1, "leave": "vm"}})
    assert fast("create", "-d", "local", "half").returncode == 1
    assert dm.vm_pids(fast.storage, "half") != []
    assert dm.leftover_namespaces(fast.storage) != []
    result = fast("rm", "-f", "err", "half")
    assert result.returncode == 0 and result.stdout.count("Successfully removed") == 2
    assert dm.vm_pids(fast.storage, "half") == []
    assert dm.leftover_namespaces(fast.storage) == []


def test_create_rate_limit(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"create_rate_limit": {"times": -1}})
    for _ in range(2):
        result = fast("create", "-d", "none", "--url", "tcp://10.0.0.9:2376", "x")
        assert result.returncode == 1
        assert re.fullmatch(
            r"Error creating machine: Error in driver during machine creation: "
            r"RequestLimitExceeded: Request limit exceeded\.\n"
            r"\tstatus code: 503, request id: [0-9a-f-]{36}\n",
            result.stderr,
        )
        fast.ok("rm", "-f", "x")


@root_only
def test_create_hang_then_killed_leaves_an_entry_rm_f_clears(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"create_hang": {"times": 1}})
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), "-s", fast.storage, "create", "-d", "local", "vm"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = Path(fast.storage, "machines", "vm", "config.json")
    deadline = time.monotonic() + 30
    while not config.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None  # still hanging
    assert fast.ok("status", "vm") == "Error\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert fast.ok("rm", "-f", "vm").endswith("Successfully removed vm\n")


@root_only
def test_create_killed_while_booting_is_cleaned_by_rm_f(fast: Machine) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), "-s", fast.storage, "create", "-d", "local", "vm"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while "init_pid" not in read_vm(Store(fast.storage), "vm"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    time.sleep(0.5)
    assert dm.vm_pids(fast.storage, "vm") != []  # a half-made VM keeps running
    fast.ok("rm", "-f", "vm")
    assert dm.vm_pids(fast.storage, "vm") == []
    assert dm.leftover_namespaces(fast.storage) == []


@root_only
def test_create_delay(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"create_delay": 1.5})
    started = time.monotonic()
    fast.ok("create", "-d", "local", "slow")
    assert time.monotonic() - started >= 1.5


@root_only
def test_ssh_never_ready(fast: Machine) -> None:
    dm.set_faults(fast.storage, {"ssh_never_ready": {"times": 1}})
    fast.ok("create", "-d", "local", "tarpit")
    ip, port, _ = fast.ssh_target("tarpit")
    with socket.create_connection((ip, int(port)), timeout=5) as s:
        s.settimeout(1)
        with pytest.raises(TimeoutError):
            s.recv(64)  # connected, but no SSH banner ever comes
    started = time.monotonic()
    assert ssh(fast, "tarpit", "true", timeout=2).returncode == 255
    assert time.monotonic() - started >= 2  # the client waited for its ConnectTimeout
    fast.ok("create", "-d", "local", "fine")  # only the next create was affected
    assert ssh(fast, "fine", "true").returncode == 0


@root_only
def test_rm_fail(fast: Machine) -> None:
    fast.ok("create", "-d", "local", "vm")
    dm.set_faults(fast.storage, {"rm_fail": {"times": 2}})
    result = fast("rm", "-y", "vm")
    assert result.returncode == 1
    assert result.stderr.startswith(
        'Error removing host "vm": unable to terminate instance: InternalError'
    )
    assert fast.ok("status", "vm") == "Running\n"
    assert dm.vm_pids(fast.storage, "vm") != []
    result = fast("rm", "-f", "vm")
    assert result.returncode == 0 and "Successfully removed vm" in result.stdout
    assert result.stderr.startswith('Error removing host "vm": ')
    assert dm.machine_names(fast.storage) == []
    assert dm.vm_pids(fast.storage, "vm") == []
    assert dm.leftover_namespaces(fast.storage) == []
    assert Path(fast.storage, "orphans.log").read_text() == "vm\n"


# --- certificates and concurrency ----------------------------------------------------------------


def verified(machine: Machine, name: str) -> bool:
    return verify_offline(Store(machine.storage), name) is None


@root_only
def test_first_creates_race_on_the_certificates(machine: Machine) -> None:
    """Two creates on an empty store at once: docker-machine's unlocked cert bootstrap."""
    dm.set_faults(machine.storage, {"engine": "none"})
    command = [sys.executable, str(LAUNCHER), "-s", machine.storage, "create", "-d", "local"]
    procs = [
        subprocess.Popen(
            [*command, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name in ("a", "b")
    ]
    results = [(*p.communicate(timeout=60), p.returncode) for p in procs]
    failed = [err for _, err, code in results if code != 0]
    broken = [
        n
        for n, (_, _, code) in zip("ab", results, strict=True)
        if code == 0 and not verified(machine, n)
    ]
    assert failed or broken, results
    for err in failed:
        assert err.startswith(("Error generating certificates: ", "Error creating machine: ")), err


@root_only
def test_creates_after_the_bootstrap_run_in_parallel(fast: Machine) -> None:
    command = [sys.executable, str(LAUNCHER), "-s", fast.storage, "create", "-d", "local"]
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [*command, f"p{i}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for i in range(8)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    elapsed = time.monotonic() - started
    assert [p.returncode for p in procs] == [0] * 8, errors
    ips = {fast.ok("ip", f"p{i}") for i in range(8)}
    assert len(ips) == 8
    assert all(verified(fast, f"p{i}") for i in range(8))
    assert elapsed < 30
    fast.ok("rm", "-y", *[f"p{i}" for i in range(8)])
    assert dm.leftover_namespaces(fast.storage) == []


@root_only
def test_teardown_all_leaves_nothing(machine: Machine) -> None:
    machine.ok("create", "-d", "local", "a")
    machine.ok("create", "-d", "local", "b")
    assert ssh(machine, "a", "nohup sleep 600 >/dev/null 2>&1 &").returncode == 0
    indexes = claimed_indexes(Store(machine.storage))
    assert len(indexes) == 2
    dm.teardown_all(machine.storage)
    dm.teardown_all(machine.storage)  # idempotent
    assert claimed_indexes(Store(machine.storage)) == []
    assert dm.storage_pids(machine.storage) == []
    assert dm.leftover_namespaces(machine.storage) == []
    assert dm.machine_names(machine.storage) == []
    for index in indexes:
        assert not os.path.exists(f"/run/netns/dmd-{index}")
        assert not os.path.exists(f"/sys/class/net/dmdh{index}")
        assert not os.path.exists(f"/sys/fs/cgroup/memory/dmd-vm-{index}")
    dm.teardown_all("/tmp/dmd-does-not-exist")  # a missing storage is fine
