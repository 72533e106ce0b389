"""The VM's own Docker engine, reached with the docker SDK over docker-machine's TLS."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from driver.errors import DriverError
from driver.state import Address

API_VERSION = "1.24"


def _client(address: Address, timeout: int) -> Any:
    import docker

    tls = docker.tls.TLSConfig(
        client_cert=(address.client_cert, address.client_key), ca_cert=address.ca_cert, verify=True
    )
    # An explicit API version: "auto" would query the engine before trust_env is off.
    # 1.24 is the oldest the SDK and every supported engine speak; enough for ping and pull.
    client = docker.DockerClient(
        base_url=address.engine_url, tls=tls, timeout=timeout, version=API_VERSION
    )
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the machine's own CA
    # (psf/requests#3829), and would send the engine's traffic to HTTPS_PROXY: neither
    # belongs between the runner host and its VM.
    client.api.trust_env = False
    return client


def pull(name: str, address: Address, images: list[str], auth: dict[str, str] | None) -> None:
    """Pull ``images`` into the machine's engine, so the job's first `docker run` does not."""
    from docker.errors import DockerException

    client = _client(address, timeout=600)
    try:
        for image in images:
            repository, _, tag = (
                image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
            )
            try:
                client.images.pull(repository, tag=tag or "latest", auth_config=auth)
            except DockerException as e:
                raise DriverError(
                    f"pulling {image} into {name} failed: {e}",
                    hint="check [pool] images and the registry credentials",
                ) from None
    finally:
        client.close()


def wait_ready(
    name: str,
    address: Address,
    *,
    timeout: float,
    progress: Callable[[str], None],
    interval: float = 1.0,
) -> str:
    """Wait until the engine answers a ping with TLS verified; return its version."""
    from docker.errors import DockerException  # heavy: only prepare pays for it
    from requests.exceptions import RequestException

    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + 10
    last_error = ""
    while time.monotonic() < deadline:
        try:
            client = _client(address, timeout=max(1, min(10, int(timeout))))
            try:
                client.ping()
                return str(client.version().get("Version", "unknown"))
            finally:
                client.close()
        except (DockerException, RequestException, OSError) as e:
            last_error = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        if time.monotonic() >= next_report:
            progress(f"Docker engine at {address.engine_url} not ready yet: {last_error}")
            next_report += 10
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    raise DriverError(
        f"the Docker engine of {name} at {address.engine_url} did not answer within "
        f"{timeout:g}s: {last_error}",
        hint="check the machine's provisioning (docker-machine create output, "
        "engine options); jobs need the engine, so this machine is not used",
    )
