"""One state dir, one set of machine settings.

Everything in a state dir (the warm pool, the limits' counts, the job records
the sweeper reads) assumes one kind of machine in one docker-machine storage.
Two configs that point at the same state dir with different [machine]
settings would share them: a GCP job could take an AWS pool machine, and
`max_machines` would count both. So the first config to use a state dir
records a fingerprint of its machine settings in ``owner.json``; prepare, the
pool service and the sweeper refuse a state dir owned by another config whose
settings differ. Cheap: one small file read and a hash per call.

Job ids are unique only within one GitLab instance: two `[[runners]]` of two
instances sharing a driver config would share job dirs, locks and machine
names, and one's prepare could remove the other's live machine as "left
over". So the first job's GitLab (CI_SERVER_URL from the response file) is
recorded in ``gitlab.json``; prepare and cleanup of a job of another GitLab
refuse, touching nothing, and say how to give that runner its own config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from driver.errors import ConfigError
from driver.settings import Settings
from driver.state import StateDir, write_private


@dataclass(frozen=True)
class Owner:
    config: str  # the config file's absolute path
    fingerprint: str  # of [machine] (credentials aside) and the docker-machine storage
    driver: str
    name_prefix: str
    storage_path: str
    since: float = 0.0

    def describe(self) -> str:
        return (
            f"{self.config} (driver {self.driver}, machines {self.name_prefix}-*, "
            f"storage {self.storage_path})"
        )


def owner_of(settings: Settings, config: Path) -> Owner:
    """What this config would record: the settings that decide which machines it makes."""
    machine = settings.machine.model_dump(mode="json", exclude={"env", "env_file"})
    storage = str(settings.docker_machine.storage_path)
    text = json.dumps({"machine": machine, "storage_path": storage}, sort_keys=True)
    return Owner(
        config=str(Path(os.path.abspath(config))),
        fingerprint=hashlib.sha256(text.encode()).hexdigest(),
        driver=settings.machine.driver,
        name_prefix=settings.machine.name_prefix,
        storage_path=storage,
        since=time.time(),
    )


def read_owner(state_dir: Path) -> Owner | None:
    """The recorded owner; None if there is none (or the record is unreadable)."""
    try:
        data = json.loads(StateDir(state_dir).owner_file.read_text())
        return Owner(**data)
    except (OSError, ValueError, TypeError):
        return None


def check(settings: Settings, config: Path, recorded: Owner | None) -> Owner:
    """This config as owner, or ConfigError when another config with other settings owns it."""
    mine = owner_of(settings, config)
    if recorded is None or recorded.fingerprint == mine.fingerprint:
        return mine
    if recorded.config == mine.config:
        return mine  # the admin changed this config's [machine]: it stays the owner
    path = StateDir(settings.state_dir).owner_file
    raise ConfigError(
        f"state dir {settings.state_dir} is used by {recorded.describe()}, whose [machine] "
        f"settings differ from those of {mine.describe()}: the two would share a warm pool, "
        "limits and machines",
        hint=f"give {mine.config} a state_dir (and [docker_machine] storage_path) of its own; "
        f"if {recorded.config} no longer uses it, remove {path}",
    )


def _instance(url: str) -> str:
    """A GitLab instance's URL as one spelling (scheme and host lower-case, no "/" end)."""
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


def claim_gitlab(settings: Settings, server_url: str) -> None:
    """Record the GitLab instance whose jobs this state dir serves, on first use;
    refuse a job of another (ConfigError), before anything of its id is touched."""
    if not server_url:
        return  # a stage run by hand (a synthetic payload): no instance to compare
    mine = _instance(server_url)
    path = StateDir(settings.state_dir).root / "gitlab.json"
    recorded = _read_gitlab(path)
    if recorded is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".gitlab.{os.getpid()}.tmp")
        write_private(tmp, json.dumps({"url": mine, "since": time.time()}) + "\n")
        try:
            os.link(tmp, path)  # of two first jobs at once, exactly one records its GitLab
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        recorded = _read_gitlab(path) or mine
    if recorded != mine:
        raise ConfigError(
            f"state dir {settings.state_dir} serves the jobs of {recorded}; this job is of "
            f"{mine}: job ids of two GitLab instances collide, so they would share job "
            "state, locks and machine names",
            hint="give the [[runners]] of each GitLab instance a driver config of its own, "
            "with its own state_dir, [machine] name_prefix and [docker_machine] storage_path",
        )


def _read_gitlab(path: Path) -> str | None:
    try:
        url = json.loads(path.read_text())["url"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return url if isinstance(url, str) and url else None


def claim(settings: Settings, config: Path) -> None:
    """Record this config as the state dir's owner on first use; refuse another's."""
    path = StateDir(settings.state_dir).owner_file
    recorded = read_owner(settings.state_dir)
    mine = check(settings, config, recorded)
    if recorded is not None and recorded.fingerprint == mine.fingerprint:
        return  # the common case: one read, nothing written
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = json.dumps(asdict(mine), indent=2) + "\n"
    if recorded is not None:
        write_private(path, text)  # this config's own settings changed
        return
    # First use: of two configs starting at once, exactly one records itself.
    tmp = path.with_name(f".owner.{os.getpid()}.tmp")
    write_private(tmp, text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        again = read_owner(settings.state_dir)
        if again is None:
            write_private(path, text)  # an unreadable record protects nothing: replace it
        else:
            check(settings, config, again)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
