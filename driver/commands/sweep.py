"""sweep: remove the machines of jobs that are over (run from a timer, or by hand)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from driver import log, state_owner, sweeper, sweeper_gitlab
from driver.docker_machine import DockerMachine, find_program
from driver.errors import DriverError
from driver.log import say
from driver.settings import Settings, config_path, load_settings
from driver.state import StateDir

FORGET_WAIT = 900.0  # a sweep retrying hung removals may take this long


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config_path)
    # Without docker-machine a sweep sees no machine and would end "successfully".
    find_program(settings.docker_machine.program)
    config = config_path(args.config_path)
    if args.dry_run:  # looks only: refuses as a sweep would, but records and creates nothing
        state_owner.check(settings, config, state_owner.read_owner(settings.state_dir))
        # Into the log only if it exists: a dry run creates no file, in the state dir or not.
        exists = settings.log_path.is_file()
        log.setup(settings.log_path if exists else Path(os.devnull), stage="sweep")
    else:
        # The sweeper removes machines: never by another config's view of this state dir.
        state_owner.claim(settings, config)
        log.setup(settings.log_path, stage="sweep")
    if args.forget:
        return forget(settings, args.forget)
    report = run_sweep(settings, dry_run=args.dry_run, progress=say)
    problem = report.configuration_problem
    if problem:
        raise DriverError(
            problem,
            hint="check [gitlab] url and that the token (read_api) can read the jobs of every "
            "project this runner serves; `gitlab-machine-driver doctor` checks it",
        )
    return 0


def run_sweep(
    settings: Settings, *, dry_run: bool, progress: Callable[[str], None]
) -> sweeper.Report:
    """One sweep, as the timer, an operator and the pool service at start run it."""
    job_status = sweeper_gitlab.job_status(settings)
    report = sweeper.sweep(DockerMachine(settings), settings, job_status, dry_run, progress)
    if report.configuration_problem:
        log.get().error("sweep_unknown_answers", problem=report.configuration_problem)
    return report


def forget(settings: Settings, names: list[str]) -> int:
    """The admin deleted these VMs in the cloud: stop retrying and counting them."""
    state = StateDir(settings.state_dir)
    # Under the sweep lock: a sweep retrying this tombstone must not bury it again.
    only = state.lock("sweep")
    if not only.try_acquire():
        say("A sweep is running; waiting for it to finish...")
        only.acquire(FORGET_WAIT, "the sweep lock")
    try:
        _forget(state, names)
    finally:
        only.release()
    return 0


def _forget(state: StateDir, names: list[str]) -> None:
    for name in names:
        found = state.graves.of(name)  # a machine's name: all its tombstones; or one's key
        if not found:
            raise DriverError(
                f"there is no tombstone of {name!r}",
                hint="`gitlab-machine-driver ls` lists them (state force-removed)",
            )
        for tombstone in found:
            state.graves.exhume(tombstone)
            log.get().warning("tombstone_forgotten", machine=tombstone.name, key=tombstone.key)
            say(f"{tombstone.key}: tombstone dropped; it no longer counts as possibly orphaned")
