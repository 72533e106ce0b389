"""Command-line flags, as Go's flag package and urfave/cli parse them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .common import MachineError


class UsageError(MachineError):
    """A command line urfave/cli refuses."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Incorrect Usage: {message}")


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
