"""What every part of the double shares: constants, the error type, and log.Info output."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import TextIO

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9\-\.]*$")
VERSION = "docker-machine version 0.16.2, build bd45ab13"
CONFIG_VERSION = 3
ENGINE_PORT = 2376  # what cloud drivers use; generic and local take --*-engine-port
SSHD = "/usr/sbin/sshd"
DOCKERD = "/usr/sbin/dockerd"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
LAUNCHER = os.path.join(os.path.dirname(PACKAGE_DIR), "bin", "docker-machine")


class MachineError(Exception):
    """An error docker-machine prints with log.Error before exiting with `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _Output:
    stream: TextIO | None = None  # None: sys.stdout as it is now (pytest may swap it)


def info(message: str) -> None:
    """log.Info: stdout, except for `config` and `env`, which print it on stderr."""
    print(message, file=_Output.stream or sys.stdout, flush=True)


def info_to_stderr(on: bool = True) -> None:
    _Output.stream = sys.stderr if on else None


def go_quote(text: str) -> str:
    """Go's %q for the plain strings machine names and messages are."""
    return json.dumps(text, ensure_ascii=False)


def does_not_exist(name: str) -> str:
    return (
        f'Docker machine {go_quote(name)} does not exist. Use "docker-machine ls" to list '
        'machines. Use "docker-machine create" to add a new one.'
    )
