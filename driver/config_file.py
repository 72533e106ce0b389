"""Where the admin's config file is, and the state dir's default: standard library only.

Shared by driver.settings (which validates the file) and prepare's fast path
(driver.stages.prepare_fast), which reads only state_dir from the file and must
not pay for pydantic.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/gitlab-machine-driver/config.toml")
CONFIG_PATH_ENV = "GITLAB_MACHINE_DRIVER_CONFIG"


def config_path(given: str | Path | None) -> Path:
    """--config, else $GITLAB_MACHINE_DRIVER_CONFIG, else the default."""
    return Path(given or os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)


def default_state_dir() -> Path:
    """The state dir of a config that names none."""
    if os.geteuid() == 0:
        return Path("/var/lib/gitlab-machine-driver")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gitlab-machine-driver"
