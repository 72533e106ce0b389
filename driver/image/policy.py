"""What the admin allows: images, services, pull policies and users (docker executor rules).

Refusals are the job's problem, not the machine's: they fail the job as a
script failure (not retried) with a message naming the setting to change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from wcmatch import glob

from driver.errors import BuildFailure
from driver.image.config import PULL_POLICIES, ImageSettings, PullPolicy

# doublestar's rules, as gitlab-runner matches allowed_images: `*` stops at `/`, `**`
# crosses it, `?`, `[...]`, `{a,b}`; a leading `!` is a literal, not a negation.
_GLOB_FLAGS = glob.GLOBSTAR | glob.BRACE | glob.DOTGLOB
DOCKER_OPTIONS = ("platform", "user")
SETTINGS_DOC = "https://docs.gitlab.com/runner/configuration/advanced-configuration/"


class ImageRefused(BuildFailure):
    """The job asked for something the admin's [image] settings do not allow."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(1)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"ERROR: {self.message}" + (f"\n  hint: {self.hint}" if self.hint else "")


def allowed(name: str, patterns: Sequence[str]) -> bool:
    """Empty list: anything. Matched on the name as written (no docker.io/library added)."""
    return not patterns or any(glob.globmatch(name, p, flags=_GLOB_FLAGS) for p in patterns)


def check_allowed(name: str, patterns: Sequence[str], what: str) -> None:
    """``what``: "images" or "services" (the setting is allowed_<what>)."""
    if allowed(name, patterns):
        return
    listed = "\n".join(f"  - {p}" for p in patterns)
    raise ImageRefused(
        f'the "{name}" image is not present on the list of allowed {what} '
        f"([image] allowed_{what} in the driver's config):\n{listed}",
        hint=f"use an image matching one of these, or ask the runner's admin to add it to "
        f"allowed_{what} (glob rules as gitlab-runner's: {SETTINGS_DOC})",
    )


def pull_policies(
    image: str, requested: Sequence[str] | None, settings: ImageSettings
) -> list[PullPolicy]:
    """The job's pull_policy, else the admin's; only those in allowed_pull_policies."""
    unknown = [p for p in requested or [] if p not in PULL_POLICIES]
    if unknown:
        raise ImageRefused(
            f'invalid pull policy {unknown[0]!r} for image "{image}"',
            hint=f"pull_policy takes {', '.join(PULL_POLICIES)}",
        )
    if requested:
        wanted = [p for p in PULL_POLICIES if p in requested]
        wanted.sort(key=list(requested).index)
        source = "GitLab pipeline config"
    else:
        wanted = list(settings.pull_policy)
        source = (
            "Runner config"
            if "pull_policy" in settings.model_fields_set
            else ("Runner config (default)")
        )
    permitted = settings.effective_allowed_pull_policies
    effective = [p for p in wanted if p in permitted]
    if not effective:
        raise ImageRefused(
            f'invalid pull policy for image "{image}": pull_policy ({_list(wanted)}) defined in '
            f"{source} is not one of the allowed_pull_policies ({_list(permitted)})",
            hint="change the job's pull_policy, or the runner admin's [image] "
            "allowed_pull_policies",
        )
    return effective


def check_docker_options(options: Mapping[str, object], where: str) -> None:
    unsupported = sorted(k for k in options if k not in DOCKER_OPTIONS)
    if unsupported:
        raise ImageRefused(
            f'unsupported "{where}" options {unsupported} for the docker executor; '
            f"supported options are {list(DOCKER_OPTIONS)}",
        )


def build_user(job_user: str, settings: ImageSettings) -> str:
    """The admin's user wins; else the job's docker:user, which must be allowed."""
    if settings.user:
        return settings.user
    if not job_user:
        return ""
    if settings.allowed_users and job_user not in settings.allowed_users:
        raise ImageRefused(
            f'user "{job_user}" is not an allowed user: {settings.allowed_users}',
            hint="use one of them in the job's docker:user, or ask the runner's admin to add "
            "it to [image] allowed_users",
        )
    return job_user


def _list(items: Sequence[str]) -> str:
    return "[" + " ".join(items) + "]"
