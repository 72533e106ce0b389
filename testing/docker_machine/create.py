"""`docker-machine create`: the flags, the entry it writes, and libmachine's Create."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

from . import drivers
from .certs import bootstrap_certs
from .common import CONFIG_VERSION, NAME_RE, MachineError, go_quote, info
from .faults import CREATE_CLOUD_ERROR, request_id, take_fault
from .flags import CREATE_FLAGS, HelpFlag, command_help, parse_command
from .machines import create_vm, mark_error
from .store import Store, machine_exists, remove_entry, save_host, settings, update_vm

FAIL_PAUSE = 2.0  # seconds a failed create waits before it exits
PRECHECK_ERROR = "Quota 'CPUS' exceeded. Limit: 24.0 in region europe-west1."
CREATE_USAGE = "Create a machine"
CREATE_DESCRIPTION = (
    "Run 'docker-machine create --driver name --help' to include the create flags for that "
    "driver in the help text."
)


def driver_name(args: list[str]) -> str:
    """flagHackLookup: the driver is known before the flags are parsed (it defines some)."""
    for i, arg in enumerate(args):
        key, _, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and key in ("d", "driver"):
            return value or (args[i + 1] if i + 1 < len(args) else "")
    return os.environ.get("MACHINE_DRIVER") or "virtualbox"


def create_flags(driver: drivers.Driver) -> list[HelpFlag]:
    """The shared create flags and the driver's, sorted by name as the help shows them."""
    own = [HelpFlag(f.name, f.kind, f.usage, f.default, f.env) for f in driver.flags]
    return sorted([*CREATE_FLAGS, *own], key=lambda f: f.names)


def new_host(
    store: Store, name: str, driver: drivers.Driver, opts: dict[str, Any]
) -> dict[str, Any]:
    """config.json as docker-machine writes it before the machine exists."""
    mdir = store.machine_dir(name)
    none = driver is drivers.NONE
    base = {
        "IPAddress": "",
        "MachineName": name,
        "SSHUser": "",
        "SSHPort": 0,
        "SSHKeyPath": "",
        "StorePath": store.root,
        "SwarmMaster": not none and bool(opts.get("swarm-master")),
        "SwarmHost": "" if none else opts.get("swarm-host", "tcp://0.0.0.0:3376"),
        "SwarmDiscovery": "" if none else opts.get("swarm-discovery", ""),
    }
    drivers.set_config_from_flags(driver, base, drivers.option_values(driver, opts))
    return {
        "ConfigVersion": CONFIG_VERSION,
        "Driver": base,
        "DriverName": driver.name,
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
    driver = drivers.lookup(driver_name(args))  # an unknown driver's plugin cannot start
    values, positional = parse_command(
        args, "create", CREATE_USAGE, create_flags(driver), CREATE_DESCRIPTION
    )
    opts = {k: v for k, v in values.items() if k != "driver"}
    if len(positional) > 1:
        raise MachineError(
            f"Invalid command line. Found extra arguments [{' '.join(positional[1:])}]"
        )
    if not positional:
        sys.stdout.write(
            command_help("create", CREATE_USAGE, create_flags(driver), CREATE_DESCRIPTION)
        )
        raise MachineError("Error: No machine name specified")
    name = positional[0]
    if not NAME_RE.match(name):
        raise MachineError(
            "Error creating machine: Invalid hostname specified. "
            "Allowed hostname chars are: 0-9a-zA-Z . -"
        )
    if machine_exists(store, name):
        raise MachineError(f"Docker machine {go_quote(name)} already exists")
    host = new_host(store, name, driver, opts)
    os.makedirs(store.root, exist_ok=True)
    try:
        libmachine_create(store, name, host, driver)
    except MachineError:
        # cmdCreateInner: "Wait for all the logs to reach the client", on every failure of
        # libmachine's Create (certificates, pre-create check, the driver, provisioning).
        time.sleep(float(settings(store).get("fail_pause", FAIL_PAUSE)))
        raise
    save_host(store, host)  # and cmdCreateInner's, once libmachine's Create succeeded
    info(
        "To see how to connect your Docker Client to the Docker Engine running on this virtual "
        f"machine, run: docker-machine env {name}"
    )
    return 0


def libmachine_create(
    store: Store, name: str, host: dict[str, Any], driver: drivers.Driver
) -> None:
    """libmachine's Client.Create: certificates, pre-create check, first save, the driver's
    Create, its save, and (for VMs) provisioning."""
    bootstrap_certs(store)
    info("Running pre-create checks...")
    fault = take_fault(store, "create_precheck_fail")
    if fault:
        raise drivers.precheck_error(str(fault.get("message") or PRECHECK_ERROR))
    drivers.pre_create_check(host)
    save_host(store, host)  # before the machine exists, as upstream does
    if driver.simulated:
        update_vm(store, name, phase="creating")
    if take_fault(store, "create_hang"):
        while True:
            time.sleep(3600)
    info("Creating machine...")
    create_faults(store, name, host)
    if driver.simulated:
        create_vm(store, name, host)  # saves once the VM has its address
    else:
        save_host(store, host)  # performCreate's save after Driver.Create


def create_faults(store: Store, name: str, host: dict[str, Any]) -> None:
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
        remove_entry(store, name)
    elif leave == "vm" and drivers.DRIVERS[host["DriverName"]].simulated:
        with contextlib.suppress(MachineError):
            create_vm(store, name, host, quiet=True)
        mark_error(store, name, host)
    else:
        mark_error(store, name, host)
    raise MachineError(message)
