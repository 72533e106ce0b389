"""The VM's own Docker engine: the one client of it, over docker-machine's TLS.

Prepare (its readiness check; image mode's containers), the pool (its readiness
check, its pre-pulls, its pre-started helper) all reach the engine through
``connect`` here, at one fixed API version. The docker SDK is imported only when
a client is made (``warm_up`` starts that import early, in the background): the
`run` stage never pays for it. The SDK is untyped: ``connect`` hands out a
``ContainerAPI``, the Protocol of what the package asks of ``docker.APIClient``
(with TypedDicts for the inspect records it reads); its users take the smaller ones.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, TypedDict, TypeVar

from driver.errors import DriverError
from driver.state import Address

# API 1.41 (Docker 20.10) for `platform` on create; newer engines speak it too. Fixed:
# "auto" would cost a round trip and a second TLS handshake on every prepare.
API = "1.41"


@dataclass(frozen=True)
class Engine:
    """Where the VM's engine answers, and the TLS files docker-machine made for it."""

    url: str
    ca_cert: str
    client_cert: str
    client_key: str

    @classmethod
    def of(cls, address: Address) -> Engine:
        """The engine at ``address`` (its ``engine_url`` asked of docker-machine already)."""
        return cls(address.engine_url, address.ca_cert, address.client_cert, address.client_key)


class ImageAPI(Protocol):
    """What pulling asks of the SDK's ``docker.APIClient``."""

    def inspect_image(self, image: str) -> Mapping[str, object]: ...
    def pull(self, repository: str, **options: object) -> Iterator[Mapping[str, object]]: ...


class EngineAPI(ImageAPI, Protocol):
    """What the package asks of ``docker.APIClient`` outside image mode's container
    start-up (which uses the whole client)."""

    def version(self) -> Mapping[str, object]: ...
    def close(self) -> None: ...


class ContainerState(TypedDict, total=False):
    Running: bool
    ExitCode: int
    OOMKilled: bool
    Error: str


class ContainerConfig(TypedDict, total=False):
    Image: str
    Cmd: list[str] | None
    Env: list[str] | None
    Labels: dict[str, str] | None
    ExposedPorts: dict[str, object] | None


class HostConfig(TypedDict, total=False):
    Binds: list[str] | None


class Endpoint(TypedDict, total=False):
    IPAddress: str


class NetworkSettings(TypedDict, total=False):
    Networks: dict[str, Endpoint | None]


class ContainerInfo(TypedDict, total=False):
    """The parts of ``docker inspect``'s record of a container the package reads."""

    Id: str
    Image: str
    State: ContainerState
    Config: ContainerConfig
    HostConfig: HostConfig
    NetworkSettings: NetworkSettings


class Socket(Protocol):
    """An attached container's stdin, as ``attach_socket`` hands it."""

    def sendall(self, data: bytes, /) -> None: ...
    def close(self) -> None: ...


class ContainerAPI(EngineAPI, Protocol):
    """All ``connect`` hands out: ``docker.APIClient`` as image mode starts a job's
    containers with it (driver/image/containers.py)."""

    def info(self) -> Mapping[str, object]: ...
    def import_image(
        self, *, src: str, repository: str, tag: str, changes: list[str]
    ) -> object: ...
    def inspect_container(self, container: str) -> ContainerInfo: ...
    def logs(self, container: str, *, stdout: bool, stderr: bool) -> bytes: ...
    def create_volume(self, name: str, *, labels: Mapping[str, str]) -> object: ...
    def inspect_network(self, net_id: str) -> Mapping[str, object]: ...
    def create_network(self, name: str, **options: object) -> object: ...
    def create_host_config(self, **options: object) -> dict[str, object]: ...
    def create_endpoint_config(self, *, aliases: list[str] | None) -> dict[str, object]: ...
    def create_networking_config(
        self, endpoints: Mapping[str, dict[str, object]]
    ) -> dict[str, object]: ...
    def create_container(self, image: str, **options: object) -> Mapping[str, object]: ...
    def attach_socket(self, container: str, *, params: Mapping[str, int]) -> Socket: ...
    def start(self, container: str) -> None: ...
    def remove_container(self, container: str, *, force: bool) -> None: ...


def connect(
    engine: Engine,
    timeout: float,
    ready_timeout: float,
    progress: Callable[[str], None] | None = None,
) -> ContainerAPI:
    """One API client; waits up to ``ready_timeout`` for the engine to answer a ping
    with TLS verified, saying why it does not every ten seconds to ``progress``."""
    import docker
    from requests.exceptions import RequestException

    tls = docker.tls.TLSConfig(
        client_cert=(engine.client_cert, engine.client_key), ca_cert=engine.ca_cert, verify=True
    )
    api = docker.APIClient(base_url=engine.url, tls=tls, timeout=int(timeout), version=API)
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the machine's own CA
    # (psf/requests#3829), and would send the engine's traffic to HTTPS_PROXY: neither
    # belongs between the runner host and its VM.
    api.trust_env = False
    deadline = time.monotonic() + ready_timeout
    next_report = time.monotonic() + 10
    while True:
        try:
            api.ping()
            client: ContainerAPI = api  # the SDK is untyped: this is what the package uses
            return client
        except docker.errors.APIError as e:
            if "too new" in str(e) or e.status_code == 400:
                api.close()
                raise DriverError(
                    f"the VM's Docker engine does not speak API {API}: {first_line(e)}; "
                    "the driver needs Docker 20.10 or newer",
                    hint="provision VMs with a newer Docker ([machine] engine_install_url)",
                ) from None
            failure: Exception = e
        except (docker.errors.DockerException, RequestException, OSError) as e:
            failure = e
        now = time.monotonic()
        if now > deadline:
            api.close()
            raise DriverError(
                f"the VM's Docker engine at {engine.url} did not answer within "
                f"{ready_timeout:g}s: {first_line(failure)}",
                hint="check the machine's provisioning (docker-machine create output, "
                "engine options); jobs need the engine, so this machine is not used",
            )
        if progress is not None and now >= next_report:
            progress(f"Docker engine at {engine.url} not ready yet: {first_line(failure)}")
            next_report += 10
        time.sleep(min(0.5, max(0.0, deadline - now)))


def wait_ready(engine: Engine, *, timeout: float, progress: Callable[[str], None]) -> str:
    """Wait until the engine answers a ping with TLS verified; return its version."""
    api = connect(engine, max(1.0, min(10.0, timeout)), timeout, progress)
    try:
        return str(api.version().get("Version", "unknown"))
    finally:
        api.close()


def warm_up() -> None:
    """Import the docker SDK in the background (a third of a second, more on a busy host)
    while prepare claims or creates the machine; `connect` then finds it imported."""
    import threading

    def load() -> None:
        with contextlib.suppress(Exception):  # the real import, in connect, will say why
            import docker  # noqa: F401

    threading.Thread(target=load, name="docker-sdk-import", daemon=True).start()


T = TypeVar("T")


def together(*calls: Callable[[], T]) -> list[T]:
    """Run the calls at once (each mostly waits on the engine or ssh); their results in
    order, or the first failure in that order once all have ended."""
    import threading

    results: dict[int, T] = {}
    errors: list[BaseException | None] = [None] * len(calls)

    def run(index: int, call: Callable[[], T]) -> None:
        try:
            results[index] = call()
        except BaseException as e:  # handed to the caller below
            errors[index] = e

    threads = [
        threading.Thread(target=run, args=(i, call), daemon=True) for i, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # interruptible: a cancel's SIGTERM still raises in this thread
    for error in errors:
        if error is not None:
            raise error
    return [results[i] for i in range(len(calls))]


def first_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.splitlines()[0] if text else type(error).__name__
