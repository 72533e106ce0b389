"""The services' health after they start, as the docker executor checks it.

Each running service is checked on ``HEALTHCHECK_TCP_PORT`` (from its environment),
else its image's EXPOSEd TCP ports (the lowest 20), from the VM, where container
addresses are reachable; any one open port passes. A service that never opens one,
or that has exited (with or without ports), gets the docker executor's warning on
the job log's stderr with up to 64 KiB of its logs. A running service with no port
to check is taken as up, as there. Nothing here fails the job: it is only a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from driver.engine import ContainerInfo
from driver.image.programs import WAIT_PORTS

Say = Callable[[str], None]
InVm = Callable[[str, float, bool], str]

MAX_HEALTH_PORTS = 20
HEALTHCHECK_PORT_VARIABLE = "HEALTHCHECK_TCP_PORT"
SERVICE_LOG_BYTES = 64 * 1024


class HealthAPI(Protocol):
    """What the check asks of the engine's client (driver/engine.py's ContainerAPI)."""

    def inspect_container(self, container: str) -> ContainerInfo: ...
    def logs(self, container: str, *, stdout: bool, stderr: bool) -> bytes: ...


@dataclass(frozen=True)
class Target:
    index: int
    ip: str
    ports: list[int]


def targets(api: HealthAPI, network: str, services: list[list[str]]) -> list[Target]:
    """What to wait for: each running service with an address and a port to check."""
    found = []
    for index, (name, _) in enumerate(services):
        info = api.inspect_container(name)
        if not info["State"].get("Running"):
            continue  # warned about after the wait, with its exit code
        address = (info["NetworkSettings"]["Networks"].get(network) or {}).get("IPAddress")
        ports = _ports(info)
        if ports and address:
            found.append(Target(index, address, ports[:MAX_HEALTH_PORTS]))
    return found


def _ports(info: ContainerInfo) -> list[int]:
    env = dict(e.split("=", 1) for e in info["Config"].get("Env") or [] if "=" in e)
    if env.get(HEALTHCHECK_PORT_VARIABLE, "").isdigit():
        return [int(env[HEALTHCHECK_PORT_VARIABLE])]
    exposed = info["Config"].get("ExposedPorts") or {}
    return sorted(int(p.split("/")[0]) for p in exposed if p.endswith("/tcp"))


def wait(
    api: HealthAPI,
    network: str,
    services: list[list[str]],
    timeout: float,
    in_vm: InVm,
    say: Say,
    notice: Say,
) -> None:
    """Wait for the services' ports, then warn about each that is not up.

    ``timeout``: ``wait_for_services_timeout`` (0: 30 s; negative: no wait, no check).
    ``notice`` writes a block to the job log's stderr.
    """
    if not services or timeout < 0:
        return
    timeout = timeout or 30.0
    wanted = targets(api, network, services)
    up: set[int] = set()
    if wanted:
        say(f"Waiting for services to be up and running (timeout {timeout:g} seconds)...")
        entries = " ".join(f"{t.index}:{t.ip}:{','.join(map(str, t.ports))}" for t in wanted)
        output = in_vm(f"bash -c '{WAIT_PORTS}' gmd-wait {int(timeout)} {entries}", timeout, False)
        up = {int(line.split()[1]) for line in output.splitlines() if line.startswith("up ")}
    checked = {t.index: t for t in wanted}
    for index, (name, _) in enumerate(services):
        if index in up:
            continue
        error = health_error(api, name, checked.get(index), timeout)
        if error:
            notice(warning(name, error, service_logs(api, name)))


def health_error(api: HealthAPI, name: str, target: Target | None, timeout: float) -> str:
    """Why the service is not up; "" if it is running with nothing to check."""
    state = api.inspect_container(name)["State"]
    if not state.get("Running"):
        why = f"service {name} exited with code {state.get('ExitCode')}"
        if state.get("OOMKilled"):
            why += " (out of memory)"
        if state.get("Error"):
            why += f": {state['Error']}"
        return why
    if target is None:
        return ""
    ports = ", ".join(map(str, target.ports))
    return f'service "{name}" timeout: no answer on {target.ip} port(s) {ports} within {timeout:g}s'


def warning(name: str, error: str, logs: str) -> str:
    """The docker executor's words for a service that did not start properly."""
    return (
        f"\n*** WARNING: Service {name} probably didn't start properly.\n\n"
        f"Health check error:\n{error.strip()}\n\n"
        f"Service container logs:\n{logs.rstrip()}\n\n*********\n"
    )


def service_logs(api: HealthAPI, name: str, limit: int = SERVICE_LOG_BYTES) -> str:
    """The last ``limit`` bytes of the service's stdout and stderr."""
    try:
        data: bytes = api.logs(name, stdout=True, stderr=True)
    except Exception as e:  # a warning must not fail the job: say why there are none
        return f"(its logs could not be read: {e})"
    return data[-limit:].decode("utf-8", "replace")
