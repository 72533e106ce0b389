"""`docker-machine ls`: every entry loaded, filtered, queried at once, and printed through
a Go template (by default a tabwriter table)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any

from . import drivers
from .common import MachineError, info
from .engine import EngineError, engine_get
from .flags import HelpFlag, parse_command
from .gotext import GoStruct, GoTemplate, TemplateError, go_duration, natural_key, tabwrite
from .machines import machine_state, machine_url
from .store import Store, load_host, machine_names

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
    if drivers.missing(host):  # an errdriver: every call fails
        state, error = "Error", drivers.not_loadable(host.get("DriverName", ""))
    else:
        state, url, version, error = query(store, name, host)
    active = state == "Running" and url == os.environ.get("DOCKER_HOST")
    options = host.get("HostOptions") or {}
    return GoStruct(
        "commands.HostListItem",
        {
            "Name": name,
            "Active": "*" if active else "-",
            "ActiveHost": active,
            "ActiveSwarm": False,
            "DriverName": "not-found" if drivers.missing(host) else host.get("DriverName", ""),
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


def query(store: Store, name: str, host: dict[str, Any]) -> tuple[str, str, str, str]:
    """attemptGetHostState: (state, URL, engine version, error) of one host."""
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
    return state, url, version, error


def matches_filters(
    store: Store, name: str, host: dict[str, Any], filters: dict[str, list[str]]
) -> bool:
    """ls --filter: values of one key are alternatives, different keys must all match."""
    driver = host.get("DriverName", "").lower()
    if filters["driver"] and driver not in [d.lower() for d in filters["driver"]]:
        return False
    if filters["state"]:
        state = "error" if drivers.missing(host) else machine_state(store, name, host).lower()
        if state not in [s.lower() for s in filters["state"]]:
            return False
    # matchesName asks the driver for the machine's name: an errdriver says "", so an
    # entry whose driver plugin is missing silently drops out of a name filter.
    machine = "" if drivers.missing(host) else name
    if filters["name"] and not any(re.search(n, machine) for n in filters["name"]):
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


LS_FLAGS = [
    HelpFlag("filter", "slice", "Filter output based on conditions provided"),
    HelpFlag("format, f", "string", "Pretty-print machines using a Go template"),
    HelpFlag("quiet, q", "bool", "Enable quiet mode"),
    HelpFlag("timeout, t", "int", "Timeout in seconds, default to 10s", 10),
]


def cmd_ls(store: Store, args: list[str]) -> int:
    values, _ = parse_command(args, "ls", "List machines", LS_FLAGS)
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
        error = message.replace("\n", "")  # newHostListItemInError
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
