"""ls: the machines this driver owns on this host, with their jobs."""

from __future__ import annotations

import argparse
import json

from driver import sweeper
from driver.docker_machine import DockerMachine
from driver.settings import load_settings


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config_path)
    owned = sweeper.inventory(DockerMachine(settings), settings)
    now = sweeper.now()
    rows = [
        {
            "name": m.name,
            "state": m.state,
            "phase": m.local.phase if m.local else "",
            "job": m.job_id,
            "project": m.project_id,
            "age_seconds": None if m.age(now) is None else round(m.age(now) or 0),
            "host": m.local.host if m.local else "",
        }
        for m in owned
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "STATE", "PHASE", "JOB", "PROJECT", "AGE", "ADDRESS")
    table = [header] + [
        (
            str(r["name"]),
            str(r["state"]),
            str(r["phase"] or "-"),
            str(r["job"] or "-"),
            str(r["project"] if r["project"] is not None else "-"),
            _age(r["age_seconds"]),
            str(r["host"] or "-"),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _age(seconds: object) -> str:
    if not isinstance(seconds, int):
        return "-"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
