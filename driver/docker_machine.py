"""docker-machine, driven as a program: every call bounded, every failure explained."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driver import process
from driver.errors import CommandError, DriverError
from driver.settings import Settings

ENGINE_PORT = 2376  # docker-machine sets every engine up on this TLS port
LABEL_PREFIX = "gitlab-machine-driver"
_MISSING = re.compile(r'Docker machine "[^"]*" does not exist')
CERT_FILES = ("ca.pem", "ca-key.pem", "cert.pem", "key.pem")


# How a failed create is retried. Patterns from docker-machine drivers' and clouds' messages.
_PERMANENT = re.compile(
    r"flag provided but not defined|Incorrect Usage|Invalid hostname|"
    r"AuthFailure|UnauthorizedOperation|InvalidClientTokenId|SignatureDoesNotMatch|"
    r"OptInRequired|Blocked|invalid credentials|could not find credentials|"
    r"Driver .[^ ]* not found|InvalidAMIID|InvalidParameter|InvalidKeyPair",
    re.IGNORECASE,
)
_RATE_LIMITED = re.compile(
    r"RequestLimitExceeded|Throttling|Rate exceeded|rateLimitExceeded|TooManyRequests|"
    r"status code: 429|429 Too Many Requests|RequestThrottled",
    re.IGNORECASE,
)


def classify_failure(output: str) -> str:
    """'permanent' (retrying cannot help), 'rate_limited', or 'transient'."""
    if _RATE_LIMITED.search(output):
        return "rate_limited"
    if _PERMANENT.search(output):
        return "permanent"
    return "transient"


@dataclass(frozen=True)
class MachineInfo:
    """What ``docker-machine inspect`` tells about a machine, with its documented defaults."""

    name: str
    driver: str
    host: str
    ssh_port: int
    ssh_user: str
    ssh_key: str
    ca_cert: str
    client_cert: str
    client_key: str
    labels: dict[str, str]

    def label(self, key: str) -> str:
        return self.labels.get(f"{LABEL_PREFIX}.{key}", "")

    @property
    def engine_url(self) -> str:
        return f"tcp://{self.host}:{ENGINE_PORT}"


class DockerMachine:
    def __init__(self, settings: Settings) -> None:
        self.program = settings.docker_machine.program
        self.storage = settings.docker_machine.storage_path
        self.call_timeout = settings.docker_machine.call_timeout
        self.settings = settings

    def _argv(self, *args: str) -> list[str]:
        # As gitlab-runner does: crash reports never leave the host.
        return [
            self.program,
            "--storage-path",
            str(self.storage),
            "--bugsnag-api-token=no-report",
            *args,
        ]

    def certs_exist(self) -> bool:
        return all((self.storage / "certs" / name).is_file() for name in CERT_FILES)

    def create_argv(self, name: str, labels: dict[str, str]) -> list[str]:
        machine = self.settings.machine
        argv = ["create", "--driver", machine.driver]
        argv += [f"--{option}" for option in machine.options]
        for flag, values in (
            ("engine-registry-mirror", machine.engine_registry_mirror),
            ("engine-insecure-registry", machine.engine_insecure_registry),
            ("engine-env", machine.engine_env),
            ("engine-opt", machine.engine_opt),
            ("engine-label", machine.engine_label),
        ):
            argv += [f"--{flag}={value}" for value in values]
        argv += [f"--engine-label={LABEL_PREFIX}.{k}={v}" for k, v in labels.items()]
        if machine.engine_storage_driver:
            argv.append(f"--engine-storage-driver={machine.engine_storage_driver}")
        if machine.engine_install_url:
            argv.append(f"--engine-install-url={machine.engine_install_url}")
        return self._argv(*argv, name)

    def create(self, name: str, labels: dict[str, str], timeout: float) -> None:
        process.run(
            self.create_argv(name, labels),
            timeout=timeout,
            what=f"docker-machine create {name}",
            hint="the output above is docker-machine's own; check the machine driver's "
            "options and credentials in the config file",
        )

    def make_certs(self, scratch_name: str) -> None:
        """Have docker-machine make its CA and client certificates: a `none` machine, removed."""
        try:
            process.run(
                self._argv(
                    "create", "--driver", "none", "--url", "tcp://127.0.0.1:2376", scratch_name
                ),
                timeout=self.call_timeout,
                what=f"docker-machine create --driver none {scratch_name} (certificates only)",
            )
        finally:
            self.remove(scratch_name, force=True, timeout=self.call_timeout)

    def inspect(self, name: str) -> MachineInfo | None:
        """The machine's details, or None if docker-machine has no such machine."""
        result = process.run(
            self._argv("inspect", name),
            timeout=self.call_timeout,
            check=False,
            what=f"docker-machine inspect {name}",
        )
        if result.exit_code != 0:
            if _MISSING.search(result.output):
                return None
            raise CommandError(
                result.command,
                result.exit_code,
                result.output,
                message=f"docker-machine inspect {name}",
            )
        try:
            return _machine_info(name, json.loads(result.stdout), self.storage)
        except (ValueError, KeyError, TypeError) as e:
            raise DriverError(
                f"docker-machine inspect {name} printed something that is not a machine: {e}",
                hint="check that docker_machine.program is docker-machine v0.16 or GitLab's fork",
            ) from None

    def exists(self, name: str) -> bool:
        return self.inspect(name) is not None

    def remove(self, name: str, *, force: bool, timeout: float) -> process.Result:
        # -y always: without it docker-machine prompts, reads empty stdin and removes nothing.
        flags = ["-f", "-y"] if force else ["-y"]
        return process.run(
            self._argv("rm", *flags, name),
            timeout=timeout,
            check=False,
            what=f"docker-machine rm {name}",
        )

    def list(self, name_pattern: str) -> dict[str, str]:
        """Machine name -> state ("Running", "Error", ...) for names matching the regexp."""
        result = process.run(
            self._argv(
                "ls", "--filter", f"name={name_pattern}", "--format", "{{.Name}}\t{{.State}}"
            ),
            timeout=self.call_timeout,
            what="docker-machine ls",
        )
        machines = {}
        for line in result.stdout.splitlines():
            name, _, state = line.strip().partition("\t")
            if name and re.fullmatch(name_pattern, name):
                machines[name] = state.strip()
        return machines


def _machine_info(name: str, data: dict[str, Any], storage: Path) -> MachineInfo:
    driver = data["Driver"]
    auth = data.get("HostOptions", {}).get("AuthOptions", {}) or {}
    engine = data.get("HostOptions", {}).get("EngineOptions", {}) or {}
    machine_dir = storage / "machines" / name
    labels = {}
    for label in engine.get("Labels") or []:
        key, _, value = str(label).partition("=")
        labels[key] = value
    host = str(driver.get("IPAddress") or "")
    return MachineInfo(
        name=name,
        driver=str(data.get("DriverName", "")),
        host=host,
        ssh_port=int(driver.get("SSHPort") or 22),
        ssh_user=str(driver.get("SSHUser") or "root"),
        ssh_key=str(driver.get("SSHKeyPath") or machine_dir / "id_rsa"),
        ca_cert=str(auth.get("CaCertPath") or storage / "certs" / "ca.pem"),
        client_cert=str(auth.get("ClientCertPath") or storage / "certs" / "cert.pem"),
        client_key=str(auth.get("ClientKeyPath") or storage / "certs" / "key.pem"),
        labels=labels,
    )
