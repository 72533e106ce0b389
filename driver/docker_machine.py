"""docker-machine, driven as a program: every call bounded, every failure explained."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from driver import process
from driver.contract import clean_env
from driver.errors import CommandError, ConfigError, DriverError
from driver.parsed import integer, items, table
from driver.settings import Settings

LABEL_PREFIX = "gitlab-machine-driver"
_MISSING = re.compile(r'Docker machine "[^"]*" does not exist')
# docker-machine rewrites an entry's config.json non-atomically (delete, then rename):
# a reader racing a save sees it missing or empty for a moment. Retried, never believed.
_TRANSIENT_READ = re.compile(
    r"config\.json: no such file or directory|unexpected end of JSON input", re.IGNORECASE
)
TRANSIENT_RETRIES = 5
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


PRE_CREATE_CHECK_FAILED = 3  # docker-machine's exit code for "Error with pre-create check"


def classify_failure(output: str, exit_code: int | None = None) -> str:
    """'permanent' (retrying cannot help), 'rate_limited', or 'transient'."""
    if exit_code == PRE_CREATE_CHECK_FAILED:
        return "permanent"  # quota, credentials, a missing tool: found before any VM is made
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
    cloud_id: str  # what names the VM at its provider (instance id, droplet id...), if known

    def label(self, key: str) -> str:
        return self.labels.get(f"{LABEL_PREFIX}.{key}", "")


def find_program(program: str) -> str:
    """The docker-machine program's path, or a ConfigError saying why it cannot be run."""
    found = shutil.which(program)
    if found:
        return found
    install = (
        "install GitLab's docker-machine fork and put it on PATH, or set [docker_machine] "
        "program to its full path"
    )
    path = Path(program)
    if "/" in program and path.is_dir():
        raise ConfigError(f"docker-machine program {program!r} is a directory", hint=install)
    if "/" in program and path.exists():
        mode = path.stat().st_mode & 0o777
        raise ConfigError(
            f"docker-machine program {program!r} is not executable (mode {mode:o})",
            hint=f"point [docker_machine] program at the docker-machine binary, or chmod +x "
            f"{program} if it is one",
        )
    raise ConfigError(f"docker-machine program {program!r} is not found", hint=install)


class DockerMachine:
    def __init__(self, settings: Settings) -> None:
        self.program = settings.docker_machine.program
        self.storage = settings.docker_machine.storage_path
        self.call_timeout = settings.docker_machine.call_timeout
        self.settings = settings
        # [machine] env/env_file: credentials in docker-machine's environment, never on argv.
        self.env = {**clean_env(), **settings.machine.docker_machine_env()}

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
        tags = cloud_tags(machine.driver, machine.options, labels)
        merged = {tag.split("=", 1)[0].lstrip("-") for tag in tags}  # the admin's tags are in ours
        argv += [f"--{o}" for o in machine.options if o.partition("=")[0] not in merged]
        for flag, values in (
            ("engine-registry-mirror", machine.engine_registry_mirror),
            ("engine-insecure-registry", machine.engine_insecure_registry),
            ("engine-env", machine.engine_env),
            ("engine-opt", machine.engine_opt),
            ("engine-label", machine.engine_label),
        ):
            argv += [f"--{flag}={value}" for value in values]
        argv += [f"--engine-label={LABEL_PREFIX}.{k}={v}" for k, v in labels.items()]
        argv += tags
        if machine.engine_storage_driver:
            argv.append(f"--engine-storage-driver={machine.engine_storage_driver}")
        if machine.engine_install_url:
            argv.append(f"--engine-install-url={machine.engine_install_url}")
        return self._argv(*argv, name)

    def entry_dir(self, name: str) -> Path:
        return self.storage / "machines" / name

    def entries(self, name_pattern: str) -> list[str]:
        """Every machine in the storage whose name matches: read from the store itself,
        so entries `ls` leaves out (a missing driver plugin, a broken config.json) count."""
        machines = self.storage / "machines"
        if not machines.is_dir():
            return []
        return sorted(p.name for p in machines.iterdir() if re.fullmatch(name_pattern, p.name))

    def create(self, name: str, labels: dict[str, str], timeout: float) -> None:
        process.run(
            self.create_argv(name, labels),
            timeout=timeout,
            env=self.env,
            what=f"docker-machine create {name}",
            hint="docker-machine's own output follows; check the machine driver's "
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
                env=self.env,
                what=f"docker-machine create --driver none {scratch_name} (certificates only)",
            )
        finally:
            self.remove(scratch_name, force=True, timeout=self.call_timeout)

    def _read(self, command: str, name: str) -> process.Result:
        """A call that only reads the machine's entry, retried while docker-machine is
        rewriting it (its saves are not atomic: the file is missing for a moment)."""
        for attempt in range(TRANSIENT_RETRIES + 1):
            result = process.run(
                self._argv(command, name),
                timeout=self.call_timeout,
                env=self.env,
                check=False,
                what=f"docker-machine {command} {name}",
            )
            if result.exit_code == 0 or not _TRANSIENT_READ.search(result.output):
                break
            if attempt < TRANSIENT_RETRIES:
                time.sleep(0.1 * (attempt + 1))
        return result

    def inspect(self, name: str) -> MachineInfo | None:
        """The machine's details, or None if docker-machine has no such machine."""
        result = self._read("inspect", name)
        if result.exit_code != 0:
            if _MISSING.search(result.output):
                return None
            raise CommandError(
                result.command,
                result.exit_code,
                result.output,
                message=f"docker-machine inspect {name}",
                hint="the machine's entry in the docker-machine storage may be broken; "
                f"`docker-machine rm -f -y {name}` removes it",
            )
        try:
            return _machine_info(name, json.loads(result.stdout), self.storage)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DriverError(
                f"docker-machine inspect {name} printed something that is not a machine: {e}",
                hint="check that docker_machine.program is docker-machine v0.16 or GitLab's fork",
            ) from None

    def url(self, name: str) -> str:
        """The Docker engine's URL, as docker-machine reports it (its port is the driver's)."""
        return self._answer(
            "url", name, "the machine's Docker engine address", lambda url: url.startswith("tcp://")
        )

    def power(self, action: str, name: str, timeout: float) -> None:
        """`start` or `stop` (docker-machine waits up to 60 x 3 s for the state), or
        `regenerate-certs -f` (a new engine certificate for its address now; dockerd
        restarts); CommandError (a timeout too) if it fails."""
        args = ["regenerate-certs", "-f"] if action == "regenerate-certs" else [action]
        process.run(
            self._argv(*args, name),
            timeout=timeout,
            env=self.env,
            what=f"docker-machine {action} {name}",
        )

    def ip(self, name: str) -> str:
        """The address the driver gives now (amazonec2 asks the cloud): after a start it
        may differ from the one `inspect` keeps from the create."""
        return self._answer("ip", name, "the machine's address", bool)

    def _answer(self, command: str, name: str, what: str, valid: Callable[[str], bool]) -> str:
        """The one line `docker-machine COMMAND NAME` answers; CommandError unless valid."""
        result = self._read(command, name)
        answer = result.stdout.strip()
        if result.exit_code != 0 or not valid(answer):
            raise CommandError(
                result.command,
                result.exit_code,
                result.output,
                message=f"docker-machine {command} {name}",
                hint=f"docker-machine could not tell {what}",
            )
        return answer

    def exists(self, name: str) -> bool:
        """Whether the storage has an entry for ``name`` (as docker-machine itself decides:
        its directory exists), whatever state its files are in."""
        return self.entry_dir(name).is_dir()

    def remove(self, name: str, *, force: bool, timeout: float) -> process.Result:
        # -y always: without it docker-machine prompts, reads empty stdin and removes nothing.
        flags = ["-f", "-y"] if force else ["-y"]
        return process.run(
            self._argv("rm", *flags, name),
            timeout=timeout,
            env=self.env,
            check=False,
            what=f"docker-machine rm {name}",
        )

    def list(self, name_pattern: str) -> dict[str, str]:
        """Machine name -> state ("Running", "Error", ...) for names matching the regexp.

        For reports only: `ls` omits entries whose driver plugin is missing and shows
        "Error" for machines being created or being rewritten (see ``entries``).
        """
        result = process.run(
            self._argv(
                "ls", "--filter", f"name={name_pattern}", "--format", "{{.Name}}\t{{.State}}"
            ),
            timeout=self.call_timeout,
            env=self.env,
            what="docker-machine ls",
        )
        machines = {}
        for line in result.stdout.splitlines():
            name, _, state = line.strip().partition("\t")
            if name and re.fullmatch(name_pattern, name):
                machines[name] = state.strip()
        return machines


def _machine_info(name: str, data: Mapping[str, object], storage: Path) -> MachineInfo:
    if not isinstance(data["Driver"], dict):
        raise TypeError("its Driver is not an object")
    driver = table(data["Driver"])
    host_options = table(data.get("HostOptions"))
    auth = table(host_options.get("AuthOptions"))
    engine = table(host_options.get("EngineOptions"))
    machine_dir = storage / "machines" / name
    labels = {}
    for label in items(engine.get("Labels")):
        key, _, value = str(label).partition("=")
        labels[key] = value
    host = str(driver.get("IPAddress") or "")
    cloud_id = next(
        (
            str(driver[k])
            for k in ("InstanceId", "DropletID", "InstanceID", "ServerID")
            if driver.get(k)
        ),
        "",
    )
    return MachineInfo(
        name=name,
        driver=str(data.get("DriverName", "")),
        host=host,
        ssh_port=integer(driver.get("SSHPort") or 22),
        ssh_user=str(driver.get("SSHUser") or "root"),
        ssh_key=str(driver.get("SSHKeyPath") or machine_dir / "id_rsa"),
        ca_cert=str(auth.get("CaCertPath") or storage / "certs" / "ca.pem"),
        client_cert=str(auth.get("ClientCertPath") or storage / "certs" / "cert.pem"),
        client_key=str(auth.get("ClientKeyPath") or storage / "certs" / "key.pem"),
        labels=labels,
        cloud_id=cloud_id,
    )


def cloud_tags(driver: str, options: list[str], labels: dict[str, str]) -> list[str]:
    """Tags the cloud keeps on the VM itself, so an orphan can be found from the cloud side.

    Only for drivers with such a flag (amazonec2, digitalocean, google's network tags);
    an admin's own tags option is kept, and ours are added to it.
    """
    owner, job = (
        labels.get("owner", ""),
        labels.get("job") or ("pool" if labels.get("pool") else ""),
    )
    if driver == "amazonec2":
        flag, pairs = (
            "amazonec2-tags",
            [f"{LABEL_PREFIX}-owner,{owner}", f"{LABEL_PREFIX}-job,{job}"],
        )
        joiner = ","
    elif driver == "digitalocean":
        flag, pairs = "digitalocean-tags", [f"{LABEL_PREFIX}:{owner}", f"{LABEL_PREFIX}-job:{job}"]
        joiner = ","
    elif driver == "google":
        flag, pairs = "google-tags", [f"gmd-owner-{owner}", f"gmd-job-{job}"]
        joiner = ","
    else:
        return []
    for option in options:
        key, _, value = option.partition("=")
        if key == flag and value:
            pairs.insert(0, value)
    return [f"--{flag}={joiner.join(pairs)}"]
