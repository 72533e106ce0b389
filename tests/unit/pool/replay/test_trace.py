"""Traces: the replay's own CSV, a GitLab jobs export, and the week's knobs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from driver.pool.replay.simulate import Timing
from driver.pool.replay.trace import TraceError, TraceJob, read_trace, write_trace
from driver.pool.replay.week import Shape, working_week

CREATES = Timing().creates
EXPORT = Path(__file__).parents[2] / "commands" / "fixtures" / "gitlab-jobs-export.csv"


def test_a_csv_trace_is_read_back_as_written_and_a_bad_line_named(tmp_path: Path) -> None:
    good = tmp_path / "jobs.csv"
    good.write_text("arrival_seconds,duration_seconds\n10,300\n5,60\n")
    trace = read_trace(good, CREATES, 1)
    assert [(j.arrival, j.duration) for j in trace.jobs] == [(5.0, 60.0), (10.0, 300.0)]
    week = working_week(Shape(days=1, managers=2, manual=0.2, projects=4), 2, CREATES, 1.0)
    staged = tmp_path / "staged.csv"
    write_trace(week.jobs, staged)
    again = read_trace(staged, CREATES, 2)

    def seen(j: TraceJob) -> tuple[int, int, bool, bool, bool, int]:
        never = j.announced is not None and math.isnan(j.announced)
        return (j.pipeline, j.stage, j.runs, j.here, never, j.project)

    assert [seen(j) for j in again.jobs] == [seen(j) for j in week.jobs]
    bad = tmp_path / "bad.csv"
    bad.write_text("10,300\nsoon,300\n")
    with pytest.raises(TraceError, match=r"bad.csv:2: expected 'arrival seconds,duration"):
        read_trace(bad, CREATES, 1)


def test_a_gitlab_export_becomes_jobs_in_stages_with_their_usual_durations() -> None:
    trace = read_trace(EXPORT, CREATES, 1)
    first = trace.jobs[0]
    # 2026-03-02 is a Monday: the first job became pending at 09:01:10.814 (started
    # 09:01:12.123 after 1.309 s queued).
    assert first.arrival == pytest.approx(9 * 3600 + 70.814, abs=0.01)
    assert (first.pipeline, first.stage) == (4100, 0)
    assert first.duration == pytest.approx(234.774)
    assert trace.start == pytest.approx(first.arrival - 600)
    stages = {(j.pipeline, j.stage) for j in trace.jobs if j.pipeline == 4100}
    assert stages == {(4100, 0), (4100, 1), (4100, 2)}
    # Manual and skipped jobs never run; manual ones are never announced.
    never = [j for j in trace.jobs if not j.runs]
    assert never and all(j.stage == 2 for j in never)
    assert any(j.announced is not None and math.isnan(j.announced) for j in never)
    # The usual duration of a job is the median of its name's successful runs.
    assert all(not math.isnan(j.usual) for j in trace.jobs if j.runs)
    # With this runner's id, the other runner's jobs were taken elsewhere.
    mine = read_trace(EXPORT, CREATES, 1, runner=1)
    assert 0 < sum(j.here for j in mine.jobs if j.runs) < sum(j.runs for j in mine.jobs)


def test_an_export_without_its_columns_is_refused(tmp_path: Path) -> None:
    partial = tmp_path / "export.csv"
    partial.write_text("id,started_at,duration\n1,2026-03-02T09:00:00Z,60\n")
    with pytest.raises(TraceError, match="needs the columns pipeline_id"):
        read_trace(partial, CREATES, 1)
