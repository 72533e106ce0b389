"""job init / job end: the environment gitlab-runner would give a job, for stages by hand.

eval "$(gitlab-machine-driver job init --id 4242)"
gitlab-machine-driver config
gitlab-machine-driver prepare
gitlab-machine-driver run ./script.sh build_script
gitlab-machine-driver cleanup
eval "$(gitlab-machine-driver job end)"

`init` exports only what the stages read (the response file and the exit-code
variables), never TMPDIR: the operator's shell keeps its own temp dir. Its
files live in one private temp dir that `end` removes, once cleanup has run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path

from driver.contract import (
    BUILD_EXIT_CODE_FILE_ENV,
    BUILD_FAILURE_ENV,
    RESPONSE_FILE_ENV,
    SYSTEM_FAILURE_ENV,
    TMPDIR_ENV,
    read_job,
    runner_env,
    synthetic_response,
)
from driver.errors import DriverError
from driver.settings import load_settings
from driver.state import JobDir, write_private

WORK_PREFIX = "gmd-job-"
EXPORTED = (RESPONSE_FILE_ENV, BUILD_EXIT_CODE_FILE_ENV, BUILD_FAILURE_ENV, SYSTEM_FAILURE_ENV)


def main(args: argparse.Namespace) -> int:
    if args.job_command == "end":
        return end(args)
    return init(args)


def init(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{args.id}-"))
    response = work / "response.json"
    try:
        if args.response:
            shutil.copyfile(args.response, response)
            response.chmod(0o600)
            read_job(str(response))  # a file that is not a job payload fails here, not later
        else:
            write_private(response, json.dumps(synthetic_response(args.id, args.project)))
    except (OSError, DriverError) as e:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, DriverError):
            raise
        raise DriverError(f"cannot use {args.response} as the job's response: {e}") from None
    env = runner_env(work, response)
    assert TMPDIR_ENV not in EXPORTED
    print("# A job environment as gitlab-runner gives one to its stages. When done:")
    print('#   gitlab-machine-driver cleanup; eval "$(gitlab-machine-driver job end)"')
    for key in EXPORTED:
        print(f"export {key}={shlex.quote(env[key])}")
    return 0


def end(args: argparse.Namespace) -> int:
    response = os.environ.get(RESPONSE_FILE_ENV)
    if not response:
        raise DriverError(
            f"this shell has no job environment ({RESPONSE_FILE_ENV} is not set)",
            hint='`eval "$(gitlab-machine-driver job init)"` makes one',
        )
    work = Path(response).parent
    made_by_init = work.name.startswith(WORK_PREFIX) and work.parent == Path(tempfile.gettempdir())
    if Path(response).exists():
        job = read_job(response)
        job_dir = JobDir(load_settings(args.config_path).state_dir, job.id)
        if job_dir.exists():
            raise DriverError(
                f"job {job.id} still has a machine or state ({job_dir.path})",
                hint="run `gitlab-machine-driver cleanup` first: it removes the machine",
            )
    if made_by_init:
        shutil.rmtree(work, ignore_errors=True)
        print(f"# removed {work}")
    else:
        print(f"# {response} was not made by `job init`: left in place")
    print("unset " + " ".join(EXPORTED))
    return 0
