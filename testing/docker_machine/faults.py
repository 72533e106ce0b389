"""Fault injection: <storage>/double.json, read at each invocation.

A fault is {"times": N, ...}: it fires for the next N uses, -1 for always
(times defaults to 1). The catalogue is in the package docstring.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .store import Store, locked, settings, write_atomic

RM_CLOUD_ERROR = "unable to terminate instance: InternalError: An internal error has occurred."
CREATE_CLOUD_ERROR = (
    "Error launching instance: InsufficientInstanceCapacity: We currently do not have "
    "sufficient capacity in the Availability Zone you requested."
)


def take_fault(store: Store, key: str) -> dict[str, Any] | None:
    """Consume one use of fault `key`; None when it is not armed."""
    if not os.path.exists(store.path("double.json")):
        return None
    with locked(store.path("double.lock")):
        data = settings(store)
        fault = data.get(key)
        if not isinstance(fault, dict):
            return None
        times = int(fault.get("times", 1))
        if times == 0:
            return None
        if times > 0:
            data[key] = {**fault, "times": times - 1}
            write_atomic(store.path("double.json"), json.dumps(data, indent=2).encode(), 0o644)
        return fault


def set_faults(storage: str, faults: dict[str, Any]) -> None:
    """Merge `faults` (and settings) into <storage>/double.json; a None value removes a key."""
    store = Store(storage)
    os.makedirs(store.root, exist_ok=True)
    with locked(store.path("double.lock")):
        data = settings(store)
        data.update(faults)
        data = {key: value for key, value in data.items() if value is not None}
        write_atomic(store.path("double.json"), json.dumps(data, indent=2).encode(), 0o644)


def request_id() -> str:
    """An AWS-style request id for cloud error messages."""
    import uuid

    return str(uuid.uuid4())
