"""A test double for the docker-machine program (v0.16.2), standard library only.

It keeps docker-machine's store layout, outputs and exit codes (see
/work/shared/reference/docker-machine-none-driver.txt), so the driver under test
cannot tell it from the real program. Driver `none` behaves as upstream's. Any
other driver name makes a simulated VM: a real OpenSSH server with its own host
key and, when running as root, its own network namespace, address, private
/tmp, /run, /builds and /cache, and a real dockerd.

Every invocation is appended to <storage>/calls.log. Faults and settings are
read from <storage>/double.json at each invocation (set them with `set_faults`);
a fault {"times": N} fires for the next N uses, -1 for always:

  "engine": "dockerd" | "none"      a real dockerd in each VM (default when root)
  "vm_mode": "netns" | "local"      namespaces (default when root) or 127.0.0.1:port
  "create_fail": {"times", "message", "leave": "error" | "none" | "vm"}
  "create_rate_limit": {"times"}    AWS-style RequestLimitExceeded, leaves an Error entry
  "create_hang": {"times"}          sleeps forever once config.json is written
  "create_delay": SECONDS           a slow cloud
  "ssh_never_ready": {"times"}      port 22 accepts TCP but never speaks SSH
  "rm_fail": {"times", "message"}   the cloud refuses to remove the VM
  "boot_timeout": SECONDS           how long a create waits for SSH and the engine

The helpers at the end of this module (`set_faults`, `kill_vm`, `kill_sshd`,
`rotate_host_key`, `vm_pids`, `teardown_all`, ...) are for tests;
`docker-machine -s STORAGE _teardown` runs teardown_all from a shell.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9\-\.]*$")
VERSION = "docker-machine version 0.16.2, build bd45ab13"
CONFIG_VERSION = 3
ENGINE_PORT = 2376
SSHD = "/usr/sbin/sshd"
DOCKERD = "/usr/sbin/dockerd"
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "docker-machine")

# Host-wide record of which storage owns which network namespace index, so that
# parallel test runs never collide and a half-made VM can always be found again.
REGISTRY = "/run/dmd"
CLAIMS = os.path.join(REGISTRY, "claims")
NETNS_DIR = "/run/netns"
MAX_INDEX = 16384  # 10.213.0.0/16 holds this many /30 networks

# docker-machine bootstraps its certs without a lock; the double stretches the
# window between writing ca.pem and the rest so concurrent first creates collide.
CERT_RACE_WINDOW = 0.3
BOOT_TIMEOUT = 60.0
# A fresh VM's own /tmp, /run, job dirs and (empty) root home: nothing of the host's
# or another VM's files, and no host shell start-up files run on each SSH session.
PRIVATE_DIRS = (
    ("/tmp", "1777"),
    ("/run", "755"),
    ("/builds", "755"),
    ("/cache", "755"),
    ("/root", "700"),
    ("/usr/local/bin", "755"),  # where the driver installs gitlab-runner: never the host's
)
RM_CLOUD_ERROR = "unable to terminate instance: InternalError: An internal error has occurred."
CREATE_CLOUD_ERROR = (
    "Error launching instance: InsufficientInstanceCapacity: We currently do not have "
    "sufficient capacity in the Availability Zone you requested."
)
CERT_HINT = (
    "You can attempt to regenerate them using 'docker-machine regenerate-certs [name]'.\n"
    "Be advised that this will trigger a Docker daemon restart which might stop running "
    "containers.\n"
)


class MachineError(Exception):
    """An error docker-machine prints with log.Error before exiting with `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class UsageError(MachineError):
    """A command line urfave/cli refuses."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Incorrect Usage: {message}")


class EngineError(Exception):
    """A failure talking to a Docker engine, worded as Go's net/http and crypto/tls do."""


# --- output --------------------------------------------------------------------------------------

_out = sys.stdout  # log.Info goes here; config and env switch it to stderr like the real one


def info(message: str) -> None:
    print(message, file=_out, flush=True)


def does_not_exist(name: str) -> str:
    return (
        f'Docker machine {go_quote(name)} does not exist. Use "docker-machine ls" to list '
        'machines. Use "docker-machine create" to add a new one.'
    )


def go_quote(text: str) -> str:
    """Go's %q for the plain strings machine names are."""
    return json.dumps(text, ensure_ascii=False)


def go_json(value: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """encoding/json output: Go escapes <, > and & in strings (Python does not)."""
    separators = (",", ": ") if indent is not None else (",", ":")
    text = json.dumps(
        value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=False
    )
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# --- files ---------------------------------------------------------------------------------------


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Other invocations may read `path` at any moment: write aside, then rename."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_plain(path: str, data: bytes, mode: int) -> None:
    """A non-atomic write, as docker-machine writes its certificates."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Store:
    """docker-machine's storage directory (-s / MACHINE_STORAGE_PATH)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.machines = os.path.join(self.root, "machines")
        self.certs = os.path.join(self.root, "certs")

    def machine_dir(self, name: str) -> str:
        return os.path.join(self.machines, name)

    def cert(self, file: str) -> str:
        return os.path.join(self.certs, file)

    def path(self, file: str) -> str:
        return os.path.join(self.root, file)


def machine_exists(store: Store, name: str) -> bool:
    # Upstream's filestore says a machine exists when its directory does. Invalid
    # names never exist here, so no command can reach outside the store.
    return bool(NAME_RE.match(name)) and os.path.isdir(store.machine_dir(name))


def load_host(store: Store, name: str) -> dict[str, Any]:
    if not machine_exists(store, name):
        raise MachineError(does_not_exist(name))
    path = os.path.join(store.machine_dir(name), "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            host: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        raise MachineError(f"open {path}: no such file or directory") from None
    except ValueError as exc:
        raise MachineError(f"invalid character in {path}: {exc}") from None
    return host


def save_host(store: Store, host: dict[str, Any]) -> None:
    path = os.path.join(store.machine_dir(host["Name"]), "config.json")
    write_atomic(path, go_json(host, indent=4).encode())


def read_vm(store: Store, name: str) -> dict[str, Any]:
    """The double's own record of a simulated VM (<machine>/vm.json)."""
    vm = read_json(os.path.join(store.machine_dir(name), "vm.json"))
    return vm if isinstance(vm, dict) else {}


def update_vm(store: Store, name: str, **fields: Any) -> dict[str, Any]:
    vm = read_vm(store, name)
    vm.update(fields)
    write_atomic(os.path.join(store.machine_dir(name), "vm.json"), json.dumps(vm).encode())
    return vm


# --- settings, faults and the call log -----------------------------------------------------------


def settings(store: Store) -> dict[str, Any]:
    data = read_json(store.path("double.json"))
    return data if isinstance(data, dict) else {}


def take_fault(store: Store, key: str) -> dict[str, Any] | None:
    """Consume one use of fault `key` from double.json; None when it is not armed.

    A fault is {"times": N, ...}: N uses left, -1 for always (times defaults to 1).
    """
    if not os.path.exists(store.path("double.json")):
        return None
    with locked(store.path("double.lock")):
        data = settings(store)
        fault = data.get(key)
        if not isinstance(fault, dict):
            return None
        times = int(fault.get("times", 1))
        if times == 0:
            return None
        if times > 0:
            data[key] = {**fault, "times": times - 1}
            write_atomic(store.path("double.json"), json.dumps(data, indent=2).encode(), 0o644)
        return fault


def set_faults(storage: str, faults: dict[str, Any]) -> None:
    """Merge `faults` (and settings) into <storage>/double.json; a None value removes a key."""
    store = Store(storage)
    os.makedirs(store.root, exist_ok=True)
    with locked(store.path("double.lock")):
        data = settings(store)
        data.update(faults)
        data = {key: value for key, value in data.items() if value is not None}
        write_atomic(store.path("double.json"), json.dumps(data, indent=2).encode(), 0o644)


def log_call(store: Store, argv: list[str]) -> None:
    os.makedirs(store.root, exist_ok=True)
    line = f"{time.time():.6f} {' '.join(argv)}\n".encode()
    fd = os.open(store.path("calls.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write per line: O_APPEND keeps parallel writers apart
    finally:
        os.close(fd)


def request_id() -> str:
    import uuid

    return str(uuid.uuid4())


# --- a small part of Go's text/template ----------------------------------------------------------


class TemplateError(Exception):
    pass


class NoValue:
    """What text/template prints for a missing map key."""

    def __str__(self) -> str:
        return "<no value>"


NO_VALUE = NoValue()


class GoStruct(NamedTuple):
    """A Go struct value: unknown fields are an execution error, as in Go."""

    type_name: str
    fields: dict[str, Any]


class _Action(NamedTuple):
    words: list[str]
    line: int
    col: int


GO_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break"}
GO_BUILTINS = {"and", "call", "html", "index", "js", "len", "not", "or", "print", "printf"}
GO_BUILTINS |= {"println", "urlquery", "eq", "ge", "gt", "le", "lt", "ne", "slice"}


class GoTemplate:
    """Fields ({{.A.B}}), string literals and one-argument functions such as {{json .}}."""

    def __init__(self, text: str, funcs: dict[str, Callable[[Any], str]]) -> None:
        self.funcs = funcs
        self.nodes: list[str | _Action] = []
        pos = 0
        while True:
            start = text.find("{{", pos)
            if start < 0:
                self.nodes.append(text[pos:])
                break
            end = text.find("}}", start + 2)
            line = text.count("\n", 0, start) + 1
            if end < 0:
                raise TemplateError(f"template: :{line}: unclosed action")
            literal, body = text[pos:start], text[start + 2 : end]
            if len(body) > 1 and body[0] == "-" and body[1].isspace():
                literal, body = literal.rstrip(), body[2:]
            trim_right = len(body) > 1 and body[-1] == "-" and body[-2].isspace()
            if trim_right:
                body = body[:-2]
            self.nodes.append(literal)
            offset = start + 2 + (len(body) - len(body.lstrip()))
            col = offset - (text.rfind("\n", 0, offset) + 1)
            self.nodes.append(self._parse_action(body.strip(), line, col))
            pos = end + 2
            if trim_right:
                while pos < len(text) and text[pos].isspace():
                    pos += 1

    def _parse_action(self, body: str, line: int, col: int) -> _Action:
        words = re.findall(r'"(?:[^"\\]|\\.)*"|\S+', body)
        if not words:
            raise TemplateError(f"template: :{line}: missing value for command")
        head = words[0]
        if head.startswith(".") or head.startswith('"'):
            if len(words) > 1:
                raise TemplateError(
                    f"template: :{line}: can't give argument to non-function {head}"
                )
        elif head in GO_KEYWORDS or head.startswith("$"):
            raise TemplateError(
                f"template: :{line}: {{{{{head}}}}} is not supported by the docker-machine double"
            )
        elif head in self.funcs:
            if len(words) != 2:
                raise TemplateError(f"template: :{line}: wrong number of args for {head}")
        elif head in GO_BUILTINS:
            raise TemplateError(
                f"template: :{line}: function {head} is not supported by the docker-machine double"
            )
        else:
            raise TemplateError(f'template: :{line}: function "{head}" not defined')
        return _Action(words, line, col)

    def execute(self, data: Any) -> str:
        out = []
        for node in self.nodes:
            if isinstance(node, str):
                out.append(node)
                continue
            head = node.words[0]
            if head in self.funcs:
                out.append(self.funcs[head](self._value(node.words[1], data, node)))
            else:
                out.append(go_format(self._value(head, data, node)))
        return "".join(out)

    def _value(self, word: str, data: Any, node: _Action) -> Any:
        if word.startswith('"'):
            return json.loads(word)
        if word == ".":
            return data
        chain = word[1:].split(".")
        value = data
        for i, field in enumerate(chain):
            where = f'template: :{node.line}:{node.col}: executing "" at <{word}>'
            if isinstance(value, GoStruct):
                if field not in value.fields:
                    raise TemplateError(
                        f"{where}: can't evaluate field {field} in type {value.type_name}"
                    )
                value = value.fields[field]
            elif isinstance(value, dict):
                value = value.get(field, NO_VALUE)
                if value is NO_VALUE and i + 1 < len(chain):
                    raise TemplateError(
                        f"{where}: nil pointer evaluating interface {{}}.{chain[i + 1]}"
                    )
            else:
                raise TemplateError(f"{where}: can't evaluate field {field} in type {type(value)}")
        return value


def go_format(value: Any) -> str:
    """fmt's %v for the values a JSON document or a listing holds."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, list):
        return "[" + " ".join(go_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_format(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def go_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, rest = divmod(ms, 60000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{secs}" if minutes else secs


def tabwrite(text: str, minwidth: int = 5, padding: int = 3) -> str:
    """Go's text/tabwriter as `docker-machine ls` configures it (pad with spaces)."""
    lines = [line.split("\t") for line in text.split("\n")]
    widths: list[int] = []
    out: list[str] = []

    def write_lines(first: int, last: int) -> None:
        for cells in lines[first:last]:
            row = [c.ljust(widths[j]) if j < len(widths) else c for j, c in enumerate(cells)]
            out.append("".join(row))

    def format_block(first: int, last: int) -> None:
        column = len(widths)
        this = first
        while this < last:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(first, this)
            first = this
            width = minwidth
            while this < last and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            format_block(first, this)
            widths.pop()
            first = this
        write_lines(first, last)

    format_block(0, len(lines))
    return "\n".join(out)


def natural_key(name: str) -> list[Any]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p]


# --- command-line flags, as Go's flag package and urfave/cli parse them ------------------------


class Flag(NamedTuple):
    kind: str  # "bool", "string", "slice", "int", or "auto" for driver flags
    dest: str


def parse_flags(
    args: list[str],
    flags: dict[str, Flag],
    extra: Callable[[str], Flag | None] | None = None,
    interspersed: bool = True,
) -> tuple[dict[str, Any], list[str]]:
    """Return (values, positional). Flags take one or two dashes, `-f v` or `-f=v`."""
    values: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positional += args[i + 1 :]
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            if not interspersed:
                positional += args[i + 1 :]
                break
            i += 1
            continue
        if arg.startswith("---"):
            raise UsageError(f"bad flag syntax: {arg}")
        name, has_value, value = arg.lstrip("-").partition("=")
        flag = flags.get(name) or (extra(name) if extra else None)
        if flag is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        if flag.kind == "bool":
            parsed: Any = value.lower() in ("1", "t", "true") if has_value else True
        elif flag.kind == "auto":  # a driver flag: boolean unless a value follows
            rest = args[i + 1 :]
            if has_value:
                parsed = value
            elif rest and not rest[0].startswith("-") and not (len(rest) == 1 and not positional):
                parsed, i = rest[0], i + 1
            else:
                parsed = True
        else:
            if not has_value:
                if i + 1 >= len(args):
                    raise UsageError(f"flag needs an argument: -{name}")
                value, i = args[i + 1], i + 1
            parsed = value
            if flag.kind == "int":
                try:
                    parsed = int(value)
                except ValueError:
                    raise UsageError(
                        f'invalid value "{value}" for flag -{name}: parse error'
                    ) from None
        if flag.kind in ("slice", "auto"):
            values.setdefault(flag.dest, []).append(parsed)
        else:
            values[flag.dest] = parsed
        i += 1
    return values, positional


def flag_table(spec: dict[str, str]) -> dict[str, Flag]:
    """{"format, f": "string"} -> a lookup by every alias."""
    table: dict[str, Flag] = {}
    for names, kind in spec.items():
        aliases = [n.strip() for n in names.split(",")]
        for alias in aliases:
            table[alias] = Flag(kind, aliases[0])
    return table


GLOBAL_FLAGS = flag_table(
    {
        "storage-path, s": "string",
        "version, v": "bool",
        "help, h": "bool",
        "debug, D": "bool",
        "native-ssh": "bool",
        "bugsnag-api-token": "string",
        "github-api-token": "string",
        "tls-ca-cert": "string",
        "tls-ca-key": "string",
        "tls-client-cert": "string",
        "tls-client-key": "string",
    }
)

CREATE_FLAGS = flag_table(
    {
        "driver, d": "string",
        "engine-install-url": "string",
        "engine-opt": "slice",
        "engine-insecure-registry": "slice",
        "engine-registry-mirror": "slice",
        "engine-label": "slice",
        "engine-storage-driver": "string",
        "engine-env": "slice",
        "swarm": "bool",
        "swarm-image": "string",
        "swarm-master": "bool",
        "swarm-discovery": "string",
        "swarm-strategy": "string",
        "swarm-opt": "slice",
        "swarm-join-opt": "slice",
        "swarm-host": "string",
        "swarm-addr": "string",
        "swarm-experimental": "bool",
        "tls-san": "slice",
    }
)


# --- certificates (made with the openssl CLI) ----------------------------------------------------


class CertError(Exception):
    pass


def openssl(args: list[str], stdin: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace")
        if "key values mismatch" in message or "does not match" in message:
            raise CertError("tls: private key does not match public key")
        raise CertError(message.strip().splitlines()[-1] if message.strip() else "openssl failed")
    return result.stdout


def new_key() -> bytes:
    # EC keys: RSA 2048 as upstream uses would cost ~100 ms per key for nothing.
    return openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])


def username() -> str:
    """mcnutils.GetUsername, which names the certificates' organisation."""
    return os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name


class Signer(NamedTuple):
    """The CA a create signs with: the store's, or the one this create just made."""

    cert: str
    key: str
    scratch: str | None = None  # where a CA this create made is kept

    def sign(self, key: bytes, org: str, extensions: list[str]) -> bytes:
        for path, what in ((self.cert, "certificate"), (self.key, "key")):
            if not os.path.exists(path):
                raise CertError(f"open {path}: no such file or directory")
            if os.path.getsize(path) == 0:
                raise CertError(f"tls: failed to find any PEM data in {what} input")
        addext = [arg for ext in extensions for arg in ("-addext", ext)]
        subject = f"/O={org[:64]}"  # openssl, unlike Go, holds O= to its 64-character limit
        csr = openssl(["req", "-new", "-key", "/dev/stdin", "-subj", subject, *addext], key)
        serial = "0x" + os.urandom(16).hex()
        return openssl(
            [
                "x509", "-req", "-in", "/dev/stdin", "-CA", self.cert, "-CAkey", self.key,
                "-set_serial", serial, "-days", "1080", "-copy_extensions", "copy",
            ],
            csr,
        )  # fmt: skip

    def discard(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def bootstrap_certs(store: Store) -> Signer:
    """cert.BootstrapCertificates: make the store's CA and client cert when missing.

    Like upstream it takes no lock. It writes ca.pem, waits CERT_RACE_WINDOW, then
    writes ca-key.pem and the client cert; a create starting in that window finds
    ca.pem without its key and fails. A create that made its own CA keeps signing
    with it, so when a concurrent create overwrote ca.pem its machine's TLS does
    not verify against the store's CA, and its final connection check fails.
    """
    os.makedirs(store.certs, mode=0o700, exist_ok=True)
    signer = Signer(store.cert("ca.pem"), store.cert("ca-key.pem"))
    try:
        if not os.path.exists(store.cert("ca.pem")):
            signer = create_ca(store)
        client_cert, client_key = store.cert("cert.pem"), store.cert("key.pem")
        if not os.path.exists(client_cert):
            info(f"Creating client certificate: {client_cert}")
            if os.path.exists(client_key):
                raise CertError("client key already exists")
            try:
                key = new_key()
                cert = signer.sign(key, username(), ["extendedKeyUsage=clientAuth"])
            except CertError as exc:
                raise CertError(f"Generating client certificate failed: {exc}") from None
            write_plain(client_cert, cert, 0o644)
            write_plain(client_key, key, 0o600)
    except CertError as exc:
        signer.discard()
        raise MachineError(f"Error generating certificates: {exc}") from None
    return signer


def create_ca(store: Store) -> Signer:
    import tempfile

    ca, ca_key = store.cert("ca.pem"), store.cert("ca-key.pem")
    info(f"Creating CA: {ca}")
    if os.path.exists(ca_key):
        raise CertError("certificate authority key already exists")
    key = new_key()
    usage = "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign"
    cert = openssl(
        ["req", "-new", "-x509", "-key", "/dev/stdin", "-subj", f"/O={username()}",
         "-days", "1080", "-addext", usage],
        key,
    )  # fmt: skip
    scratch = tempfile.mkdtemp(prefix=".dmd-", dir=store.root)
    signer = Signer(os.path.join(scratch, "ca.pem"), os.path.join(scratch, "ca-key.pem"), scratch)
    write_plain(signer.cert, cert, 0o644)
    write_plain(signer.key, key, 0o600)
    write_plain(ca, cert, 0o644)
    time.sleep(CERT_RACE_WINDOW)
    write_plain(ca_key, key, 0o600)
    return signer


def provision_certs(store: Store, name: str, signer: Signer, ip: str, sans: list[str]) -> None:
    """ConfigureAuth: copy the client certs into the machine dir, make its server cert."""
    mdir = store.machine_dir(name)
    copies = [(signer.cert, "ca.pem"), (store.cert("cert.pem"), "cert.pem")]
    copies.append((store.cert("key.pem"), "key.pem"))
    for source, target in copies:
        try:
            with open(source, "rb") as f:
                write_plain(os.path.join(mdir, target), f.read(), 0o600)
        except FileNotFoundError:
            raise MachineError(
                "Error creating machine: Error running provisioning: Copying "
                f"{target} to machine dir failed: open {source}: no such file or directory"
            ) from None
    alt = [f"IP:{ip}", "DNS:localhost"] + [f"{'IP' if is_ip(s) else 'DNS'}:{s}" for s in sans]
    extensions = [
        "subjectAltName=" + ",".join(alt),
        "extendedKeyUsage=serverAuth",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "basicConstraints=critical,CA:FALSE",
    ]
    try:
        key = new_key()
        cert = signer.sign(key, f"{username()}.{name}", extensions)
    except CertError as exc:
        raise MachineError(
            "Error creating machine: Error running provisioning: error generating server cert: "
            + str(exc)
        ) from None
    write_plain(os.path.join(mdir, "server.pem"), cert, 0o644)
    write_plain(os.path.join(mdir, "server-key.pem"), key, 0o600)


def verify_offline(store: Store, name: str) -> str | None:
    """What a TLS check would find, without an engine: None when both sides trust each other."""
    mdir = store.machine_dir(name)
    unknown_ca = "x509: certificate signed by unknown authority"
    checks = [
        (store.cert("ca.pem"), os.path.join(mdir, "server.pem"), unknown_ca),  # the client's view
        (
            os.path.join(mdir, "ca.pem"),
            store.cert("cert.pem"),
            "remote error: tls: bad certificate",
        ),
    ]
    for ca, cert, failure in checks:
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", ca, cert], capture_output=True, check=False
        )
        if result.returncode != 0:
            return failure
    return None


def is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def ssh_keygen(path: str, comment: str) -> None:
    for stale in (path, path + ".pub"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
        stdin=subprocess.DEVNULL,
        check=True,
    )


# --- talking to a Docker engine ------------------------------------------------------------------


def _der_length(der: bytes, pos: int) -> tuple[int, int]:
    first = der[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    return int.from_bytes(der[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


def cert_ip_sans(der: bytes) -> list[str]:
    """The iPAddress entries of a certificate's subjectAltName (enough DER to find them)."""
    import ipaddress

    at = der.find(b"\x06\x03\x55\x1d\x11")  # OID 2.5.29.17
    if at < 0:
        return []
    pos = at + 5
    if der[pos] == 0x01:  # the optional "critical" BOOLEAN
        pos += 3
    _, pos = _der_length(der, pos + 1)  # OCTET STRING
    length, pos = _der_length(der, pos + 1)  # SEQUENCE of GeneralName
    end, ips = pos + length, []
    while pos < end:
        tag = der[pos]
        length, pos = _der_length(der, pos + 1)
        if tag == 0x87:
            ips.append(str(ipaddress.ip_address(der[pos : pos + length])))
        pos += length
    return ips


def _hostname_error(host: str, der: bytes) -> str | None:
    """Go (as docker-machine was built) checks the name before the chain."""
    if not is_ip(host):
        return None
    ips = cert_ip_sans(der)
    if not ips:
        return (
            f"x509: cannot validate certificate for {host} because it doesn't contain any IP SANs"
        )
    if host not in ips:
        return f"x509: certificate is valid for {', '.join(ips)}, not {host}"
    return None


def engine_get(
    address: str, path: str, ca: str, cert: str, key: str, timeout: float
) -> tuple[int, bytes]:
    """GET https://address/path with the given TLS material; Go-worded EngineError on failure."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    ctx = _tls_context(ca, cert, key)
    sock = _dial(host, int(port or ENGINE_PORT), timeout)
    try:
        with _handshake(ctx, sock, host, int(port or ENGINE_PORT), timeout) as tls:
            problem = _hostname_error(host, tls.getpeercert(binary_form=True) or b"")
            if problem:
                raise EngineError(problem)
            return _http_get(tls, host, path, address)
    finally:
        sock.close()


def _tls_context(ca: str, cert: str, key: str) -> Any:
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # TLS 1.2, as docker-machine's Go spoke it: a refused client cert fails the handshake.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # checked by _hostname_error, in Go's order and words
    try:
        ctx.load_verify_locations(ca)
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise EngineError(f"open {exc.filename}: no such file or directory") from None
    except ssl.SSLError:
        raise EngineError("tls: private key does not match public key") from None
    return ctx


def _dial(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise EngineError(f"dial tcp {host}:{port}: i/o timeout") from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise EngineError(f"dial tcp {host}:{port}: connect: {reason}") from None


def _handshake(ctx: Any, sock: socket.socket, host: str, port: int, timeout: float) -> Any:
    import ssl

    try:
        return ctx.wrap_socket(sock, server_hostname=None if is_ip(host) else host)
    except ssl.SSLCertVerificationError:
        der = _peer_cert_insecure(host, port, timeout)
        problem = _hostname_error(host, der) or "x509: certificate signed by unknown authority"
        raise EngineError(problem) from None
    except ssl.SSLError as exc:
        raise EngineError(_tls_alert(exc)) from None
    except OSError:
        raise EngineError("tls: DialWithDialer timed out") from None


def _tls_alert(exc: Exception) -> str:
    reason = str(getattr(exc, "reason", "") or exc).lower().replace("_", " ")
    return "remote error: tls: " + reason.replace("sslv3 alert ", "").replace("tlsv13 alert ", "")


def _http_get(tls: Any, host: str, path: str, address: str) -> tuple[int, bytes]:
    import ssl

    chunks = []
    try:
        tls.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    except ssl.SSLError as exc:
        raise EngineError(_tls_alert(exc)) from None
    except TimeoutError:
        raise EngineError(f"read tcp {address}: i/o timeout") from None
    except OSError as exc:
        raise EngineError(f"read tcp {address}: {(exc.strerror or str(exc)).lower()}") from None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b" ", 2)
    return (int(status[1]) if len(status) > 1 and status[1].isdigit() else 0), body


def _peer_cert_insecure(host: str, port: int, timeout: float) -> bytes:
    """The server's certificate without verifying it, to word a verification failure."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            return tls.getpeercert(binary_form=True) or b""
    except OSError:
        return b""


def engine_check(store: Store, host: dict[str, Any], address: str) -> None:
    """check.DefaultConnChecker's certificate check of one engine address."""
    try:
        engine_get(
            address,
            "/_ping",
            host["HostOptions"]["AuthOptions"]["CaCertPath"],
            host["HostOptions"]["AuthOptions"]["ClientCertPath"],
            host["HostOptions"]["AuthOptions"]["ClientKeyPath"],
            timeout=20,
        )
    except EngineError as exc:
        raise MachineError(cert_check_error(address, str(exc))) from None


def cert_check_error(address: str, problem: str) -> str:
    return (
        "Error checking and/or regenerating the certs: There was an error validating "
        f"certificates for host {go_quote(address)}: {problem}\n{CERT_HINT}"
    )


def engine_ping_unix(init_pid: int) -> bool:
    """GET /_ping on the VM's /run/docker.sock, reached through the init's mount namespace."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(f"/proc/{init_pid}/root/run/docker.sock")
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and reply.split(b" ", 2)[1:2] == [b"200"]


# --- processes -----------------------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process on the host."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        table[int(entry)] = (int(fields[1]), fields[0].decode())
    return table


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def ancestors(table: dict[int, tuple[int, str]]) -> set[int]:
    """This process and its parents: never ours to kill."""
    chain, pid = set(), os.getpid()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        pid = table.get(pid, (0, ""))[0]
    return chain


def vm_markers(mdir: str) -> dict[str, re.Pattern[bytes]]:
    """Command lines only the VM's own processes have (never a host-side ssh client).

    sshd rewrites its title to "sshd: /usr/sbin/sshd -D -e -f <config> [listener] ...".
    """
    path = re.escape(mdir.encode())
    return {
        "init": re.compile(rb"_vm-init\0" + path + rb"\0"),
        "sshd": re.compile(path + rb"/sshd_config[\0 ]"),
        "dockerd": re.compile(path + rb"/docker/"),
    }


def machine_pids(
    store: Store, name: str, table: dict[int, tuple[int, str]] | None = None
) -> list[int]:
    """Every live process of a VM: in its namespace, or its init, sshd or dockerd, or a child."""
    table = table if table is not None else process_table()
    markers = vm_markers(store.machine_dir(name))
    inodes = set()
    for index in claimed_indexes(store, name):
        with contextlib.suppress(OSError):
            inodes.add(os.stat(os.path.join(NETNS_DIR, netns_name(index))).st_ino)
    roots = set()
    for pid, (_, state) in table.items():
        if state == "Z":
            continue
        in_netns = bool(inodes) and netns_inode(pid) in inodes
        if in_netns or any(m.search(cmdline(pid)) for m in markers.values()):
            roots.add(pid)
    found = roots | descendants(roots, table)
    mine = ancestors(table)
    return sorted(p for p in found if p not in mine and table.get(p, (0, "Z"))[1] != "Z")


def kill_until_gone(find: Callable[[], list[int]], timeout: float = 15.0) -> list[int]:
    """SIGKILL whatever `find` returns until it returns nothing; what is left on timeout."""
    deadline = time.monotonic() + timeout
    while pids := find():
        if time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    return []


def init_pid(store: Store, name: str) -> int | None:
    """The VM's init when it is alive (checked by its command line, not just the pid)."""
    pid = read_vm(store, name).get("init_pid")
    if not isinstance(pid, int):
        return None
    if not vm_markers(store.machine_dir(name))["init"].search(cmdline(pid)):
        return None
    return pid


# --- network namespaces ------------------------------------------------------------------------


def netns_name(index: int) -> str:
    return f"dmd-{index}"


def vm_addresses(index: int) -> tuple[str, str]:
    """(host side, VM side) of the index's /30 in 10.213.0.0/16."""
    base = (10 << 24) | (213 << 16) | (index * 4)
    host, vm = (socket.inet_ntoa((base + n).to_bytes(4, "big")) for n in (1, 2))
    return host, vm


def ip_cmd(
    *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [shutil.which("ip") or "/usr/sbin/ip", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        command = " ".join(("ip", *args))
        raise MachineError(
            "Error creating machine: Error in driver during machine creation: "
            f"{command}: {result.stderr.strip()}"
        )
    return result


def read_claims() -> dict[int, dict[str, str]]:
    claims = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(CLAIMS):
            if entry.isdigit():
                claim = read_json(os.path.join(CLAIMS, entry))
                if isinstance(claim, dict):
                    claims[int(entry)] = claim
    return claims


def claimed_indexes(store: Store, name: str | None = None) -> list[int]:
    return sorted(
        i
        for i, claim in read_claims().items()
        if claim.get("storage") == store.root and (name is None or claim.get("name") == name)
    )


def allocate_netns(store: Store, name: str) -> int:
    """Claim the lowest free index host-wide; `ip netns add` succeeding makes it ours."""
    os.makedirs(CLAIMS, exist_ok=True)
    # The claim names storage and machine before the namespace exists, so that a
    # create killed half-way leaves something `rm -f` and teardown_all can find.
    with locked(os.path.join(REGISTRY, "alloc.lock")):
        claims = read_claims()
        for index in range(MAX_INDEX):
            ns = os.path.join(NETNS_DIR, netns_name(index))
            claim = claims.get(index)
            if claim is not None:
                owner = Store(claim.get("storage", "/")).machine_dir(claim.get("name", ""))
                if os.path.exists(ns) or os.path.isdir(owner):
                    continue
            if os.path.exists(ns):
                continue  # someone else's namespace that has no claim: leave it alone
            path = os.path.join(CLAIMS, str(index))
            write_atomic(path, json.dumps({"storage": store.root, "name": name}).encode(), 0o644)
            if ip_cmd("netns", "add", netns_name(index), check=False).returncode == 0:
                return index
            os.unlink(path)
    raise MachineError(
        "Error creating machine: Error in driver during machine creation: no free network namespace"
    )


def ensure_link(index: int) -> None:
    """The veth pair between host and VM; recreated by `start` after kill_vm removed it."""
    host_if, vm_if = f"dmdh{index}", f"dmdm{index}"
    if os.path.exists(f"/sys/class/net/{host_if}"):
        return
    ns = netns_name(index)
    host_ip, vm_ip = vm_addresses(index)
    ip_cmd("link", "add", host_if, "type", "veth", "peer", "name", vm_if, "netns", ns)
    ip_cmd("-batch", "-", stdin=f"addr add {host_ip}/30 dev {host_if}\nlink set {host_if} up\n")
    inside = f"addr add {vm_ip}/30 dev {vm_if}\nlink set {vm_if} up\nlink set lo up\n"
    ip_cmd("-n", ns, "-batch", "-", stdin=inside + f"route add default via {host_ip}\n")


def remove_cgroups(index: int) -> None:
    """Container cgroups dockerd made under --cgroup-parent; a killed dockerd leaves them."""
    roots = [os.path.join("/sys/fs/cgroup", f"dmd-vm-{index}")]
    with contextlib.suppress(OSError):
        roots += [
            os.path.join("/sys/fs/cgroup", h, f"dmd-vm-{index}")
            for h in os.listdir("/sys/fs/cgroup")
        ]
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, _, _ in os.walk(root, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def release_netns(index: int) -> None:
    remove_cgroups(index)
    ip_cmd("link", "del", f"dmdh{index}", check=False)
    ip_cmd("netns", "del", netns_name(index), check=False)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(CLAIMS, str(index)))


def destroy_vm(store: Store, name: str) -> None:
    """Kill every process of the VM and give back its network; the store entry stays."""
    kill_until_gone(lambda: machine_pids(store, name))
    for index in claimed_indexes(store, name):
        release_netns(index)


# --- the simulated VM: how it is started ---------------------------------------------------------


def vm_mode(store: Store) -> str:
    """'netns' (root, with ip/nsenter/unshare) unless double.json says "vm_mode": "local"."""
    tools = all(shutil.which(t) for t in ("nsenter", "unshare")) and (
        shutil.which("ip") or os.path.exists("/usr/sbin/ip")
    )
    wanted = settings(store).get("vm_mode", "netns")
    return "netns" if wanted == "netns" and os.geteuid() == 0 and tools else "local"


def engine_wanted(store: Store, mode: str) -> bool:
    default = "dockerd" if mode == "netns" and os.path.exists(DOCKERD) else "none"
    return settings(store).get("engine", default) == "dockerd" and mode == "netns"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_sshd_config(mdir: str, listen: str) -> None:
    lines = [  # paths quoted: a store path may hold spaces
        f"ListenAddress {listen}",
        f'HostKey "{mdir}/ssh_host_ed25519_key"',
        f'AuthorizedKeysFile "{mdir}/id_rsa.pub"',
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "MaxSessions 100",
        "MaxStartups 100:30:200",
        f'PidFile "{mdir}/sshd.pid"',
        "PrintMotd no",
        "PrintLastLog no",
        "Subsystem sftp internal-sftp",
    ]
    write_atomic(os.path.join(mdir, "sshd_config"), ("\n".join(lines) + "\n").encode(), 0o644)


def engine_args(mdir: str, index: int, engine: dict[str, Any]) -> list[str]:
    docker = os.path.join(mdir, "docker")
    exec_root = os.path.join(docker, "exec")
    if len(exec_root) + len("/containerd/containerd.sock.ttrpc") > 107:
        exec_root = "/run/docker-exec"  # unix socket paths hold 108 bytes; /run is the VM's own
    args = [
        "--data-root", f"{docker}/data", "--exec-root", exec_root, "--pidfile", f"{docker}/pid",
        "-H", "unix:///run/docker.sock", "-H", f"tcp://0.0.0.0:{ENGINE_PORT}",
        "--tlsverify", "--tlscacert", f"{mdir}/ca.pem",
        "--tlscert", f"{mdir}/server.pem", "--tlskey", f"{mdir}/server-key.pem",
        "--cgroup-parent", f"/dmd-vm-{index}",
    ]  # fmt: skip
    for flag, key in (
        ("--label", "Labels"),
        ("--registry-mirror", "RegistryMirror"),
        ("--insecure-registry", "InsecureRegistry"),
    ):
        for value in engine.get(key) or []:
            args += [flag, value]
    if engine.get("StorageDriver"):
        args += ["--storage-driver", engine["StorageDriver"]]
    args += [f"--{opt}" for opt in engine.get("ArbitraryFlags") or []]
    return args


def spawn_init(store: Store, name: str, vm: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start the VM's init detached, so that it outlives this docker-machine process."""
    mdir = store.machine_dir(name)
    command = [sys.executable, LAUNCHER, "_vm-init", mdir]
    if vm["mode"] == "netns":
        # nsenter + unshare, not `ip netns exec`: that remounts /sys, and dockerd then
        # fails with "Devices cgroup isn't mounted".
        ns = os.path.join(NETNS_DIR, netns_name(vm["index"]))
        # Its own mount table, and its own hostname (the machine's name, as a real VM has).
        unshare = ["unshare", "--mount", "--uts", "--propagation", "private"]
        command = ["nsenter", f"--net={ns}", *unshare, *command]
    with open(os.path.join(mdir, "vm.log"), "ab") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            start_new_session=True,
        )
    update_vm(store, name, init_pid=proc.pid)
    return proc


def wait_for_ssh(
    proc: subprocess.Popen[bytes], ip: str, port: int, banner: bool, timeout: float
) -> None:
    """Until the VM's port 22 accepts connections (and speaks SSH unless `banner` is False)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise TimeoutError("the VM stopped while booting")
        with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=1) as s:
            if not banner:
                return
            s.settimeout(2)
            if s.recv(64).startswith(b"SSH-"):
                return
        if time.monotonic() > deadline:
            raise TimeoutError("Maximum number of retries (60) exceeded")
        time.sleep(0.02)


def wait_for_engine(proc: subprocess.Popen[bytes], mdir: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None or os.path.exists(os.path.join(mdir, "engine.failed")):
            return False
        if engine_ping_unix(proc.pid):
            return True
        time.sleep(0.05)
    return False


def boot_vm(store: Store, name: str, vm: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start the VM's processes and wait for SSH and (when it has one) its engine."""
    if vm["mode"] == "netns":
        if not os.path.exists(os.path.join(NETNS_DIR, netns_name(vm["index"]))):
            ip_cmd("netns", "add", netns_name(vm["index"]))
        ensure_link(vm["index"])
    elif os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(store.machine_dir(name), "engine.failed"))
    proc = spawn_init(store, name, vm)
    timeout = float(settings(store).get("boot_timeout", BOOT_TIMEOUT))
    try:
        wait_for_ssh(proc, vm["ip"], vm["port"], vm.get("ssh") != "tarpit", timeout)
    except TimeoutError as exc:
        raise VmBootError(f"Error waiting for SSH: {exc}") from None
    if vm.get("engine") and not wait_for_engine(proc, store.machine_dir(name), timeout):
        raise VmBootError(
            "Error running provisioning: Unable to verify the Docker daemon is listening: "
            "Maximum number of retries (10) exceeded"
        )
    return proc


class VmBootError(Exception):
    pass


# --- the simulated VM: its init, running inside it -----------------------------------------------


MS_NOSUID, MS_NODEV, MS_BIND = 2, 4, 4096


def private_mounts(mdir: str) -> None:
    """Private tmpfs on PRIVATE_DIRS; the machine dir and this interpreter stay reachable."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        def enc(s: str | None) -> bytes | None:
            return s.encode() if s is not None else None

        if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)):
            err = ctypes.get_errno()
            raise OSError(err, f"mount {target}: {os.strerror(err)}")

    # The store may live under /tmp, the interpreter under /root (pyenv): bind them back.
    keep = {}
    for path in (mdir, sys.base_prefix, sys.prefix):
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
            keep[path] = (fd, os.fstat(fd))
    for target, mode in PRIVATE_DIRS:
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    for path, (fd, before) in keep.items():
        try:
            now = os.stat(path)
            hidden = (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino)
        except FileNotFoundError:
            hidden = True
        if hidden:
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND, None)
        os.close(fd)


class VmInit:
    """PID 'one' of a simulated VM: starts sshd and dockerd, reaps, restarts sshd on SIGHUP."""

    def __init__(self, mdir: str) -> None:
        import selectors

        self.mdir = mdir
        with open(os.path.join(mdir, "vm.json"), encoding="utf-8") as f:
            self.vm: dict[str, Any] = json.load(f)
        self.selector = selectors.DefaultSelector()
        self.sshd: subprocess.Popen[bytes] | None = None
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.dockerd_started = 0.0
        self.engine_fallback = False
        self.listeners: list[socket.socket] = []
        self.held: list[socket.socket] = []
        self.pending: list[int] = []
        self.stopping = False

    def log(self, message: str) -> None:
        print(f"[dmd-init {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def run(self) -> int:
        import selectors

        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, lambda signum, _frame: self.pending.append(signum))
        self.selector.register(read_end, selectors.EVENT_READ)
        self.start_ssh()
        self.start_engine()
        while True:
            for key, _ in self.selector.select(timeout=1.0):
                if key.fileobj == read_end:
                    with contextlib.suppress(BlockingIOError):
                        os.read(read_end, 512)
                elif isinstance(key.fileobj, socket.socket):
                    with contextlib.suppress(OSError):
                        self.held.append(key.fileobj.accept()[0])  # and never answer
            while self.pending:
                signum = self.pending.pop(0)
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self.shutdown()
                    return 0
                if signum == signal.SIGHUP:
                    self.restart_ssh()
            self.reap()

    def listen_address(self) -> tuple[str, int]:
        return ("0.0.0.0" if self.vm["mode"] == "netns" else "127.0.0.1", self.vm["port"])

    def start_ssh(self) -> None:
        import selectors

        if self.vm.get("ssh") == "tarpit":  # accepts TCP, never completes a handshake
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(self.listen_address())
            listener.listen(128)
            self.listeners.append(listener)
            self.selector.register(listener, selectors.EVENT_READ)
            self.log("ssh tarpit listening")
            return
        config = os.path.join(self.mdir, "sshd_config")
        self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdin=subprocess.DEVNULL)
        self.log(f"sshd started, pid {self.sshd.pid}")

    def restart_ssh(self) -> None:
        if self.sshd is not None:
            self.stop_child(self.sshd, signal.SIGTERM, 5.0)
            self.sshd = None
        if not self.listeners:
            self.start_ssh()

    def start_engine(self) -> None:
        if not self.vm.get("engine"):
            return
        args = list(self.vm["engine_args"])
        if self.engine_fallback:
            args += ["--bridge=none", "--iptables=false"]
        env = dict(os.environ)
        env.update(e.split("=", 1) for e in self.vm.get("engine_env", []) if "=" in e)
        # dockerd finds containerd, runc and iptables on PATH
        env["PATH"] = env.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
        self.dockerd = subprocess.Popen([DOCKERD, *args], stdin=subprocess.DEVNULL, env=env)
        self.dockerd_started = time.monotonic()
        self.log(
            f"dockerd started, pid {self.dockerd.pid}"
            + (" (no bridge)" if self.engine_fallback else "")
        )

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if self.sshd is not None and pid == self.sshd.pid:
                self.sshd = None
                self.log(f"sshd exited ({code})")
            elif self.dockerd is not None and pid == self.dockerd.pid:
                self.dockerd = None
                self.log(f"dockerd exited ({code})")
                self.on_engine_exit()

    def on_engine_exit(self) -> None:
        if self.stopping:
            return
        # Bridge networking needs iptables in the namespace; without it, run bare.
        if not self.engine_fallback and time.monotonic() - self.dockerd_started < 30:
            self.engine_fallback = True
            self.start_engine()
        else:  # tells a create waiting for the engine to stop waiting
            write_atomic(os.path.join(self.mdir, "engine.failed"), b"", 0o644)

    def stop_child(self, proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
        """Signal a child and reap it, escalating to SIGKILL after `timeout`."""
        os.kill(proc.pid, sig)  # an unreaped child: its pid cannot have been reused
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.waitpid(proc.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            if time.monotonic() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.02)

    def shutdown(self) -> None:
        """A clean power-off: dockerd first (it stops its containers), then the rest."""
        self.log("shutting down")
        self.stopping = True
        if self.dockerd is not None:
            self.stop_child(self.dockerd, signal.SIGTERM, 15.0)
        if self.sshd is not None:
            self.stop_child(self.sshd, signal.SIGTERM, 2.0)

        def live_descendants() -> list[int]:
            self.reap()  # as subreaper, every orphan of the VM is ours to reap
            table = process_table()
            return sorted(p for p in descendants({os.getpid()}, table) if table[p][1] != "Z")

        kill_until_gone(live_descendants, 10)


def vm_init_main(mdir: str) -> int:
    import ctypes
    import selectors  # noqa: F401  (imported before /tmp and /run are covered)

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    init = VmInit(mdir)
    if init.vm["mode"] == "netns":
        private_mounts(mdir)
        socket.sethostname(os.path.basename(os.path.normpath(mdir)))
    return init.run()


# --- commands: create ----------------------------------------------------------------------------


def driver_flag_kind(driver: str) -> Callable[[str], Flag | None]:
    def lookup(name: str) -> Flag | None:
        if driver == "none":
            return Flag("string", "url") if name == "url" else None
        if name.startswith(driver + "-") and len(name) > len(driver) + 1:
            return Flag("auto", name)
        return None

    return lookup


def camel(option: str) -> str:
    return "".join(word[:1].upper() + word[1:] for word in option.split("-") if word)


def new_host(store: Store, name: str, driver: str, opts: dict[str, Any]) -> dict[str, Any]:
    """config.json as docker-machine writes it before the machine exists."""
    mdir = store.machine_dir(name)
    base = {
        "IPAddress": "",
        "MachineName": name,
        "SSHUser": "",
        "SSHPort": 0,
        "SSHKeyPath": "",
        "StorePath": store.root,
        "SwarmMaster": driver != "none" and bool(opts.get("swarm-master")),
        "SwarmHost": "" if driver == "none" else opts.get("swarm-host", "tcp://0.0.0.0:3376"),
        "SwarmDiscovery": "" if driver == "none" else opts.get("swarm-discovery", ""),
    }
    for option, values in opts.items():
        if option.startswith(driver + "-"):
            base[camel(option[len(driver) + 1 :])] = values[0] if len(values) == 1 else values
    return {
        "ConfigVersion": CONFIG_VERSION,
        "Driver": base,
        "DriverName": driver,
        "HostOptions": {
            "Driver": "",
            "Memory": 0,
            "Disk": 0,
            "EngineOptions": {
                "ArbitraryFlags": opts.get("engine-opt", []),
                "Dns": None,
                "GraphDir": "",
                "Env": opts.get("engine-env", []),
                "Ipv6": False,
                "InsecureRegistry": opts.get("engine-insecure-registry", []),
                "Labels": opts.get("engine-label", []),
                "LogLevel": "",
                "StorageDriver": opts.get("engine-storage-driver", ""),
                "SelinuxEnabled": False,
                "TlsVerify": True,
                "RegistryMirror": opts.get("engine-registry-mirror", []),
                "InstallURL": opts.get("engine-install-url", "https://get.docker.com"),
            },
            "SwarmOptions": {
                "IsSwarm": bool(opts.get("swarm")),
                "Address": opts.get("swarm-addr", ""),
                "Discovery": opts.get("swarm-discovery", ""),
                "Agent": False,
                "Master": bool(opts.get("swarm-master")),
                "Host": opts.get("swarm-host", "tcp://0.0.0.0:3376"),
                "Image": opts.get("swarm-image", "swarm:latest"),
                "Strategy": opts.get("swarm-strategy", "spread"),
                "Heartbeat": 0,
                "Overcommit": 0,
                "ArbitraryFlags": opts.get("swarm-opt", []),
                "ArbitraryJoinFlags": opts.get("swarm-join-opt", []),
                "Env": None,
                "IsExperimental": bool(opts.get("swarm-experimental")),
            },
            "AuthOptions": {
                "CertDir": store.certs,
                "CaCertPath": store.cert("ca.pem"),
                "CaPrivateKeyPath": store.cert("ca-key.pem"),
                "CaCertRemotePath": "",
                "ServerCertPath": os.path.join(mdir, "server.pem"),
                "ServerKeyPath": os.path.join(mdir, "server-key.pem"),
                "ClientKeyPath": store.cert("key.pem"),
                "ServerCertRemotePath": "",
                "ServerKeyRemotePath": "",
                "ClientCertPath": store.cert("cert.pem"),
                "ServerCertSANs": opts.get("tls-san", []),
                "StorePath": mdir,
            },
        },
        "Name": name,
    }


def cmd_create(store: Store, args: list[str]) -> int:
    driver = os.environ.get("MACHINE_DRIVER") or "virtualbox"
    for i, arg in enumerate(args):  # like flagHackLookup: the driver decides which flags exist
        key, _, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and key in ("d", "driver"):
            driver = value or (args[i + 1] if i + 1 < len(args) else driver)
            break
    values, positional = parse_flags(args, CREATE_FLAGS, driver_flag_kind(driver))
    opts = {k: v for k, v in values.items() if k != "driver"}
    if not positional:
        raise MachineError("Error: No machine name specified")
    if len(positional) > 1:
        raise MachineError(
            f"Invalid command line. Found extra arguments [{' '.join(positional[1:])}]"
        )
    name = positional[0]
    if not NAME_RE.match(name):
        raise MachineError(
            "Error creating machine: Invalid hostname specified. "
            "Allowed hostname chars are: 0-9a-zA-Z . -"
        )
    if machine_exists(store, name):
        raise MachineError(f"Docker machine {go_quote(name)} already exists")
    host = new_host(store, name, driver, opts)
    if driver == "none":
        url = str(opts.get("url") or "")
        if not url:
            raise MachineError(
                "Error setting machine configuration from flags provided: "
                "--url option is required when no driver is selected"
            )
        host["Driver"]["IPAddress"] = re.sub(r"^[a-z]+://", "", url).split("/")[0]
        host["Driver"]["URL"] = url
    os.makedirs(store.root, exist_ok=True)
    signer = bootstrap_certs(store)
    try:
        info("Running pre-create checks...")
        os.makedirs(store.machine_dir(name), mode=0o700, exist_ok=True)
        save_host(store, host)  # before the machine exists, as upstream does
        if driver != "none":
            update_vm(store, name, phase="creating")
        if take_fault(store, "create_hang"):
            while True:
                time.sleep(3600)
        info("Creating machine...")
        create_faults(store, name, host, signer)
        if driver != "none":
            create_vm(store, name, host, signer)
    finally:
        signer.discard()
    info(
        "To see how to connect your Docker Client to the Docker Engine running on this virtual "
        f"machine, run: docker-machine env {name}"
    )
    return 0


def create_faults(store: Store, name: str, host: dict[str, Any], signer: Signer) -> None:
    """The injected cloud failures of Driver.Create."""
    prefix = "Error creating machine: Error in driver during machine creation: "
    if take_fault(store, "create_rate_limit"):
        mark_error(store, name, host)
        raise MachineError(
            f"{prefix}RequestLimitExceeded: Request limit exceeded.\n"
            f"\tstatus code: 503, request id: {request_id()}"
        )
    fault = take_fault(store, "create_fail")
    if not fault:
        return
    message = prefix + str(fault.get("message") or CREATE_CLOUD_ERROR)
    leave = fault.get("leave", "error")
    if leave == "none":
        shutil.rmtree(store.machine_dir(name), ignore_errors=True)
    elif leave == "vm" and host["DriverName"] != "none":
        with contextlib.suppress(MachineError):
            create_vm(store, name, host, signer, quiet=True)
        mark_error(store, name, host)
    else:
        mark_error(store, name, host)
    raise MachineError(message)


def mark_error(store: Store, name: str, host: dict[str, Any]) -> None:
    if host["DriverName"] != "none" and os.path.isdir(store.machine_dir(name)):
        update_vm(store, name, phase="error")


def create_vm(
    store: Store, name: str, host: dict[str, Any], signer: Signer, quiet: bool = False
) -> None:
    """Driver.Create and provisioning for a simulated VM."""
    say = (lambda _message: None) if quiet else info
    delay = float(settings(store).get("create_delay", 0) or 0)
    if delay > 0:
        time.sleep(delay)  # a slow cloud
    mdir = store.machine_dir(name)
    mode = vm_mode(store)
    tarpit = bool(take_fault(store, "ssh_never_ready"))
    vm: dict[str, Any] = {"phase": "creating", "mode": mode, "ssh": "tarpit" if tarpit else "sshd"}
    if mode == "netns":
        index = allocate_netns(store, name)
        vm.update(index=index, ip=vm_addresses(index)[1], port=22)
        say(f"({name}) Creating VM {netns_name(index)} at {vm['ip']}...")
    else:
        vm.update(ip="127.0.0.1", port=free_port())
        say(f"({name}) Creating VM at 127.0.0.1:{vm['port']}...")
    ssh_keygen(os.path.join(mdir, "id_rsa"), f"docker-machine {name}")
    ssh_keygen(os.path.join(mdir, "ssh_host_ed25519_key"), f"host {name}")
    listen = "0.0.0.0:22" if mode == "netns" else f"127.0.0.1:{vm['port']}"
    write_sshd_config(mdir, listen)
    driver = host["Driver"]
    driver.update(IPAddress=vm["ip"], SSHKeyPath=os.path.join(mdir, "id_rsa"), SSHPort=vm["port"])
    # sshd not running as root lets only its own user in
    driver["SSHUser"] = "" if mode == "netns" else pwd.getpwuid(os.getuid()).pw_name
    save_host(store, host)
    engine = host["HostOptions"]["EngineOptions"]
    vm["engine"] = engine_wanted(store, mode)
    if vm["engine"]:
        vm["engine_args"] = engine_args(mdir, vm["index"], engine)
        vm["engine_env"] = engine.get("Env") or []
    if mode == "netns":
        for path, _ in PRIVATE_DIRS:
            os.makedirs(path, exist_ok=True)  # mount points of the VM's private dirs
    sans = host["HostOptions"]["AuthOptions"]["ServerCertSANs"] or []
    provision_certs(store, name, signer, vm["ip"], sans)
    update_vm(store, name, **vm)
    say("Waiting for machine to be running, this may take a few minutes...")
    try:
        boot_vm(store, name, read_vm(store, name))
    except VmBootError as exc:
        destroy_vm(store, name)
        update_vm(store, name, phase="error")
        raise MachineError(f"Error creating machine: {exc}") from None
    update_vm(store, name, phase="created")
    for line in (
        "Detecting operating system of created instance...",
        "Waiting for SSH to be available...",
        "Detecting the provisioner...",
        "Provisioning with debian...",
        "Copying certs to the local machine directory...",
        "Copying certs to the remote machine...",
        "Setting Docker configuration on the remote daemon...",
        "Checking connection to Docker...",
    ):
        say(line)
    if quiet:
        return
    address = f"{vm['ip']}:{ENGINE_PORT}"
    if vm["engine"]:
        try:
            engine_check(store, host, address)
        except MachineError as exc:
            raise MachineError(
                f"Error creating machine: Error checking the host: {exc.message}"
            ) from None
    elif problem := verify_offline(store, name):
        raise MachineError(
            "Error creating machine: Error checking the host: " + cert_check_error(address, problem)
        )
    say("Docker is up and running!")


# --- commands: state, ip, url, inspect, config, env ----------------------------------------------


def machine_state(store: Store, name: str, host: dict[str, Any]) -> str:
    if host.get("DriverName") == "none":
        return "Running"
    if init_pid(store, name) is not None:
        return "Running"
    return "Stopped" if read_vm(store, name).get("phase") == "created" else "Error"


def machine_url(store: Store, name: str, host: dict[str, Any]) -> str:
    """Driver.GetURL: tcp://IP:2376 while running, else 'Host is not running'."""
    driver = host["Driver"]
    if host.get("DriverName") == "none":
        return str(driver.get("URL", ""))
    if machine_state(store, name, host) != "Running":
        raise MachineError("Host is not running")
    ip = driver.get("IPAddress", "")
    return f"tcp://{ip}:{ENGINE_PORT}" if ip else ""


def target_name(store: Store, positional: list[str]) -> str:
    if len(positional) > 1:
        raise MachineError("Error: Expected one machine name as an argument")
    if positional:
        return positional[0]
    if machine_exists(store, "default"):
        return "default"
    raise MachineError('Error: No machine name(s) specified and no "default" machine exists')


def cmd_status(store: Store, args: list[str]) -> int:
    _, positional = parse_flags(args, {})
    name = target_name(store, positional)
    info(machine_state(store, name, load_host(store, name)))
    return 0


def cmd_url(store: Store, args: list[str]) -> int:
    _, positional = parse_flags(args, {})
    name = target_name(store, positional)
    info(machine_url(store, name, load_host(store, name)))
    return 0


def cmd_ip(store: Store, args: list[str]) -> int:
    _, positional = parse_flags(args, {})
    names = positional or [target_name(store, [])]
    hosts = [(n, load_host(store, n)) for n in names]
    errors = []
    for _name, host in hosts:
        ip = host["Driver"].get("IPAddress", "")
        if ip:
            info(ip)
        else:
            errors.append("Error getting IP address: IP address is not set")
    if errors:
        raise MachineError("\n".join(errors))
    return 0


def cmd_inspect(store: Store, args: list[str]) -> int:
    values, positional = parse_flags(args, flag_table({"format, f": "string"}))
    name = target_name(store, positional)
    host = load_host(store, name)
    if not values.get("format"):
        info(go_json(host, indent=4))
        return 0

    def to_json(indent: int | None) -> Callable[[Any], str]:
        return lambda v: go_json(None if v is NO_VALUE else v, indent=indent, sort_keys=True)

    funcs = {"json": to_json(None), "prettyjson": to_json(4)}
    try:
        template = GoTemplate(values["format"], funcs)
    except TemplateError as exc:
        raise MachineError(f"Template parsing error: {exc}\n") from None
    try:
        text = template.execute(host)
    except TemplateError as exc:
        raise MachineError(str(exc)) from None
    sys.stdout.write(text + "\n")
    return 0


def connection(store: Store, name: str, host: dict[str, Any]) -> str:
    """check.DefaultConnChecker.Check: the URL, once its certificates verify."""
    url = machine_url(store, name, host)
    engine_check(store, host, re.sub(r"^[a-z]+://", "", url).split("/")[0])
    return url


def cmd_config(store: Store, args: list[str]) -> int:
    global _out
    _out = sys.stderr
    _, positional = parse_flags(args, flag_table({"swarm": "bool"}))
    name = target_name(store, positional)
    host = load_host(store, name)
    try:
        url = connection(store, name, host)
    except MachineError as exc:
        raise MachineError(f"Error running connection boilerplate: {exc.message}") from None
    mdir = store.machine_dir(name)
    ca, cert, key = (go_quote(os.path.join(mdir, f)) for f in ("ca.pem", "cert.pem", "key.pem"))
    sys.stdout.write(f"--tlsverify\n--tlscacert={ca}\n--tlscert={cert}\n--tlskey={key}\n-H={url}\n")
    return 0


ENV_SHELLS = {  # shell: (prefix, delimiter, suffix, usage-hint format, comment)
    "fish": ("set -gx ", ' "', '";\n', "eval ({})", "#"),
    "powershell": ("$Env:", ' = "', '"\n', "& {} | Invoke-Expression", "#"),
    "cmd": ("SET ", "=", "\n", "\t@FOR /f \"tokens=*\" %i IN ('{}') DO @%i", "REM"),
    "emacs": ('(setenv "', '" "', '")\n',
              '(with-temp-buffer (shell-command "{}" (current-buffer)) (eval-buffer))', ";;"),
    "": ("export ", '="', '"\n', "eval $({})", "#"),
}  # fmt: skip


def cmd_env(store: Store, args: list[str], argv: list[str]) -> int:
    global _out
    _out = sys.stderr
    spec = {"swarm": "bool", "shell": "string", "unset, u": "bool", "no-proxy": "bool"}
    values, positional = parse_flags(args, flag_table(spec))
    if values.get("unset"):
        raise MachineError("Error: --unset is not supported by the docker-machine double")
    if len(positional) > 1:
        raise MachineError("Error: Expected one machine name as an argument")
    name = target_name(store, positional)
    host = load_host(store, name)
    try:
        url = connection(store, name, host)
    except MachineError as exc:
        raise MachineError(f"Error checking TLS connection: {exc.message}") from None
    shell = values.get("shell") or ""
    if not shell:
        if not os.environ.get("SHELL"):
            sys.stdout.write(
                "The default lines below are for a sh/bash shell, you can specify the shell "
                "you're using, with the --shell flag.\n\n"
            )
            raise MachineError("Error: Unknown shell")
        shell = os.path.basename(os.environ["SHELL"])
    prefix, delim, suffix, hint, comment = ENV_SHELLS.get(shell, ENV_SHELLS[""])
    variables = [
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_HOST", url),
        ("DOCKER_CERT_PATH", store.machine_dir(name)),
        ("DOCKER_MACHINE_NAME", name),
    ]
    if values.get("no-proxy"):  # add the machine's IP to the no_proxy list, once
        var = "no_proxy" if os.environ.get("no_proxy") else "NO_PROXY"
        hosts = [h for h in os.environ.get(var, "").split(",") if h]
        ip = host["Driver"].get("IPAddress", "")
        variables.append((var, ",".join(hosts if ip in hosts else [*hosts, ip])))
    text = "".join(f"{prefix}{k}{delim}{v}{suffix}" for k, v in variables)
    command_line = " ".join(["docker-machine", *argv])
    text += f"{comment} Run this command to configure your shell: \n"
    text += f"{comment} {hint.format(command_line)}\n"
    sys.stdout.write(text)
    return 0


# --- commands: ls --------------------------------------------------------------------------------

LS_DEFAULT = (
    "table {{ .Name }}\t{{ .Active }}\t{{ .DriverName}}\t{{ .State }}\t{{ .URL }}\t{{ .Swarm }}"
    "\t{{ .DockerVersion }}\t{{ .Error}}"
)
LS_HEADERS = {
    "Name": "NAME",
    "Active": "ACTIVE",
    "ActiveHost": "ACTIVE_HOST",
    "ActiveSwarm": "ACTIVE_SWARM",
    "DriverName": "DRIVER",
    "State": "STATE",
    "URL": "URL",
    "SwarmOptions": "SWARM_OPTIONS",
    "Swarm": "SWARM",
    "EngineOptions": "ENGINE_OPTIONS",
    "Error": "ERRORS",
    "DockerVersion": "DOCKER",
    "ResponseTime": "RESPONSE",
}


def host_list_item(store: Store, name: str, host: dict[str, Any]) -> GoStruct:
    started = time.monotonic()
    state, url, version, error = "", "", "Unknown", ""
    try:
        url = machine_url(store, name, host)
        state = "Running" if url else machine_state(store, name, host)
    except MachineError:
        state = machine_state(store, name, host)  # "Host is not running" is not shown as an error
    if url:
        auth = host["HostOptions"]["AuthOptions"]
        address = re.sub(r"^[a-z]+://", "", url).split("/")[0]
        request = f"https://{address}/v1.15/version"
        try:
            status, body = engine_get(
                address,
                "/v1.15/version",
                auth["CaCertPath"],
                auth["ClientCertPath"],
                auth["ClientKeyPath"],
                20,
            )
            if status != 200:
                raise EngineError(f"Error response from daemon: {body.decode(errors='replace')}")
            version = "v" + json.loads(body)["Version"]
        except EngineError as exc:
            version, error = "Unknown", f'Unable to query docker version: Get "{request}": {exc}'
        except (ValueError, KeyError):
            version, error = "Unknown", "Unable to query docker version: unexpected answer"
    active = state == "Running" and url == os.environ.get("DOCKER_HOST")
    options = host.get("HostOptions") or {}
    return GoStruct(
        "commands.HostListItem",
        {
            "Name": name,
            "Active": "*" if active else "-",
            "ActiveHost": active,
            "ActiveSwarm": False,
            "DriverName": host.get("DriverName", ""),
            "State": state,
            "URL": url,
            "SwarmOptions": options.get("SwarmOptions"),
            "Swarm": "",
            "EngineOptions": options.get("EngineOptions"),
            "Error": error,
            "DockerVersion": version,
            "ResponseTime": go_duration(time.monotonic() - started),
        },
    )


def matches_filters(
    store: Store, name: str, host: dict[str, Any], filters: dict[str, list[str]]
) -> bool:
    """ls --filter: values of one key are alternatives, different keys must all match."""
    driver = host.get("DriverName", "").lower()
    if filters["driver"] and driver not in [d.lower() for d in filters["driver"]]:
        return False
    if filters["state"]:
        state = machine_state(store, name, host).lower()
        if state not in [s.lower() for s in filters["state"]]:
            return False
    if filters["name"] and not any(re.search(n, name) for n in filters["name"]):
        return False
    if filters["label"]:
        labels = {}
        for label in host["HostOptions"]["EngineOptions"].get("Labels") or []:
            key, _, value = label.partition("=")
            labels[key] = value.lower()
        wanted = [label.partition("=") for label in filters["label"]]
        if not any(labels.get(key) == value.lower() for key, _, value in wanted):
            return False
    return True


def parse_filters(raw: list[str]) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {
        "swarm": [],
        "driver": [],
        "state": [],
        "name": [],
        "label": [],
    }
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep:
            raise MachineError("Unsupported filter syntax.")
        if key.lower() not in filters:
            raise MachineError(f"Unsupported filter key '{key.lower()}'")
        filters[key.lower()].append(value)
    for pattern in filters["name"]:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise MachineError(f"error parsing regexp: {exc}") from None
    return filters


def cmd_ls(store: Store, args: list[str]) -> int:
    spec = {"quiet, q": "bool", "filter": "slice", "timeout, t": "int", "format, f": "string"}
    values, _ = parse_flags(args, flag_table(spec))
    filters = parse_filters(values.get("filter", []))
    names = machine_names(store.root)
    hosts, broken = [], {}
    for name in names:
        try:
            hosts.append((name, load_host(store, name)))
        except MachineError as exc:
            broken[name] = exc.message
    if any(filters.values()):
        hosts = [(n, h) for n, h in hosts if matches_filters(store, n, h, filters)]
    if values.get("quiet"):
        for name, _ in hosts:
            info(name)
        return 0
    text = values.get("format") or LS_DEFAULT
    table = text.startswith("table")
    if table:
        text = text[len("table") :]
    text = text.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    try:
        template = GoTemplate(text + "\n", {})
    except TemplateError as exc:
        raise MachineError(str(exc)) from None
    items = list_items(store, hosts, float(values.get("timeout", 10)))
    for name, message in broken.items():
        error = message.replace("\n", " ")
        items.append(plain_item(name, DriverName="not found", State="Error", Error=error))
    items.sort(key=lambda item: natural_key(item.fields["Name"].lower()))
    out, failure = [template.execute(LS_HEADERS)] if table else [], None
    for item in items:
        try:
            out.append(template.execute(item))
        except TemplateError as exc:
            failure = str(exc)
            break
    text = "".join(out)
    sys.stdout.write(tabwrite(text) if table else text)
    if failure:
        raise MachineError(failure)
    return 0


def plain_item(name: str, **fields: str) -> GoStruct:
    """A listing row for a host that could not be asked (broken, or too slow)."""
    values: dict[str, Any] = {field: "" for field in LS_HEADERS}
    values.update(Name=name, ActiveHost=False, ActiveSwarm=False, **fields)
    return GoStruct("commands.HostListItem", values)


def list_items(
    store: Store, hosts: list[tuple[str, dict[str, Any]]], timeout: float
) -> list[GoStruct]:
    """Query every host at once; a host slower than `timeout` is listed as Timeout."""
    import threading

    results: dict[str, GoStruct] = {}

    def query(name: str, host: dict[str, Any]) -> None:
        results[name] = host_list_item(store, name, host)

    threads = [threading.Thread(target=query, args=h, daemon=True) for h in hosts]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    items = []
    for name, host in hosts:
        driver, waited = host.get("DriverName", ""), go_duration(timeout)
        timed_out = plain_item(name, DriverName=driver, State="Timeout", ResponseTime=waited)
        items.append(results.get(name) or timed_out)
    return items


# --- commands: rm, ssh, stop, kill, start, restart -----------------------------------------------


def confirm(question: str) -> bool:
    sys.stdout.write(f"{question} (y/n): ")
    sys.stdout.flush()
    words = sys.stdin.readline().split()  # fmt.Scanln: exactly one word on the line
    return len(words) == 1 and words[0].lower().startswith("y")


def cmd_rm(store: Store, args: list[str]) -> int:
    values, names = parse_flags(args, flag_table({"force, f": "bool", "y": "bool"}))
    if not names:
        raise MachineError("Error: Expected to get one or more machine names as arguments")
    force, yes = bool(values.get("force")), bool(values.get("y"))
    info(f"About to remove {', '.join(names)}")
    info("WARNING: This action will delete both local reference and remote instance.")
    if not (yes or force) and not confirm("Are you sure?"):
        return 0
    errors = []

    def collect(message: str) -> None:
        if force:
            print(message, file=sys.stderr, flush=True)
        errors.append(message)

    for name in names:
        try:
            remove_remote(store, name, force)
            removed_remote = True
        except MachineError as exc:
            collect(f"Error removing host {go_quote(name)}: {exc.message}")
            removed_remote = False
        if removed_remote or force:
            if machine_exists(store, name):
                if not removed_remote:
                    destroy_vm(store, name)  # the cloud may keep it; nothing stays on this host
                shutil.rmtree(store.machine_dir(name), ignore_errors=True)
                info(f"Successfully removed {name}")
            else:
                collect(f'Can\'t remove "{name}"')
    if errors and not force:
        raise MachineError("\n".join(errors))
    return 0


def remove_remote(store: Store, name: str, force: bool) -> None:
    """Driver.Remove: the cloud call, which the rm_fail fault makes fail."""
    load_host(store, name)
    fault = take_fault(store, "rm_fail")
    if fault:
        message = str(fault.get("message") or RM_CLOUD_ERROR)
        if force:  # the entry goes; the cloud may still run (and bill) the VM
            with open(store.path("orphans.log"), "a", encoding="utf-8") as f:
                f.write(f"{name}\n")
        raise MachineError(f"{message}\n\tstatus code: 500, request id: {request_id()}")
    destroy_vm(store, name)


def ssh_args(store: Store, name: str, host: dict[str, Any]) -> list[str]:
    """libmachine's external SSH client command line."""
    driver = host["Driver"]
    if host.get("DriverName") == "none":  # nothing to log in to: ssh prints its usage
        user, address, port, key = "", "", 0, ""
    else:  # empty SSHUser means root, 0 means port 22, no key path means the machine's
        user = driver.get("SSHUser") or "root"
        address = driver.get("IPAddress", "")
        port = driver.get("SSHPort") or 22
        key = driver.get("SSHKeyPath") or os.path.join(store.machine_dir(name), "id_rsa")
    args = ["ssh", "-F", "/dev/null"]
    for option in (
        "ConnectionAttempts=3",
        "ConnectTimeout=10",
        "ControlMaster=no",
        "ControlPath=none",
        "LogLevel=quiet",
        "PasswordAuthentication=no",
        "ServerAliveInterval=60",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
    ):
        args += ["-o", option]
    args.append(f"{user}@{address}")
    if key:
        args += ["-o", "IdentitiesOnly=yes", "-i", key]
    return [*args, "-p", str(port)]


def cmd_ssh(store: Store, args: list[str]) -> int:
    if not args:
        raise MachineError("Error: Expected one machine name as an argument")
    name, command = args[0], args[1:]
    host = load_host(store, name)
    if machine_state(store, name, host) != "Running":
        raise MachineError(f"Error: Cannot run SSH command: Host {go_quote(name)} is not running")
    returncode = subprocess.run([*ssh_args(store, name, host), *command], check=False).returncode
    if returncode > 0:
        raise MachineError(f"exit status {returncode}")
    if returncode < 0:  # as Go's exec.ExitError words it
        sig = signal.Signals(-returncode)
        words = {signal.SIGKILL: "killed", signal.SIGTERM: "terminated", signal.SIGINT: "interrupt"}
        raise MachineError(f"signal: {words.get(sig, sig.name)}")
    return 0


def power_action(store: Store, args: list[str], action: str) -> int:
    """start, stop, kill and restart, for one or more machines (runAction)."""
    _, positional = parse_flags(args, {})
    names = positional or [target_name(store, [])]
    hosts = [(n, load_host(store, n)) for n in names]
    actions = {"start": vm_start, "stop": vm_stop, "kill": vm_kill, "restart": vm_restart}
    errors = []
    for name, host in hosts:
        try:
            actions[action](store, name, host)
        except MachineError as exc:
            errors.append(exc.message)
    if errors:
        raise MachineError("\n".join(errors))
    if action in ("start", "restart"):
        info(
            f"{action.capitalize()}ed machines may have new IP addresses. You may need to re-run "
            "the `docker-machine env` command."
        )
    return 0


def no_driver(host: dict[str, Any], verb: str) -> None:
    if host.get("DriverName") == "none":
        raise MachineError(f"hosts without a driver cannot be {verb}")


def power_on(store: Store, name: str) -> None:
    vm = read_vm(store, name)
    if vm.get("phase") == "error" or "ip" not in vm:
        raise MachineError(f"Error starting {go_quote(name)}: the instance does not exist")
    kill_until_gone(lambda: machine_pids(store, name))  # strays, e.g. sshd of a killed init
    try:
        boot_vm(store, name, vm)
    except VmBootError as exc:
        kill_until_gone(lambda: machine_pids(store, name))
        raise MachineError(str(exc)) from None
    update_vm(store, name, phase="created")


def power_off(store: Store, name: str) -> None:
    """A clean shutdown: the init stops dockerd (and its containers), then everything else."""
    pid = init_pid(store, name)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while init_pid(store, name) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    kill_until_gone(lambda: machine_pids(store, name))


def vm_start(store: Store, name: str, host: dict[str, Any]) -> None:
    info(f"Starting {go_quote(name)}...")
    if machine_state(store, name, host) == "Running":
        raise MachineError(f"Machine {go_quote(name)} is already running.")
    power_on(store, name)
    info(f"Machine {go_quote(name)} was started.")
    info("Waiting for SSH to be available...")
    info("Detecting the provisioner...")


def vm_stop(store: Store, name: str, host: dict[str, Any]) -> None:
    info(f"Stopping {go_quote(name)}...")
    if machine_state(store, name, host) == "Stopped":
        raise MachineError(f"Machine {go_quote(name)} is already stopped.")
    no_driver(host, "stopped")
    power_off(store, name)
    info(f"Machine {go_quote(name)} was stopped.")


def vm_kill(store: Store, name: str, host: dict[str, Any]) -> None:
    info(f"Killing {go_quote(name)}...")
    if machine_state(store, name, host) == "Stopped":
        raise MachineError(f"Machine {go_quote(name)} is already stopped.")
    no_driver(host, "killed")
    kill_until_gone(lambda: machine_pids(store, name))
    info(f"Machine {go_quote(name)} was killed.")


def vm_restart(store: Store, name: str, host: dict[str, Any]) -> None:
    info(f"Restarting {go_quote(name)}...")
    no_driver(host, "restarted")
    if machine_state(store, name, host) == "Running":
        power_off(store, name)
    power_on(store, name)
    info("Waiting for SSH to be available...")
    info("Detecting the provisioner...")


# --- main ----------------------------------------------------------------------------------------

UNIMPLEMENTED = {"active", "mount", "provision", "regenerate-certs", "scp", "upgrade", "help"}


def main(argv: list[str]) -> int:
    global _out
    _out = sys.stdout
    try:
        return run(argv)
    except MachineError as exc:
        print(exc.message, file=sys.stderr, flush=True)
        return exc.code
    except BrokenPipeError:
        return 1


def run(argv: list[str]) -> int:
    if argv[:1] == ["_vm-init"]:
        return vm_init_main(argv[1])
    values, rest = parse_flags(argv, GLOBAL_FLAGS, interspersed=False)
    if values.get("version") or rest[:1] == ["version"]:
        info(VERSION)
        return 0
    root = (
        values.get("storage-path") or os.environ.get("MACHINE_STORAGE_PATH") or "~/.docker/machine"
    )
    store = Store(root)
    if rest[:1] == ["_teardown"]:  # not docker-machine's: clean up after a demo or a crash
        teardown_all(store.root)
        return 0
    log_call(store, argv)
    if not rest or values.get("help"):
        info("Usage: docker-machine [OPTIONS] COMMAND [arg...]")
        return 0
    command, args = rest[0], rest[1:]
    handlers: dict[str, Callable[[Store, list[str]], int]] = {
        "create": cmd_create,
        "rm": cmd_rm,
        "inspect": cmd_inspect,
        "ip": cmd_ip,
        "url": cmd_url,
        "status": cmd_status,
        "config": cmd_config,
        "env": lambda s, a: cmd_env(s, a, argv),
        "ls": cmd_ls,
        "ssh": cmd_ssh,
        "start": lambda s, a: power_action(s, a, "start"),
        "stop": lambda s, a: power_action(s, a, "stop"),
        "kill": lambda s, a: power_action(s, a, "kill"),
        "restart": lambda s, a: power_action(s, a, "restart"),
    }
    if command in handlers:
        return handlers[command](store, args)
    if command in UNIMPLEMENTED:
        raise MachineError(f"docker-machine double: {go_quote(command)} is not implemented")
    raise MachineError(
        f"docker-machine: '{command}' is not a docker-machine command. See 'docker-machine --help'."
    )


# --- helpers for tests ---------------------------------------------------------------------------


def machine_names(storage: str | Store) -> list[str]:
    store = storage if isinstance(storage, Store) else Store(storage)
    try:
        return sorted(
            e
            for e in os.listdir(store.machines)
            if not e.startswith(".") and os.path.isdir(store.machine_dir(e))
        )
    except FileNotFoundError:
        return []


def vm_pids(storage: str, name: str) -> list[int]:
    """Every live process of the machine's VM."""
    return machine_pids(Store(storage), name)


def kill_vm(storage: str, name: str) -> None:
    """The VM dies: all its processes are killed and its network link removed; the entry stays."""
    store = Store(storage)
    kill_until_gone(lambda: machine_pids(store, name))
    for index in claimed_indexes(store, name):
        ip_cmd("link", "del", f"dmdh{index}", check=False)


def _sshd_pid(store: Store, name: str) -> int | None:
    mdir = store.machine_dir(name)
    try:
        with open(os.path.join(mdir, "sshd.pid"), encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if vm_markers(mdir)["sshd"].search(cmdline(pid)) else None


def kill_sshd(storage: str, name: str) -> None:
    """Only the VM's SSH server dies: its listener and every session it serves."""
    store = Store(storage)

    def find() -> list[int]:
        pid = _sshd_pid(store, name)
        if pid is None:
            return []
        table = process_table()
        return sorted(
            p for p in {pid} | descendants({pid}, table) if table.get(p, (0, "Z"))[1] != "Z"
        )

    kill_until_gone(find)


def rotate_host_key(storage: str, name: str) -> None:
    """Give the VM a new SSH host key; its sshd restarts on the same address."""
    store = Store(storage)
    mdir = store.machine_dir(name)
    key = os.path.join(mdir, "ssh_host_ed25519_key")
    ssh_keygen(key + ".new", f"host {name}")
    os.replace(key + ".new.pub", key + ".pub")
    os.replace(key + ".new", key)
    old, pid = _sshd_pid(store, name), init_pid(store, name)
    if pid is None:
        return
    os.kill(pid, signal.SIGHUP)
    vm = read_vm(store, name)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        new = _sshd_pid(store, name)
        if new is not None and new != old:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((vm["ip"], vm["port"]), 1) as s,
            ):
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-"):
                    return
        time.sleep(0.02)
    raise RuntimeError(f"sshd of {name} did not come back after the host key changed")


def _names_in_processes(store: Store) -> set[str]:
    machines = re.escape(store.machines.encode())
    pattern = re.compile(machines + rb"/([^/\0 ]+)(?:/sshd_config[\0 ]|/docker/|\0)")
    names = set()
    for pid in process_table():
        for match in pattern.finditer(cmdline(pid)):
            names.add(match.group(1).decode(errors="replace"))
    return names


def _claimed_names(store: Store) -> set[str]:
    return {c.get("name", "") for c in read_claims().values() if c.get("storage") == store.root}


def teardown_all(storage: str) -> None:
    """Remove every machine of the storage: processes, namespaces, links, entries. Idempotent."""
    store = Store(storage)
    names = set(machine_names(store)) | _names_in_processes(store) | _claimed_names(store)
    for name in sorted(n for n in names if n):
        destroy_vm(store, name)
        if NAME_RE.match(name):
            shutil.rmtree(store.machine_dir(name), ignore_errors=True)
    for index in claimed_indexes(store):  # claims whose machine name is unusable
        release_netns(index)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(store.root):
            if entry.startswith(".dmd-"):
                shutil.rmtree(os.path.join(store.root, entry), ignore_errors=True)


def leftover_namespaces(storage: str) -> list[str]:
    """This storage's namespaces (or host-side links) that still exist."""
    store = Store(storage)
    left = []
    for index in claimed_indexes(store):
        if os.path.exists(os.path.join(NETNS_DIR, netns_name(index))):
            left.append(netns_name(index))
        if os.path.exists(f"/sys/class/net/dmdh{index}"):
            left.append(f"dmdh{index}")
    return left


def storage_pids(storage: str) -> list[int]:
    """Live processes of any machine of this storage, found by command line and namespace."""
    store = Store(storage)
    table = process_table()
    names = _names_in_processes(store) | set(machine_names(store)) | _claimed_names(store)
    return sorted({p for n in names if n for p in machine_pids(store, n, table)})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
