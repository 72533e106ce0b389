"""ls: the machines this driver owns on this host, with their jobs."""

from __future__ import annotations

import argparse
import json
import time

from driver import sweeper
from driver.docker_machine import DockerMachine, find_program
from driver.errors import DriverError
from driver.log import warn
from driver.settings import load_settings


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config_path)
    dm = DockerMachine(settings)
    look = sweeper.Sweep(dm, settings, job_status=None)
    unlisted = "not listed"
    try:  # the states are for show; entries come from the store
        find_program(settings.docker_machine.program)
        look.listed = dm.list(sweeper.name_pattern(settings))
    except DriverError as e:  # say why no machine has a state, not just "not listed"
        unlisted = "unknown"
        warn(f"docker-machine ls failed, so STATE is unknown: {e}")
    now = time.time()
    rows: list[dict[str, object]] = []
    for name in look.names():
        try:
            facts = look.facts(name, now=now)
        except (DriverError, OSError) as e:  # one broken entry never hides the others
            rows.append({"name": name, "state": "broken", "phase": str(e)[:60]})
            continue
        rows.append(
            {
                "name": name,
                "state": facts.listed or (unlisted if facts.has_entry else "no entry"),
                "phase": _phase(facts),
                "job": facts.job_id,
                "project": facts.project_id,
                "age_seconds": None if facts.taken_age is None else round(facts.taken_age),
                "host": facts.host,
            }
        )
    for tombstone in look.state.tombstones():
        rows.append({"name": tombstone.key, "state": "force-removed", "phase": "tombstone"})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("NAME", "STATE", "PHASE", "JOB", "PROJECT", "AGE", "ADDRESS")
    table = [header] + [
        (
            str(r["name"]),
            str(r["state"]),
            str(r.get("phase") or "-"),
            str(r.get("job") or "-"),
            str(r["project"] if r.get("project") is not None else "-"),
            _age(r.get("age_seconds")),
            str(r.get("host") or "-"),
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


def _phase(facts: sweeper.Facts) -> str:
    """A job machine's phase (creating, ready, kept), or where a pool machine is."""
    if facts.owner == "job":
        return str(facts.phase) if facts.record_ok else "unreadable record"
    if facts.owner == "pool":
        return "idle" if facts.phase == "ready" else f"pool {facts.phase}"
    return {"claim": "being claimed", "none": "no record"}.get(facts.owner, facts.owner)
