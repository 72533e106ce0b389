"""`pool replay`: an admin's GitLab export through every policy, compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from driver.main import main

EXPORT = Path(__file__).parent / "fixtures" / "gitlab-jobs-export.csv"


def test_a_gitlab_export_is_replayed_through_every_policy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["pool", "replay", "--trace", str(EXPORT), "--runner", "1"]) == 0
    out = capsys.readouterr().out
    assert "gitlab-jobs-export.csv (GitLab export)" in out
    rows = [line for line in out.splitlines() if line.startswith("| ")][1:]
    policies = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert policies == [
        "idle_count",
        "periods",
        "periods + lookahead",
        "demand",
        "demand + lookahead",
        "demand + learned shapes",
        "oracle (the floor)",
        "bound (unannounced jobs unforeseen)",
    ]
    # Total machine-s per job: no policy below the bound, the bound not below the floor.
    totals = {
        policy: float(row.split(" | ")[5])
        for policy, row in zip(policies, rows, strict=True)
        if "none searched" not in row
    }
    bound = totals.pop("bound (unannounced jobs unforeseen)")
    floor = totals.pop("oracle (the floor)")
    assert floor <= bound <= min(totals.values())
    assert "total machine-s per job" in out
    assert "demand + lookahead against periods + lookahead: total" in out
    assert "demand + learned shapes (no [gitlab]) against periods: total" in out


def test_an_unreadable_trace_is_said_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "jobs.csv"
    bad.write_text("10,300\nsoon,300\n")
    with pytest.raises(SystemExit) as exited:
        main(["pool", "replay", "--trace", str(bad)])
    assert exited.value.code != 0
    err = capsys.readouterr().err
    assert "cannot read the trace" in err and "jobs.csv:2: expected" in err
