"""Services' health: every service that is not up is warned about in the docker executor's
words, also those that exited and those with no port to check."""

from __future__ import annotations

from driver.engine import ContainerInfo
from driver.image import health

NETWORK = "gmd-1-network"


def container(
    running: bool, ports: list[str] | None = None, env: list[str] | None = None, code: int = 0
) -> ContainerInfo:
    return {
        "State": {"Running": running, "ExitCode": code, "Error": "", "OOMKilled": False},
        "Config": {"Env": env or [], "ExposedPorts": {p: {} for p in ports or []}},
        "NetworkSettings": {"Networks": {NETWORK: {"IPAddress": "172.18.0.5"}}},
    }


class FakeApi:
    def __init__(self, containers: dict[str, ContainerInfo], logs: bytes = b"") -> None:
        self.containers = containers
        self.log = logs

    def inspect_container(self, container: str) -> ContainerInfo:
        return self.containers[container]

    def logs(self, container: str, *, stdout: bool, stderr: bool) -> bytes:
        return self.log


def run(api: FakeApi, services: list[str], answer: str = "", timeout: float = 5) -> list[str]:
    notices: list[str] = []
    commands: list[str] = []

    def in_vm(command: str, timeout: float, check: bool) -> str:
        commands.append(command)
        return answer

    health.wait(api, NETWORK, [[s, s] for s in services], timeout, in_vm, print, notices.append)
    return notices


def test_an_exited_service_is_warned_about_with_its_exit_code_and_logs() -> None:
    api = FakeApi({"svc-0": container(False, ["5432/tcp"], code=1)}, b"Error: no password\n")
    [notice] = run(api, ["svc-0"])
    lines = notice.splitlines()
    assert "*** WARNING: Service svc-0 probably didn't start properly." in lines
    assert lines[lines.index("Health check error:") + 1] == "service svc-0 exited with code 1"
    assert lines[lines.index("Service container logs:") + 1] == "Error: no password"
    assert lines[-1] == "*********"


def test_an_exited_service_without_ports_is_warned_about_too() -> None:
    api = FakeApi({"svc-0": container(False, code=0)})
    assert len(run(api, ["svc-0"])) == 1


def test_a_running_service_with_no_port_to_check_is_silent() -> None:
    assert run(FakeApi({"svc-0": container(True)}), ["svc-0"]) == []


def test_a_service_whose_ports_never_answer_is_warned_about() -> None:
    api = FakeApi({"a": container(True, ["8080/tcp"]), "b": container(True, ["80/tcp"])})
    [notice] = run(api, ["a", "b"], answer="up 0\n")
    assert "Service b probably didn't start properly." in notice
    assert "no answer on 172.18.0.5 port(s) 80 within 5s" in notice


def test_logs_are_limited_to_their_last_64_kib() -> None:
    api = FakeApi({}, b"x" * 100_000 + b"END")
    text = health.service_logs(api, "svc")
    assert len(text) == health.SERVICE_LOG_BYTES and text.endswith("END")


def test_the_port_to_check_comes_from_healthcheck_tcp_port_first() -> None:
    api = FakeApi({"s": container(True, ["80/tcp"], env=["HEALTHCHECK_TCP_PORT=9999"])})
    assert health.targets(api, NETWORK, [["s", "s"]]) == [health.Target(0, "172.18.0.5", [9999])]


def test_a_negative_timeout_checks_nothing() -> None:
    assert run(FakeApi({"s": container(False)}), ["s"], timeout=-1) == []
