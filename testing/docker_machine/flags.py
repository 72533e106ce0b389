"""Command-line flags, as Go's flag package and urfave/cli parse them, and the help
urfave/cli prints with a refused command line."""

from __future__ import annotations

from typing import Any, NamedTuple

from .common import MachineError
from .gotext import tabwrite


class UsageError(MachineError):
    """A command line urfave/cli refuses: main prints "Incorrect Usage." and the command's
    help on stdout, the parse error (log.Error) on stderr, and exits 1."""

    def __init__(self, message: str, help_text: str = "") -> None:
        super().__init__(message)
        self.help = help_text


class HelpFlag(NamedTuple):
    """A flag as its help line shows it (cli.Flag's String())."""

    names: str  # "format, f"
    kind: str  # "bool", "string", "slice" or "int"
    usage: str
    default: str | int = ""
    env: str = ""

    def line(self) -> str:
        aliases = [n.strip() for n in self.names.split(",")]
        shown = ", ".join(("-" if len(a) == 1 else "--") + a for a in aliases)
        if self.kind == "slice":
            first = "--" + aliases[0]
            shown += f" [{first} option {first} option]"
        elif self.kind != "bool" and self.default != "":
            shown += f' "{self.default}"'
        env = f" [${self.env}]" if self.env else ""
        return f"{shown}\t{self.usage}{env}"


def command_help(name: str, usage: str, flags: list[HelpFlag], description: str = "") -> str:
    """docker-machine's CommandHelpTemplate, laid out by text/tabwriter."""
    text = f"Usage: docker-machine {name}{' [OPTIONS]' if flags else ''} [arg...]\n\n{usage}"
    if description:
        text += f"\n\nDescription:\n   {description}"
    if flags:
        text += "\n\nOptions:\n   " + "".join(f"\n   {f.line()}" for f in flags)
    return tabwrite(text + "\n", minwidth=0, padding=1)


def help_table(flags: list[HelpFlag]) -> dict[str, Flag]:
    return flag_table({f.names: f.kind for f in flags})


class Flag(NamedTuple):
    kind: str  # "bool", "string", "slice" or "int"
    dest: str


def parse_command(
    args: list[str],
    command: str,
    usage: str,
    flags: list[HelpFlag] | None = None,
    description: str = "",
) -> tuple[dict[str, Any], list[str]]:
    """A command's flags and arguments; a refused flag brings the command's help along."""
    try:
        return parse_flags(args, help_table(flags or []))
    except UsageError as exc:
        exc.help = command_help(command, usage, flags or [], description)
        raise


def parse_flags(
    args: list[str], flags: dict[str, Flag], interspersed: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """Return (values, positional). Flags take one or two dashes, `-f v` or `-f=v`."""

    def refuse(message: str) -> UsageError:
        return UsageError(message)

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
            raise refuse(f"bad flag syntax: {arg}")
        name, has_value, value = arg.lstrip("-").partition("=")
        flag = flags.get(name)
        if flag is None:
            raise refuse(f"flag provided but not defined: -{name}")
        if flag.kind == "bool":
            parsed: Any = value.lower() in ("1", "t", "true") if has_value else True
        else:
            if not has_value:
                if i + 1 >= len(args):
                    raise refuse(f"flag needs an argument: -{name}")
                value, i = args[i + 1], i + 1
            parsed = value
            if flag.kind == "int":
                try:
                    parsed = int(value)
                except ValueError:
                    raise refuse(
                        f'invalid value "{value}" for flag -{name}: '
                        f'strconv.ParseInt: parsing "{value}": invalid syntax'
                    ) from None
        if flag.kind == "slice":
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

CREATE_FLAGS = [
    HelpFlag(
        "driver, d", "string", "Driver to create machine with.", "virtualbox", "MACHINE_DRIVER"
    ),
    HelpFlag("engine-env", "slice", "Specify environment variables to set in the engine"),
    HelpFlag(
        "engine-insecure-registry",
        "slice",
        "Specify insecure registries to allow with the created engine",
    ),
    HelpFlag(
        "engine-install-url",
        "string",
        "Custom URL to use for engine installation",
        "https://get.docker.com",
        "MACHINE_DOCKER_INSTALL_URL",
    ),
    HelpFlag("engine-label", "slice", "Specify labels for the created engine"),
    HelpFlag(
        "engine-opt",
        "slice",
        "Specify arbitrary flags to include with the created engine in the form flag=value",
    ),
    HelpFlag("engine-registry-mirror", "slice", "Specify registry mirrors to use"),
    HelpFlag("engine-storage-driver", "string", "Specify a storage driver to use with the engine"),
    HelpFlag("swarm", "bool", "Configure Machine to join a Swarm cluster"),
    HelpFlag(
        "swarm-addr",
        "string",
        "addr to advertise for Swarm (default: detect and use the machine IP)",
    ),
    HelpFlag("swarm-discovery", "string", "Discovery service to use with Swarm"),
    HelpFlag("swarm-experimental", "bool", "Enable Swarm experimental features"),
    HelpFlag(
        "swarm-host", "string", "ip/socket to listen on for Swarm master", "tcp://0.0.0.0:3376"
    ),
    HelpFlag(
        "swarm-image",
        "string",
        "Specify Docker image to use for Swarm",
        "swarm:latest",
        "MACHINE_SWARM_IMAGE",
    ),
    HelpFlag("swarm-join-opt", "slice", "Define arbitrary flags for Swarm join"),
    HelpFlag("swarm-master", "bool", "Configure Machine to be a Swarm master"),
    HelpFlag("swarm-opt", "slice", "Define arbitrary flags for Swarm master"),
    HelpFlag(
        "swarm-strategy", "string", "Define a default scheduling strategy for Swarm", "spread"
    ),
    HelpFlag("tls-san", "slice", "Support extra SANs for TLS certs"),
]
