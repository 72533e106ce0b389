"""Traces: the jobs a replay feeds the pool, read from CSV or written to it.

A trace job arrives at some second of the week (a Monday 00:00 UTC) and runs
for some seconds; where it belongs to a pipeline, the pool service can learn
of it before it arrives (the lookahead), and the trace says when (`announced`)
and when it was predicted to arrive. A job that never arrives here (skipped,
canceled, or taken by another runner manager) is withdrawn at its `arrival`.

Two CSV shapes are read:

- this replay's own (`write_trace` writes it): arrival seconds, duration
  seconds, then optionally pipeline, stage, runs (1/0), usual seconds,
  announced seconds, predicted seconds, here (1/0), project;
- a GitLab jobs export (a header with `started_at`): one row per job as the
  jobs API returns it (see `read_gitlab_export`).
"""

from __future__ import annotations

import csv
import math
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

WEEK = 7 * 86400.0
WEEK_START = datetime(2026, 1, 5, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC
NEVER = math.nan  # an announcement time for a job nobody announces


class TraceError(ValueError):
    """A trace file that cannot be read, with the line that says why."""


@dataclass(frozen=True)
class TraceJob:
    arrival: float  # seconds from the start of the week (or when it was withdrawn)
    duration: float  # seconds the job runs
    create: float  # seconds its own create takes, if it misses
    pipeline: int = -1  # the pipeline it belongs to (-1: unknown), and its stage there
    stage: int = 0
    runs: bool = True  # False: never ran (skipped, canceled): announced, then withdrawn
    usual: float = math.nan  # what its past runs took (GitLab's history of it), if known
    # When the pool service learns it is coming (NEVER: not before it arrives); None:
    # derived from its pipeline's stages (`announce_by_stage`).
    announced: float | None = None
    predicted: float = math.nan  # when the service predicts it arrives, if it can tell
    here: bool = True  # False: another runner manager takes it (at `arrival`)
    project: int = 0  # the project its pipeline belongs to (what shapes are learned by)


@dataclass(frozen=True)
class Trace:
    jobs: list[TraceJob]
    length: float  # seconds replayed (the week, or up to the last arrival)
    describe: str
    start: float = 0.0  # the second the replay starts at (an export: its first job)

    @property
    def arriving(self) -> int:
        """The jobs that come to this runner manager."""
        return sum(1 for j in self.jobs if j.runs and j.here)


class Draws(Protocol):
    """Seconds drawn for each create (LogNormal, or a constant in a test)."""

    def draw(self, rng: random.Random) -> float: ...


class LogNormal:
    """Log-normal draws given by their median and 95th percentile."""

    def __init__(self, median: float, p95: float) -> None:
        if not 0 < median < p95:
            raise ValueError(f"need 0 < median ({median:g}) < p95 ({p95:g})")
        self.mu = math.log(median)
        self.sigma = math.log(p95 / median) / 1.6448536269514722

    def draw(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu, self.sigma)


def announce_by_stage(jobs: Sequence[TraceJob], claim_seconds: float) -> list[TraceJob]:
    """Fill in what the lookahead learns of jobs whose trace does not say (announced
    None): when the first job of a stage arrives here, the next stage's jobs are
    announced, predicted to arrive when this stage should end (its jobs' arrivals
    plus their usual durations; unknown if one has none)."""
    stages: dict[tuple[int, int], list[TraceJob]] = {}
    for job in jobs:
        if job.pipeline >= 0:
            stages.setdefault((job.pipeline, job.stage), []).append(job)
    out = []
    for job in jobs:
        if job.announced is not None:
            out.append(job)
            continue
        before = stages.get((job.pipeline, job.stage - 1), []) if job.pipeline >= 0 else []
        came = [b.arrival for b in before if b.runs and b.here]
        if not came:
            out.append(replace(job, announced=NEVER))
            continue
        ends = [b.arrival + claim_seconds + b.usual for b in before]
        out.append(replace(job, announced=min(came), predicted=max(ends)))
    return out


def read_trace(path: Path, creates: LogNormal, seed: int, runner: int | None = None) -> Trace:
    """A CSV trace of either shape; create times are drawn (seeded) for each job."""
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row and not row[0].startswith("#")]
    if not rows:
        raise TraceError(f"{path}: no jobs in it")
    if "started_at" in [cell.strip() for cell in rows[0]]:
        return read_gitlab_export(path, rows, creates, seed, runner)
    rng = random.Random(seed)
    jobs = []
    for number, row in enumerate(rows, start=1):
        try:
            cells = [cell.strip() for cell in row] + [""] * 10
            arrival, duration = float(cells[0]), float(cells[1])
            pipeline = int(cells[2]) if cells[2] else -1
            stage = int(cells[3]) if cells[3] else 0
            runs = cells[4] != "0"
            usual = float(cells[5]) if cells[5] else math.nan
            announced = float(cells[6]) if cells[6] else None
            predicted = float(cells[7]) if cells[7] else math.nan
            here = cells[8] != "0"
            project = int(cells[9]) if cells[9] else 0
        except (ValueError, IndexError):
            if number == 1:
                continue  # a header
            raise TraceError(
                f"{path}:{number}: expected 'arrival seconds,duration seconds"
                f"[,pipeline,stage,runs,usual seconds,announced,predicted,here,project]', "
                f"got {row!r}"
            ) from None
        if arrival < 0 or duration < 0:
            raise TraceError(f"{path}:{number}: negative time in {row!r}")
        job = TraceJob(arrival, duration, creates.draw(rng), pipeline, stage, runs, usual)
        job = replace(job, announced=announced, predicted=predicted, here=here, project=project)
        jobs.append(job)
    if not jobs:
        raise TraceError(f"{path}: no jobs in it")
    jobs.sort(key=lambda j: j.arrival)
    length = max(WEEK, jobs[-1].arrival)
    return Trace(jobs, length, f"{path.name}: {sum(j.runs and j.here for j in jobs)} jobs")


EXPORT_COLUMNS = (
    "id",
    "pipeline_id",
    "stage",
    "name",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "duration",
    "queued_duration",
    "runner_id",
)
RAN = {"success", "failed", "canceled", "running"}


def _when(value: str) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def read_gitlab_export(
    path: Path, rows: list[list[str]], creates: LogNormal, seed: int, runner: int | None
) -> Trace:
    """Rows of GitLab's jobs API (`GET /projects/:id/jobs`), columns named in the header
    (EXPORT_COLUMNS; project_id optional). A job arrives when it became pending
    (started_at - queued_duration); one that never started (skipped, manual, canceled
    while waiting) is withdrawn once the stages before it ended (manual ones are
    never announced). Stages are
    ordered by when their first job started in each pipeline; a job's usual duration
    is the median of its name's successful runs in the file. With `runner`, jobs
    another runner took were taken elsewhere. The trace ends 10 minutes after the
    last job."""
    header = [cell.strip() for cell in rows[0]]
    missing = [c for c in EXPORT_COLUMNS if c not in header]
    if missing:
        raise TraceError(f"{path}:1: a GitLab export needs the columns {', '.join(missing)}")
    index = {name: header.index(name) for name in header}
    parsed: list[tuple[dict[str, str], float, float, bool]] = []
    for number, row in enumerate(rows[1:], start=2):
        cells = {name: (row[i].strip() if i < len(row) else "") for name, i in index.items()}
        try:
            started = _when(cells["started_at"])
            ran = started is not None and cells["status"] in RAN
            if started is not None and ran:
                queued = float(cells["queued_duration"] or 0.0)
                at, duration = started - queued, float(cells["duration"] or 0.0)
            else:
                seen = _when(cells["finished_at"]) or _when(cells["created_at"])
                if seen is None:
                    raise ValueError("no time")
                at, duration = seen, 0.0
            int(cells["pipeline_id"])
        except ValueError as e:
            raise TraceError(f"{path}:{number}: cannot read {row!r}: {e}") from None
        parsed.append((cells, at, duration, ran))
    if not parsed:
        raise TraceError(f"{path}: no jobs in it")
    # Seconds from the Monday 00:00 UTC before the first job.
    first = datetime.fromtimestamp(min(at for _, at, _, _ in parsed), UTC)
    monday = (first - timedelta(days=first.weekday())).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    origin = monday.timestamp()
    usual: dict[tuple[str, str], float] = {}
    by_name: dict[tuple[str, str], list[float]] = {}
    for cells, _, duration, ran in parsed:
        if ran and cells["status"] == "success":
            by_name.setdefault((cells.get("project_id", ""), cells["name"]), []).append(duration)
    usual = {key: statistics.median(values) for key, values in by_name.items()}
    stage_start: dict[tuple[int, str], float] = {}
    for cells, at, _, ran in parsed:
        key = (int(cells["pipeline_id"]), cells["stage"])
        stage_start[key] = min(stage_start.get(key, math.inf), at if ran else math.inf)
    order: dict[tuple[int, str], int] = {}
    for pipeline in {p for p, _ in stage_start}:
        names = sorted((t, s) for (p, s), t in stage_start.items() if p == pipeline)
        for number, (_, name) in enumerate(names):
            order[(pipeline, name)] = number
    # A job that never ran is known not to come once the stages before it ended.
    ended: dict[tuple[int, int], float] = {}
    for cells, at, duration, ran in parsed:
        if ran:
            pipeline = int(cells["pipeline_id"])
            place = (pipeline, order[(pipeline, cells["stage"])])
            ended[place] = max(ended.get(place, 0.0), at + duration)
    rng = random.Random(seed)
    jobs = []
    for cells, at, duration, ran in sorted(parsed, key=lambda p: p[1]):
        pipeline = int(cells["pipeline_id"])
        stage = order[(pipeline, cells["stage"])]
        if not ran:
            before = [end for (p, s), end in ended.items() if p == pipeline and s < stage]
            at = max([at, *before])
        here = runner is None or not ran or cells["runner_id"] == str(runner)
        job = TraceJob(
            at - origin,
            duration,
            creates.draw(rng),
            pipeline,
            stage,
            ran,
            usual.get((cells.get("project_id", ""), cells["name"]), math.nan),
            here=here,
            project=int(project) if (project := cells.get("project_id", "")).isdigit() else 0,
        )
        if cells["status"] == "manual":  # waits for a person: nobody announces it
            job = replace(job, announced=NEVER)
        jobs.append(job)
    jobs.sort(key=lambda j: j.arrival)
    length = max(j.arrival + j.duration for j in jobs) + 600.0
    ran_here = sum(j.runs and j.here for j in jobs)
    start = max(0.0, jobs[0].arrival - 600.0)  # not the night before the first job
    return Trace(jobs, length, f"{path.name} (GitLab export): {ran_here} jobs", start)


def write_trace(jobs: Iterable[TraceJob], path: Path) -> None:
    def number(value: float | None) -> str:
        return "" if value is None or math.isnan(value) else f"{value:.3f}"

    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            [
                "arrival_seconds",
                "duration_seconds",
                "pipeline",
                "stage",
                "runs",
                "usual_seconds",
                "announced_seconds",
                "predicted_seconds",
                "here",
                "project",
            ]
        )
        for job in jobs:
            # "nan": nobody announces it; "": derived from the stages when read back.
            announced = "nan" if job.announced is not None and math.isnan(job.announced) else ""
            out.writerow(
                [
                    f"{job.arrival:.3f}",
                    f"{job.duration:.3f}",
                    job.pipeline,
                    job.stage,
                    int(job.runs),
                    number(job.usual),
                    announced or number(job.announced),
                    number(job.predicted),
                    int(job.here),
                    job.project,
                ]
            )
