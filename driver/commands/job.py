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

from driver.contract import runner_env, synthetic_response
from driver.state import write_private


def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix=f"gmd-job-{args.id}-"))
    response = work / "response.json"
    if args.response:
        shutil.copyfile(args.response, response)
        response.chmod(0o600)
    else:
        write_private(response, json.dumps(synthetic_response(args.id, args.project)))
    env = runner_env(work, response)
    print(f"# A job environment as gitlab-runner gives it; remove {work} when done.")
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0
