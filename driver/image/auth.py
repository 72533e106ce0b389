"""Registry credentials for pulling the job's images, in the docker executor's order.

Sources, first to claim a registry path wins: the job's DOCKER_AUTH_CONFIG
variable (or the runner's `environment`, which reaches us as
CUSTOM_ENV_DOCKER_AUTH_CONFIG), the admin's ``auth_config_file``, then the
payload's ``credentials`` (GitLab's registry with the job token). An image
takes the longest matching path. Credentials go to the VM's engine only in
the pull request's auth header, over the engine's TLS connection: never on a
command line, never in a log, never written to the VM.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from driver.files import read_private
from driver.image.payload import Credential
from driver.image.reference import parse

DOCKER_HUB = "docker.io"
_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")
AUTH_VARIABLE = "DOCKER_AUTH_CONFIG"


@dataclass(frozen=True)
class Login:
    username: str
    password: str
    source: str  # where it came from, for the job log (never the values)

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


def normalize(registry: str) -> str:
    """A registry key as docker writes them ("https://index.docker.io/v1/") -> "docker.io"."""
    key = registry.strip()
    for scheme in ("https://", "http://"):
        key = key.removeprefix(scheme)
    key = key.rstrip("/")
    for suffix in ("/v1", "/v2"):
        key = key.removesuffix(suffix)
    host, _, path = key.partition("/")
    host = host.lower()
    if host in _HUB_ALIASES:
        host = DOCKER_HUB
    return f"{host}/{path}" if path else host


def image_path(image: str) -> str:
    """`nginx` -> docker.io/nginx; `reg.example:5000/a/b:1` -> reg.example:5000/a/b."""
    name = parse(image).repository
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first.lower(), rest
    else:
        host, path = DOCKER_HUB, name
    return normalize(f"{host}/{path}")


def from_docker_config(text: str, source: str, warn: Callable[[str], None]) -> dict[str, Login]:
    """The "auths" of a docker config.json; helpers (credsStore, credHelpers) unsupported."""
    try:
        data = json.loads(text)
    except ValueError:
        warn(f"{source} is not valid JSON; its credentials are not used")
        return {}
    if not isinstance(data, dict):
        warn(f"{source} is not a JSON object; its credentials are not used")
        return {}
    if data.get("credsStore") or data.get("credHelpers"):
        warn(f'{source}: credsStore and credHelpers are not supported; use "auths"')
    logins: dict[str, Login] = {}
    auths = data.get("auths")
    for registry, entry in (auths if isinstance(auths, dict) else {}).items():
        if not isinstance(entry, dict):
            continue
        username, password = entry.get("username"), entry.get("password")
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                username, _, password = (
                    base64.b64decode(entry["auth"], validate=True).decode().partition(":")
                )
            except (binascii.Error, UnicodeDecodeError):
                warn(f"{source}: the auth of registry {registry} is not base64 user:password")
                continue
        if isinstance(username, str) and isinstance(password, str) and username:
            logins.setdefault(normalize(registry), Login(username, password, source))
    return logins


def from_credentials(credentials: Sequence[Credential]) -> dict[str, Login]:
    logins: dict[str, Login] = {}
    for cred in credentials:
        if cred.type == "registry" and cred.url and cred.username:
            logins.setdefault(
                normalize(cred.url), Login(cred.username, cred.password, "job payload")
            )
    return logins


def read_admin_file(path: Path) -> str:
    return read_private(
        path,
        "[image] auth_config_file",
        holds="registry passwords",
        how='a docker config.json ({"auths": {...}}), mode 0600, readable by the runner\'s user',
    )


class Credentials:
    """Every source's logins, merged by precedence; `for_image` picks the longest path."""

    def __init__(self, sources: Sequence[dict[str, Login]], fallback: Login | None = None) -> None:
        """``fallback``: the login of an image no source names (the pool's
        ``registry_username``, given to every registry it pulls from)."""
        self.logins: dict[str, Login] = {}
        self.fallback = fallback
        for logins in sources:
            for path, login in logins.items():
                self.logins.setdefault(path, login)

    def for_image(self, image: str) -> Login | None:
        path = image_path(image)
        while True:
            if path in self.logins:
                return self.logins[path]
            if "/" not in path:
                return self.fallback
            path = path.rsplit("/", 1)[0]


def collect(
    job_variables: dict[str, str],
    credentials: Sequence[Credential],
    admin_file: Path | None,
    warn: Callable[[str], None],
) -> Credentials:
    sources = []
    job_config = job_variables.get(AUTH_VARIABLE) or os.environ.get(
        f"CUSTOM_ENV_{AUTH_VARIABLE}", ""
    )
    if job_config:
        sources.append(from_docker_config(job_config, AUTH_VARIABLE, warn))
    if admin_file is not None:
        sources.append(
            from_docker_config(read_admin_file(admin_file), "[image] auth_config_file", warn)
        )
    sources.append(from_credentials(credentials))
    return Credentials(sources)
