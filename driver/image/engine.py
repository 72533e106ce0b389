"""The VM's Docker engine as image mode reaches it: one API client over docker-machine's TLS.

The docker SDK is imported only when a client is made (``warm_up`` starts that
import early, in the background): prepare is the only stage that needs it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from driver.errors import DriverError

# API 1.41 (Docker 20.10) for `platform` on create; newer engines speak it too.
API = "1.41"


@dataclass(frozen=True)
class Engine:
    """Where the VM's engine answers, and the TLS files docker-machine made for it."""

    url: str
    ca_cert: str
    client_cert: str
    client_key: str


def connect(engine: Engine, timeout: float, ready_timeout: float) -> Any:
    """One API client at a fixed API version (no version negotiation: a round trip and a
    second TLS handshake saved on every prepare); waits for the engine to answer."""
    import docker
    from requests.exceptions import RequestException

    tls = docker.tls.TLSConfig(
        client_cert=(engine.client_cert, engine.client_key), ca_cert=engine.ca_cert, verify=True
    )
    api = docker.APIClient(base_url=engine.url, tls=tls, timeout=int(timeout), version=API)
    # Neither a CA bundle nor a proxy from our environment belongs between us and the VM.
    api.trust_env = False
    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            api.ping()
            return api
        except docker.errors.APIError as e:
            api.close()
            if "too new" in str(e) or e.status_code == 400:
                raise DriverError(
                    f"the VM's Docker engine does not speak API {API}: {first_line(e)}; image "
                    "mode needs Docker 20.10 or newer",
                    hint="provision VMs with a newer Docker ([machine] engine_install_url)",
                ) from None
            failure: Exception = e
        except (docker.errors.DockerException, RequestException, OSError) as e:
            failure = e
        if time.monotonic() > deadline:
            api.close()
            raise DriverError(
                f"the VM's Docker engine at {engine.url} did not answer within "
                f"{ready_timeout:g}s: {first_line(failure)}",
                hint="image mode needs the engine docker-machine set up in the VM",
            )
        time.sleep(0.5)


def warm_up() -> None:
    """Import the docker SDK in the background (a third of a second, more on a busy host)
    while prepare claims or creates the machine; `connect` then finds it imported."""
    import threading

    def load() -> None:
        with contextlib.suppress(Exception):  # the real import, in connect, will say why
            import docker  # noqa: F401

    threading.Thread(target=load, name="docker-sdk-import", daemon=True).start()


def together(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at once (each mostly waits on the engine or ssh); their results in
    order, or the first failure in that order once all have ended."""
    import threading

    results: list[Any] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)

    def run(index: int, call: Callable[[], Any]) -> None:
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
    return results


def first_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.splitlines()[0] if text else type(error).__name__
