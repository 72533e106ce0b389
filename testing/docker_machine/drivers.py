"""The machine drivers the double knows, their create flags, and what they store.

`none` and `generic` behave as upstream's; `local` is the double's own: a simulated
VM (machines.py), as a cloud driver would make one. Any other name is a driver
whose plugin binary is missing: `create` refuses it at once, and an existing
entry naming it loads with upstream's errdriver (see `missing`).
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

from .common import ENGINE_PORT, MachineError, go_quote


class DriverFlag(NamedTuple):
    name: str
    kind: str  # "string" or "int"
    default: str | int
    usage: str
    env: str = ""


class Driver(NamedTuple):
    name: str
    flags: tuple[DriverFlag, ...]
    simulated: bool  # makes a VM of the double's


NONE = Driver(
    "none", (DriverFlag("url", "string", "", "URL of host when no driver is selected"),), False
)
GENERIC = Driver(
    "generic",
    (
        DriverFlag(
            "generic-engine-port", "int", ENGINE_PORT, "Docker engine port", "GENERIC_ENGINE_PORT"
        ),
        DriverFlag(
            "generic-ip-address", "string", "", "IP Address of machine", "GENERIC_IP_ADDRESS"
        ),
        DriverFlag(
            "generic-ssh-key",
            "string",
            "",
            "SSH private key path (if not provided, default SSH key will be used)",
            "GENERIC_SSH_KEY",
        ),
        DriverFlag("generic-ssh-port", "int", 22, "SSH port", "GENERIC_SSH_PORT"),
        DriverFlag("generic-ssh-user", "string", "root", "SSH user", "GENERIC_SSH_USER"),
    ),
    True,
)
LOCAL = Driver(
    "local",
    (
        DriverFlag(
            "local-engine-port",
            "int",
            ENGINE_PORT,
            "Port of the simulated VM's Docker engine",
            "LOCAL_ENGINE_PORT",
        ),
    ),
    True,
)
DRIVERS = {d.name: d for d in (NONE, GENERIC, LOCAL)}


def plugin_not_found(name: str) -> str:
    """localbinary.ErrPluginBinaryNotFound: what `create -d NAME` says of an unknown driver."""
    return (
        f'Driver "{name}" not found. Do you have the plugin binary '
        f'"docker-machine-driver-{name}" accessible in your PATH?'
    )


def not_loadable(name: str) -> str:
    """errdriver.ErrDriverNotLoadable: what every call says of an entry with a missing driver."""
    return f'Driver "{name}" not found. Do you have the plugin binary accessible in your PATH?'


def lookup(name: str) -> Driver:
    """The driver `create` asked for (libmachine starts its plugin before parsing flags)."""
    driver = DRIVERS.get(name)
    if driver is None:
        raise MachineError(plugin_not_found(name))
    return driver


def missing(host: dict[str, Any]) -> bool:
    """An entry whose driver plugin is missing (Client.Load gives it an errdriver)."""
    return str(host.get("DriverName", "")) not in DRIVERS


def require(host: dict[str, Any]) -> None:
    """Any call that needs the entry's driver: an errdriver answers every one with an error."""
    if missing(host):
        raise MachineError(not_loadable(str(host.get("DriverName", ""))))


def option_values(driver: Driver, values: dict[str, Any]) -> dict[str, Any]:
    """getDriverOpts: each flag's value, else its environment variable, else its default."""
    options: dict[str, Any] = {}
    for flag in driver.flags:
        if flag.name in values:
            options[flag.name] = values[flag.name]
        elif flag.env and os.environ.get(flag.env):
            text = os.environ[flag.env]
            options[flag.name] = int(text) if flag.kind == "int" and text.isdigit() else text
        else:
            options[flag.name] = flag.default
    return options


def set_config_from_flags(driver: Driver, base: dict[str, Any], options: dict[str, Any]) -> None:
    """Driver.SetConfigFromFlags: fill the driver's section of config.json."""
    prefix = "Error setting machine configuration from flags provided: "
    if driver is NONE:
        url = str(options["url"])
        if not url:
            raise MachineError(prefix + "--url option is required when no driver is selected")
        base["IPAddress"] = re.sub(r"^[a-z]+://", "", url).split("/")[0]
        base["URL"] = url
    elif driver is GENERIC:
        base.update(
            IPAddress=options["generic-ip-address"],
            SSHUser=options["generic-ssh-user"],
            SSHPort=options["generic-ssh-port"],
            EnginePort=options["generic-engine-port"],
            SSHKey=options["generic-ssh-key"],
        )
        if not base["IPAddress"]:
            raise MachineError(prefix + "generic driver requires the --generic-ip-address option")
    else:
        base["EnginePort"] = options["local-engine-port"]


def pre_create_check(host: dict[str, Any]) -> None:
    """Driver.PreCreateCheck (its failure is libmachine's ErrDuringPreCreate: exit 3)."""
    key = host["Driver"].get("SSHKey") or ""
    if host["DriverName"] == "generic" and key and not os.path.exists(key):
        raise precheck_error(f'SSH key does not exist: "{key}"')


def precheck_error(cause: str) -> MachineError:
    return MachineError(f"Error with pre-create check: {go_quote(cause)}", code=3)


def engine_port(host: dict[str, Any]) -> int:
    """Where the machine's engine listens: the driver's EnginePort, else 2376."""
    return int(host.get("Driver", {}).get("EnginePort") or ENGINE_PORT)
