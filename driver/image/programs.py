"""The shell programs image mode runs in its containers and in the VM, from ``sh/``.

``detect-shell.sh`` is the docker executor's detect script: the build and helper
containers run ``sh -c <it>`` (COMMAND) after their ENTRYPOINT, exactly as on
docker, and the shell it finds (or the one the entrypoint runs) reads
``keeper.sh`` (POSIX sh) from the container's stdin, where docker writes a
stage's script: every entrypoint the docker executor accepts starts the keeper.
The keeper prints its PID and runs each stage whose token arrives on its channel
dir's FIFO (driver/image/stage.py, the VM side in driver/stages/run.py) with the
same detect script; ``helper-prelude.sh`` goes before it in the helper.
``wait-ports.sh`` (bash) runs in the VM, where the services' addresses are
reachable, and says which answer.

The texts are sent as they are (on stdin, ``bash -c '<text>'``): the pool compares
a running helper's KEEPER_LABEL with ``digest(HELPER_KEEPER)``, so a change to
these files restarts pooled helpers started before it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from driver.image.stage import CHANNEL_MOUNT

SH = Path(__file__).parent / "sh"
KEEPER_MARK = "gmd-keeper"
# On each container the keeper was written to: which keeper (digest()) it runs.
KEEPER_LABEL = "gitlab-machine-driver.keeper"


def _read(name: str) -> str:
    return (SH / name).read_text(encoding="utf-8")


_DETECT = _read("detect-shell.sh").rstrip("\n")
# The docker executor's detect script: the first shell found reads its program from stdin.
DETECT_SHELL = _DETECT.replace("@SETSID@", "")
# The build and helper containers' command, the docker executor's: whatever ENTRYPOINT
# the container has, what it runs then reads the keeper from stdin.
COMMAND = ["sh", "-c", DETECT_SHELL]
# Each stage's: through setsid where the image has it ($g, set by the keeper), the stage
# gets its own process group, so a script's `kill 0` (a common cleanup trap) cannot take
# the keeper, and a cancel ends that group.
_STAGE_SHELL = _DETECT.replace("@SETSID@", "$g ")
_KEEPER = _read("keeper.sh").replace("@MARK@", KEEPER_MARK).replace("@STAGE_SHELL@", _STAGE_SHELL)


def keeper(channel: str = CHANNEL_MOUNT) -> str:
    """Run each stage whose token arrives on <channel>/ctl, one at a time (POSIX sh).

    The stage runs in a foreground command substitution, not `&`: an asynchronous list
    would start with SIGINT and SIGQUIT ignored, for good. Its FIFOs open first (the
    wrapper in the VM waits for "started" on rc to know they are open), then its exit
    code is written to rc. No channel (not bound): wait on the container's stdin, which
    never delivers.

    A stage under setsid has a stopper beside it, in the keeper's process group: each
    TERM or KILL line the wrapper writes to the stage's `stop` FIFO goes to the stage's
    process group and is acknowledged on `ack` (a cancel as quick as in the VM's shell;
    without an answer the wrapper falls back to a `docker exec`). It ends when the
    wrapper closes `stop`.

    The substitution prints its PID (the stage's process group under setsid), then execs
    the shell; once the shell exits, what is left in that group is killed, as docker
    ends a container with its shell. Else a background process still holding the
    stage's output keeps the stage open, even one the script's `trap 'kill 0' EXIT`
    meant to end: bash loses a SIGTERM that reaches its forked child before the exec.
    """
    return _KEEPER.replace("@CHANNEL@", channel)


def digest(program: str) -> str:
    """What KEEPER_LABEL holds for a container given ``program`` on its stdin."""
    return hashlib.sha256(program.encode()).hexdigest()[:16]


KEEPER = keeper()
# The helper image has gitlab-runner-helper; the runner's scripts call gitlab-runner.
# umask 0000 as the helper's gitlab-runner-build sets it: a non-root build image can
# write to the clone, caches and artifacts.
HELPER_KEEPER = _read("helper-prelude.sh").rstrip("\n") + " " + KEEPER
# For each "index:ip:port,port" print "up <index>" once any port accepts a connection;
# stop at the deadline (the caller warns about the others). Sent single-quoted.
WAIT_PORTS = _read("wait-ports.sh")
assert "'" not in WAIT_PORTS, "wait-ports.sh is sent single-quoted"
