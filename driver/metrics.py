"""Counters and histograms shared by every driver process on the host.

Each stage is its own short-lived process, so the numbers live in one JSON
file under the state dir, updated under a lock; the pool service serves them
to Prometheus (with live gauges of machines by state) at every scrape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from driver.state import write_private

PREFIX = "gitlab_machine_driver"
BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
HELP = {
    "machine_creations_total": "Machines created, by who made them (job or pool)",
    "machine_creation_failures_total": "Failed docker-machine create attempts, by kind",
    "machine_removals_total": "Machines removed, by result (clean or maybe_orphaned)",
    "pool_claims_total": "Prepares that asked the pool for a machine, by result (hit or miss)",
    "machine_create_seconds": "Duration of successful docker-machine creates",
    "machine_remove_seconds": "Duration of machine removals",
    "prepare_seconds": "Duration of prepare, by source of the machine (pool or create)",
}


def _key(name: str, labels: dict[str, str] | None) -> str:
    return json.dumps([name, sorted((labels or {}).items())])


def _update(state_dir: Path, change: Any) -> None:
    path = state_dir / "metrics.json"
    try:
        with FileLock(state_dir / "locks" / "metrics.lock", mode=0o600).acquire(timeout=5):
            data = load(state_dir)
            change(data)
            write_private(path, json.dumps(data))
    except (Timeout, OSError):
        pass  # metrics must never fail a job


def count(state_dir: Path, name: str, labels: dict[str, str] | None = None) -> None:
    def change(data: dict[str, Any]) -> None:
        counters = data.setdefault("counters", {})
        counters[_key(name, labels)] = counters.get(_key(name, labels), 0) + 1

    _update(state_dir, change)


def observe(
    state_dir: Path, name: str, seconds: float, labels: dict[str, str] | None = None
) -> None:
    def change(data: dict[str, Any]) -> None:
        hist = data.setdefault("histograms", {}).setdefault(
            _key(name, labels), {"buckets": [0] * len(BUCKETS), "sum": 0.0, "count": 0}
        )
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                hist["buckets"][i] += 1
        hist["sum"] += seconds
        hist["count"] += 1

    _update(state_dir, change)


def load(state_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((state_dir / "metrics.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def families(state_dir: Path, machines: dict[str, int]) -> Iterator[Any]:
    """Prometheus metric families: the file's counters and histograms, and live gauges."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    gauge = GaugeMetricFamily(
        f"{PREFIX}_machines", "Machines this driver owns on the host, by state", labels=["state"]
    )
    for state, value in sorted(machines.items()):
        gauge.add_metric([state], value)
    yield gauge
    data = load(state_dir)
    grouped: dict[str, list[tuple[dict[str, str], Any]]] = {}
    for section in ("counters", "histograms"):
        for key, value in data.get(section, {}).items():
            name, labels = json.loads(key)
            grouped.setdefault(name, []).append((dict(labels), value))
    for name, samples in sorted(grouped.items()):
        label_names = sorted({k for labels, _ in samples for k in labels})
        full = f"{PREFIX}_{name}"
        if name.endswith("_total"):
            family: Any = CounterMetricFamily(
                full.removesuffix("_total"), HELP.get(name, name), labels=label_names
            )
            for labels, value in samples:
                family.add_metric([labels.get(k, "") for k in label_names], value)
        else:
            family = HistogramMetricFamily(full, HELP.get(name, name), labels=label_names)
            for labels, hist in samples:
                buckets = [(str(b), c) for b, c in zip(BUCKETS, hist["buckets"], strict=True)]
                buckets.append(("+Inf", hist["count"]))
                family.add_metric(
                    [labels.get(k, "") for k in label_names], buckets, sum_value=hist["sum"]
                )
        yield family
