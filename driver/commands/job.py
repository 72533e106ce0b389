"""job init: the environment gitlab-runner would give a job, for running stages by hand.

eval "$(gitlab-machine-driver job init --id 4242)"
gitlab-machine-driver config
gitlab-machine-driver prepare
gitlab-machine-driver run ./script.sh build_script
gitlab-machine-driver cleanup
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import tempfile
from pathlib import Path

from driver.contract import build_failure_code, system_failure_code
from driver.state import write_private


def synthetic_response(job_id: int, project_id: int) -> dict[str, object]:
    return {
        "id": job_id,
        "token": "synthetic-job-token",
        "job_info": {"name": "debug", "stage": "test", "project_id": project_id},
        "variables": [
            {"key": "CI_JOB_ID", "value": str(job_id), "public": True},
            {"key": "CI_PROJECT_ID", "value": str(project_id), "public": True},
        ],
    }


def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix=f"gmd-job-{args.id}-"))
    response = work / "response.json"
    if args.response:
        shutil.copyfile(args.response, response)
        response.chmod(0o600)
    else:
        write_private(response, json.dumps(synthetic_response(args.id, args.project)))
    env = {
        "TMPDIR": str(work),
        "JOB_RESPONSE_FILE": str(response),
        "BUILD_FAILURE_EXIT_CODE": str(build_failure_code()),
        "SYSTEM_FAILURE_EXIT_CODE": str(system_failure_code()),
        "BUILD_EXIT_CODE_FILE": str(work / "build_exit_code"),
    }
    print(f"# A job environment as gitlab-runner gives it; remove {work} when done.")
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0
