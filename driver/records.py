"""The records the state dir keeps: a job's (JobRecord, in ``jobs/<id>/state.json``)
and a pool machine's (PoolRecord, in ``pool/machines/<name>/info.json``), with the
phases their machines go through and how a record proves its runner gone.

Plain classes stored as JSON, not dataclasses or pydantic: `run` reads a job's
record once per stage, and its start-up is counted. Records of earlier versions
load (unknown keys are ignored, missing ones defaulted); a field of the wrong type
makes the record corrupt (TypeError). Re-exported by driver.state, which reads and
writes them.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Self, TypeVar

from driver.errors import JobError
from driver.procs import boot_clock, boot_id, pid_namespace, process_start_time


class JobPhase(enum.StrEnum):
    """Where a job's machine is in its life; only `advance` moves it forward."""

    CREATING = "creating"  # prepare is creating it (the record exists before the machine)
    CREATED = "created"  # it exists; SSH, tools and engine not yet checked
    READY = "ready"  # stages may run in it
    KEPT = "kept"  # its job failed; kept for inspection until kept_until


JOB_TRANSITIONS: dict[JobPhase, frozenset[JobPhase]] = {
    JobPhase.CREATING: frozenset({JobPhase.CREATED}),
    JobPhase.CREATED: frozenset({JobPhase.READY}),
    JobPhase.READY: frozenset({JobPhase.KEPT}),
    JobPhase.KEPT: frozenset(),
}


class PoolPhase(enum.StrEnum):
    CREATING = "creating"  # the pool service is making it ready (it holds its entry lock)
    READY = "ready"  # idle and claimable
    STOPPED = "stopped"  # made ready, then stopped ([pool] stopped_count): claimable, to start
    CLAIMED = "claimed"  # a job's prepare took it and is taking it over
    WITHDRAWN = "withdrawn"  # out of the ready set: never claimable again, being removed
    GONE = "gone"


T = TypeVar("T")


def _field(data: Mapping[str, object], key: str, kind: type[T], default: T) -> T:
    """``data[key]``, checked to be a ``kind`` (an int does for a float); ``default`` if
    absent: records written by older versions load too. A wrong type is a corrupt record."""
    if key not in data:
        return default
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind):
        raise TypeError(f"{key} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _required(data: Mapping[str, object], key: str, kind: type[T]) -> T:
    if key not in data:
        raise TypeError(f"{key} is missing")
    value = data[key]
    if not isinstance(value, kind):
        raise TypeError(f"{key} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _owners(data: Mapping[str, object]) -> list[list[int]]:
    """``owners``: [[pid, start time], ...]."""
    owners = []
    for entry in _field(data, "owners", list, []):
        if not (isinstance(entry, list) and all(isinstance(n, int) for n in entry)):
            raise TypeError(f"owners holds {entry!r}, not [pid, start time]")
        owners.append([int(n) for n in entry])
    return owners


def _timings(data: Mapping[str, object]) -> dict[str, float]:
    timings = {}
    for name, seconds in _field(data, "timings", dict, {}).items():
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise TypeError(f"timings[{name!r}] is not a number")
        timings[str(name)] = float(seconds)
    return timings


class Address:
    """How to reach a machine: SSH and its Docker engine, as docker-machine reported them."""

    def __init__(
        self,
        *,
        host: str = "",
        port: int = 22,
        user: str = "",
        key_path: str = "",
        engine_url: str = "",
        ca_cert: str = "",
        client_cert: str = "",
        client_key: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.key_path = key_path
        self.engine_url = engine_url  # "" until the engine was asked for
        self.ca_cert = ca_cert
        self.client_cert = client_cert
        self.client_key = client_key

    @property
    def ssh_target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @classmethod
    def from_dict(cls, data: object) -> Address:
        if not isinstance(data, dict):
            return cls()
        return cls(
            host=_field(data, "host", str, ""),
            port=_field(data, "port", int, 22),
            user=_field(data, "user", str, ""),
            key_path=_field(data, "key_path", str, ""),
            engine_url=_field(data, "engine_url", str, ""),
            ca_cert=_field(data, "ca_cert", str, ""),
            client_cert=_field(data, "client_cert", str, ""),
            client_key=_field(data, "client_key", str, ""),
        )


class MachineRecord:
    """A record naming a machine and its address, stored as JSON."""

    address: Address

    def to_json(self) -> str:
        return json.dumps({**vars(self), "address": vars(self.address)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Self:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls.from_fields(data, Address.from_dict(data.get("address")))

    @classmethod
    def from_fields(cls, data: Mapping[str, object], address: Address) -> Self:
        """The record from its JSON object (unknown keys ignored, missing ones defaulted)."""
        raise NotImplementedError


class JobRecord(MachineRecord):
    """This host's record of one job and its machine (``jobs/<id>/state.json``).

    Written before the machine exists, so a prepare killed half-way still leaves
    cleanup and the sweeper the machine's name. A plain class, not a dataclass:
    `run` reads it once per stage, and importing dataclasses costs more than it.
    """

    def __init__(
        self,
        *,
        job_id: int,
        project_id: int,
        machine: str,
        pipeline_id: int | None = None,
        stage: str = "",
        phase: str = JobPhase.CREATING,
        address: Address | None = None,
        kill_grace: float = 10.0,
        log_path: str = "",
        prepare_pid: int = 0,
        owners: list[list[int]] | None = None,
        boot_id: str = "",
        taken_at: float = 0.0,
        kept_until: float = 0.0,
        timings: dict[str, float] | None = None,
        pid_ns: int = 0,
        taken_boot: float = 0.0,
    ) -> None:
        self.job_id = job_id
        self.project_id = project_id
        self.machine = machine
        self.pipeline_id = pipeline_id
        self.stage = stage  # its pipeline stage: the pool learns what follows it
        self.phase = JobPhase(phase)
        self.address = address or Address()
        self.kill_grace = kill_grace
        self.log_path = log_path  # the admin's log, for stages that do not read the config
        self.prepare_pid = prepare_pid
        self.owners = owners or []  # the prepare's ancestors, the runner among them
        self.boot_id = boot_id
        self.taken_at = taken_at  # when this job took the machine (created or claimed it)
        self.kept_until = kept_until
        self.timings = timings or {}
        self.pid_ns = pid_ns  # the PID namespace the owners' PIDs are of (0: not recorded)
        self.taken_boot = taken_boot  # boot_clock() when it was taken, in boot boot_id

    @classmethod
    def from_fields(cls, data: Mapping[str, object], address: Address) -> Self:
        pipeline_id = data.get("pipeline_id")
        return cls(
            job_id=_required(data, "job_id", int),
            project_id=_required(data, "project_id", int),
            machine=_required(data, "machine", str),
            pipeline_id=None if pipeline_id is None else _field(data, "pipeline_id", int, 0),
            stage=_field(data, "stage", str, ""),
            phase=_field(data, "phase", str, JobPhase.CREATING),
            address=address,
            kill_grace=_field(data, "kill_grace", float, 10.0),
            log_path=_field(data, "log_path", str, ""),
            prepare_pid=_field(data, "prepare_pid", int, 0),
            owners=_owners(data),
            boot_id=_field(data, "boot_id", str, ""),
            taken_at=_field(data, "taken_at", float, 0.0),
            kept_until=_field(data, "kept_until", float, 0.0),
            timings=_timings(data),
            pid_ns=_field(data, "pid_ns", int, 0),
            taken_boot=_field(data, "taken_boot", float, 0.0),
        )

    def taken_age(self, now: float) -> float | None:
        """Seconds since this job took its machine, from a clock that does not jump; None
        (unknown) across a reboot. Records of earlier versions: by the wall clock."""
        if self.taken_boot:
            if not self.boot_id or self.boot_id != boot_id():
                return None
            return boot_clock() - self.taken_boot
        return now - self.taken_at if self.taken_at else None

    def advance(self, phase: JobPhase) -> None:
        if phase not in JOB_TRANSITIONS[self.phase]:
            raise JobError(f"job {self.job_id}: its machine cannot go from {self.phase} to {phase}")
        self.phase = phase

    def runner_gone(self) -> bool:
        """Proof that no runner will call a stage of this job again.

        True after a reboot, or when every process that started its prepare is gone.
        Unknown owners (none recorded, or PIDs of a PID namespace other than ours, or
        of one not recorded) are never proof.
        """
        if self.boot_id and boot_id() and self.boot_id != boot_id():
            return True
        if not self.owners or not self.owners_visible():
            return False
        return all(process_start_time(pid) != started for pid, started in self.owners)

    def owners_visible(self) -> bool:
        """Whether the owners' PIDs are of our PID namespace, so /proc tells about them."""
        return bool(self.pid_ns) and self.pid_ns == pid_namespace()


class PoolRecord(MachineRecord):
    """A warm-pool machine (``pool/machines/<name>/info.json``), saved before it exists."""

    def __init__(
        self,
        *,
        name: str,
        address: Address | None = None,
        created: float = 0.0,
        ready_at: float = 0.0,
        creator_pid: int = 0,
    ) -> None:
        self.name = name
        self.address = address or Address()
        self.created = created
        self.ready_at = ready_at
        self.creator_pid = creator_pid

    @classmethod
    def from_fields(cls, data: Mapping[str, object], address: Address) -> Self:
        return cls(
            name=_required(data, "name", str),
            address=address,
            created=_field(data, "created", float, 0.0),
            ready_at=_field(data, "ready_at", float, 0.0),
            creator_pid=_field(data, "creator_pid", int, 0),
        )
