"""`docker-machine create`: the flags, the entry it writes, and libmachine's Create."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from typing import Any

from .certs import Signer, bootstrap_certs
from .common import CONFIG_VERSION, NAME_RE, MachineError, go_quote, info
from .faults import CREATE_CLOUD_ERROR, request_id, take_fault
from .flags import CREATE_FLAGS, Flag, parse_flags
from .machines import create_vm, mark_error
from .store import Store, machine_exists, remove_entry, save_host, update_vm


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
            create_vm(store, name, host, signer)  # saves once the VM has its address
        else:
            save_host(store, host)  # performCreate's save after Driver.Create
    finally:
        signer.discard()
    save_host(store, host)  # and cmdCreateInner's, once libmachine's Create succeeded
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
        remove_entry(store, name)
    elif leave == "vm" and host["DriverName"] != "none":
        with contextlib.suppress(MachineError):
            create_vm(store, name, host, signer, quiet=True)
        mark_error(store, name, host)
    else:
        mark_error(store, name, host)
    raise MachineError(message)
