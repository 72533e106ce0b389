"""prepare's fast path: ask the pool service to take a ready machine for this job.

The service (driver.pool.claims) holds the validated settings and each ready
machine's open SSH connection; asking it over its Unix socket spares this
process pydantic, structlog and the rest of prepare's imports. Standard library
only (tests/unit/stages/test_prepare_fast.py checks): whatever goes wrong here
(no service, another config, no answer in time, a miss) ends in False, and
prepare itself runs as before, with its full checks and its own error messages.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tomllib

from driver.config_file import config_path, default_state_dir
from driver.contract import RESPONSE_FILE_ENV
from driver.job_log import PREFIX, write
from driver.procs import ancestors, pid_namespace

SOCKET_NAME = "claim.sock"  # in <state_dir>/pool/
CONNECT_TIMEOUT = 1.0
# The service's claim takes tens of milliseconds; each dead machine it passes over up
# to CLAIM_CHECK_TIMEOUT (3 s). Given up after this: prepare itself goes on, and takes
# over a machine the service took for it meanwhile (driver.stages.claim.claimed_for).
ANSWER_TIMEOUT = 20.0
MAX_REPLY = 64 * 1024

CLAIMED, MISS, NOT_HERE, FAILED, ERROR = "claimed", "miss", "not_here", "failed", "error"


def claim_socket(state_dir: str) -> str:
    return os.path.join(state_dir, "pool", SOCKET_NAME)


def claimed_by_pool(config_given: str | None) -> bool:
    """Whether the pool service took a machine for this job (its lines are in the job
    log then); False: prepare does the work itself."""
    try:
        config = os.path.abspath(config_path(config_given))
        with open(config, "rb") as f:
            state_dir = tomllib.load(f).get("state_dir") or str(default_state_dir())
        response_file = os.environ.get(RESPONSE_FILE_ENV)
        if not isinstance(state_dir, str) or not response_file:
            return False
        path = claim_socket(state_dir)
        if not os.path.exists(path):
            return False
        request = {
            "config": config,
            "response_file": os.path.abspath(response_file),
            "pid": os.getpid(),
            "owners": ancestors(),
            "pid_ns": pid_namespace(),
        }
        reply = ask(path, request)
    except (OSError, ValueError, TypeError):  # no service, no answer: prepare goes on
        return False
    return reply_says_claimed(reply)


def ask(path: str, request: dict[str, object]) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(path)
        sock.settimeout(ANSWER_TIMEOUT)
        sock.sendall(json.dumps(request).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks, size = [], 0
        while size <= MAX_REPLY and (chunk := sock.recv(65536)):
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def reply_says_claimed(raw: bytes) -> bool:
    """Show the service's lines in the job log; True if it took a machine for the job."""
    try:
        reply = json.loads(raw)
    except ValueError:
        return False
    if not isinstance(reply, dict):
        return False
    lines = reply.get("lines")
    if isinstance(lines, list):
        for line in lines:
            if isinstance(line, str):
                write(sys.stdout, f"{PREFIX} {line}")
    return reply.get("outcome") == CLAIMED
