"""Which container a stage runs in: read by `run` once per stage, so standard library only.

``<job dir>/image.json`` exists only for a job in image mode (prepare writes it).
User stages (``build_script``, ``step_*``, ``after_script``) run in the build
container; every other stage (the runner's own: sources, caches, artifacts,
and any stage a newer runner invents) in the helper, where git and
gitlab-runner-helper are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from driver.state import JobDir

IMAGE_FILE = "image.json"
# Where a container's keeper takes its stages: a dir in the VM (made by prepare), bound
# read-only into the container at CHANNEL_MOUNT. FIFOs on a read-only mount still open
# for writing, so the container cannot add files there.
CHANNEL_DIR = "/tmp/gmd-channel-{container}"
CHANNEL_MOUNT = "/.gitlab-machine-driver"
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def is_user_stage(stage: str) -> bool:
    return stage in ("build_script", "after_script") or stage.startswith("step_")


def channel_dir(container: str) -> str:
    return CHANNEL_DIR.format(container=container)


def wrapper_args(job_dir: JobDir, stage: str) -> str:
    """The VM-side wrapper's "<container> <keeper pid> <channel dir> [<services>]"; "" in
    shell mode."""
    try:
        f = open(job_dir.path / IMAGE_FILE, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return ""  # shell mode: not even json is imported on this path
    import json

    with f:
        record = json.load(f)
    role = "build" if is_user_stage(stage) else "helper"
    container = str(record[role])
    keeper = int(record["keepers"][container])
    # They go into the remote command line: names the driver made, checked anyway.
    if not container or not set(container) <= _SAFE:
        raise ValueError(f"unexpected container name {container!r} in {IMAGE_FILE}")
    args = f"{container} {keeper} {channel_dir(container)}"
    if record.get("debug_services") and record.get("services"):
        # CI_DEBUG_SERVICES: the services whose output the stage follows, with their labels
        # (the job's aliases: only the characters safe on a command line are kept).
        args += " " + ",".join(
            f"{name}={''.join(ch if ch in _SAFE else '_' for ch in label)}"
            for name, label in record["services"]
            if name and set(name) <= _SAFE
        )
    return args
