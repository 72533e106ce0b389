"""Counters and histograms shared by every driver process on the host.

Each metric is declared once below (name, type, help, label names); call sites
pass the declaration, so a misspelt name is an import error and wrong labels a
ValueError, never a silently new series.

Each stage is its own short-lived process, so the numbers live in one JSON
file under the state dir, updated under a lock; the pool service serves them
to Prometheus (with live gauges of machines by state) at every scrape.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, TypeGuard, TypeVar

from driver.errors import DriverError
from driver.state import StateDir, machine_counts, write_private

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric as Family

PREFIX = "gitlab_machine_driver"
BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
FILE = "metrics.json"
LOCK_TIMEOUT = 5.0


@dataclass(frozen=True)
class Metric:
    """One metric: ``name`` as Prometheus shows it after the ``gitlab_machine_driver_`` prefix."""

    name: str
    help: str
    labels: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        return f"{PREFIX}_{self.name}"

    def key(self, labels: Mapping[str, str] | None) -> str:
        """The series' key in the metrics file; the labels must be exactly the declared ones."""
        given = dict(labels or {})
        if sorted(given) != sorted(self.labels):
            raise ValueError(
                f"metric {self.name} takes the labels {list(self.labels)}, not {sorted(given)}"
            )
        # The same key format since the first release: old metrics files keep counting.
        return json.dumps([self.name, sorted(given.items())])


@dataclass(frozen=True)
class Counter(Metric):
    def __post_init__(self) -> None:
        if not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name} must end in _total (Prometheus convention)")


@dataclass(frozen=True)
class Histogram(Metric):
    """Seconds, in ``BUCKETS``."""


@dataclass(frozen=True)
class Gauge(Metric):
    """Computed live at each scrape, never stored."""


MACHINE_CREATIONS = Counter(
    "machine_creations_total", "Machines created, by who made them (job or pool)", ("by",)
)
MACHINE_CREATION_FAILURES = Counter(
    "machine_creation_failures_total",
    "Failed docker-machine create attempts, by kind (permanent, rate_limited, transient)",
    ("kind",),
)
MACHINE_REMOVALS = Counter(
    "machine_removals_total",
    "Machines removed, by result (clean or maybe_orphaned)",
    ("result",),
)
POOL_CLAIMS = Counter(
    "pool_claims_total",
    "Prepares that asked the pool for a machine, by result (hit or miss)",
    ("result",),
)
POOL_IMAGE_PULL_FAILURES = Counter(
    "pool_image_pull_failures_total",
    "Images the pool could not pull into a machine (left for the job to pull)",
)
POOL_FAILURE_BACKOFFS = Counter(
    "pool_failure_backoffs_total",
    "Times identical failures in a row held the pool's next create back, by reason",
    ("reason",),
)
# Why a pool machine was discarded: the step its making failed in (the pool service),
# ssh_lost (its health check, or a restart, found it gone), interrupted (a restart cut
# its create short), dead_at_claim (a job's prepare found it dead); the stopped tier's:
# stop_failed (the service's stop), start_failed and host_key_changed (a job's start
# of it; another host key answered: refused). docs/metrics.md.
DISCARD_REASONS = (
    "create_failed",
    "ssh_not_ready",
    "tools_missing",
    "engine_not_ready",
    "engine_lost",
    "preparation_failed",
    "ssh_lost",
    "interrupted",
    "dead_at_claim",
    "stop_failed",
    "start_failed",
    "host_key_changed",
)
POOL_DISCARDED = Counter(
    "pool_discarded_machines_total",
    f"Pool machines discarded as unusable, by reason ({', '.join(DISCARD_REASONS)})",
    ("reason",),
)
POOL_STOPPED_STARTS = Counter(
    "pool_stopped_starts_total",
    "Stopped pool machines jobs started, by result (started, failed, host_key_changed)",
    ("result",),
)
MACHINE_CREATE_SECONDS = Histogram(
    "machine_create_seconds", "Duration of successful docker-machine creates"
)
MACHINE_REMOVE_SECONDS = Histogram("machine_remove_seconds", "Duration of machine removals")
PREPARE_SECONDS = Histogram(
    "prepare_seconds",
    "Duration of prepare, by source of the machine (pool, stopped or create)",
    ("source",),
)
POOL_STOPPED_START_SECONDS = Histogram(
    "pool_stopped_start_seconds",
    "Duration of a stopped pool machine's start, until SSH (and the engine) answered",
)
MACHINES = Gauge(
    "machines",
    "Machines this driver owns on the host, by state",
    ("state",),
)

COUNTERS: tuple[Counter, ...] = (
    MACHINE_CREATIONS,
    MACHINE_CREATION_FAILURES,
    MACHINE_REMOVALS,
    POOL_CLAIMS,
    POOL_IMAGE_PULL_FAILURES,
    POOL_FAILURE_BACKOFFS,
    POOL_DISCARDED,
    POOL_STOPPED_STARTS,
)
HISTOGRAMS: tuple[Histogram, ...] = (
    MACHINE_CREATE_SECONDS,
    MACHINE_REMOVE_SECONDS,
    PREPARE_SECONDS,
    POOL_STOPPED_START_SECONDS,
)


class HistogramData(TypedDict):
    """One histogram series in the file: cumulative bucket counts, as Prometheus has them."""

    buckets: list[float]
    sum: float
    count: float


class Data(TypedDict):
    """The metrics file: series key (``Counter.key``/``Histogram.key``) -> its figures."""

    counters: dict[str, float]
    histograms: dict[str, HistogramData]


V = TypeVar("V")


def count(state_dir: Path, metric: Counter, labels: Mapping[str, str] | None = None) -> None:
    """Add one to ``metric``'s series with ``labels``."""
    key = metric.key(labels)

    def change(data: Data) -> None:
        counters = data["counters"]
        counters[key] = counters.get(key, 0) + 1

    _update(state_dir, change)


def observe(
    state_dir: Path,
    metric: Histogram,
    seconds: float,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Record one duration in ``metric``'s series with ``labels``."""
    key = metric.key(labels)

    def change(data: Data) -> None:
        hist = data["histograms"].setdefault(
            key, {"buckets": [0] * len(BUCKETS), "sum": 0.0, "count": 0}
        )
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                hist["buckets"][i] += 1  # cumulative, as Prometheus counts buckets
        hist["sum"] += seconds
        hist["count"] += 1

    _update(state_dir, change)


def _update(state_dir: Path, change: Callable[[Data], None]) -> None:
    try:
        # The state dir's own lock (driver/state.py), as for every other file in it; a
        # missing state dir is its owner's to make, never ours (the count is dropped).
        (state_dir / "locks").mkdir(exist_ok=True, mode=0o700)
        with StateDir(state_dir).lock("metrics").held(LOCK_TIMEOUT, "the metrics file"):
            data = load(state_dir)
            change(data)
            # Not synced: a power cut may cost the last counts, never a job the time.
            write_private(state_dir / FILE, json.dumps(data), durable=False)
    except (OSError, DriverError, ValueError, TypeError):
        # Metrics never fail their caller: a full disk (DriverError from the write), a
        # held lock or a damaged file drops this one count, never a job or a removal.
        pass


def load(state_dir: Path) -> Data:
    """The metrics file's series; whatever in it is unreadable or malformed is left out."""
    try:
        raw = json.loads((state_dir / FILE).read_text())
    except (OSError, ValueError):
        raw = {}
    if not isinstance(raw, dict):
        raw = {}
    counters = raw.get("counters")
    histograms = raw.get("histograms")
    return {
        "counters": {
            k: v
            for k, v in (counters.items() if isinstance(counters, dict) else ())
            if _is_number(v)
        },
        "histograms": {
            k: v
            for k, v in (histograms.items() if isinstance(histograms, dict) else ())
            if _is_histogram(v)
        },
    }


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_histogram(value: object) -> TypeGuard[HistogramData]:
    return (
        isinstance(value, dict)
        and isinstance(value.get("buckets"), list)
        and len(value["buckets"]) == len(BUCKETS)
        and all(_is_number(b) for b in value["buckets"])
        and _is_number(value.get("sum"))
        and _is_number(value.get("count"))
    )


def _series(section: Mapping[str, V]) -> dict[str, list[tuple[dict[str, str], V]]]:
    """Metric name -> [(labels, value)] from one section of the file."""
    grouped: dict[str, list[tuple[dict[str, str], V]]] = {}
    for key, value in section.items():
        try:
            name, pairs = json.loads(key)
            labels = {str(k): str(v) for k, v in pairs}
        except (ValueError, TypeError):
            continue
        grouped.setdefault(str(name), []).append((labels, value))
    return grouped


def families(state_dir: Path, machines: Mapping[str, int]) -> Iterator[Family]:
    """Prometheus metric families: every declared metric, from the file and live gauges.

    Series in the file that no declaration matches (a metric since removed, or
    labels since changed) are left out.
    """
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    gauge = GaugeMetricFamily(MACHINES.full_name, MACHINES.help, labels=MACHINES.labels)
    for state, value in sorted(machines.items()):
        gauge.add_metric([state], value)
    yield gauge
    data = load(state_dir)
    counters = _series(data["counters"])
    for counter in COUNTERS:
        family = CounterMetricFamily(counter.full_name, counter.help, labels=counter.labels)
        for labels, figure in counters.get(counter.name, []):
            if sorted(labels) == sorted(counter.labels):
                family.add_metric([labels[k] for k in counter.labels], figure)
        yield family
    histograms = _series(data["histograms"])
    for histogram in HISTOGRAMS:
        hfamily = HistogramMetricFamily(
            histogram.full_name, histogram.help, labels=histogram.labels
        )
        for labels, hist in histograms.get(histogram.name, []):
            if sorted(labels) != sorted(histogram.labels):
                continue
            buckets = [(str(b), c) for b, c in zip(BUCKETS, hist["buckets"], strict=True)]
            buckets.append(("+Inf", hist["count"]))
            hfamily.add_metric(
                [labels[k] for k in histogram.labels], buckets, sum_value=hist["sum"]
            )
        yield hfamily


def registry(state_dir: Path) -> CollectorRegistry:
    """A registry that reads the state dir's figures and live machine counts at each
    collection: for the pool service's /metrics and the textfile alike."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

    class FromStateDir(Collector):
        def collect(self) -> Iterator[Family]:
            return families(state_dir, machine_counts(StateDir(state_dir)))

    collected = CollectorRegistry()
    collected.register(FromStateDir())
    return collected


def mean_create_seconds(state_dir: Path) -> tuple[float, ...]:
    """The mean create time the metrics have seen on this host, if any (the demand
    policy's first guess, until the pool has measured creates of its own)."""
    histogram = load(state_dir)["histograms"].get(MACHINE_CREATE_SECONDS.key(None))
    if not histogram or not histogram["count"]:
        return ()
    return (float(histogram["sum"]) / float(histogram["count"]),)
