"""docker-machine's command line: global flags, the command table, exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from .commands import (
    cmd_config,
    cmd_env,
    cmd_inspect,
    cmd_ip,
    cmd_rm,
    cmd_ssh,
    cmd_status,
    cmd_url,
    power_action,
)
from .common import VERSION, MachineError, go_quote, info, info_to_stderr
from .create import cmd_create
from .flags import GLOBAL_FLAGS, UsageError, parse_flags
from .helpers import teardown_all
from .listing import cmd_ls
from .power import cmd_regenerate_certs
from .store import Store, log_call
from .vminit import vm_init_main

APP_HELP = (
    "Usage: docker-machine [OPTIONS] COMMAND [arg...]\n\n"
    "Create and manage machines running Docker.\n\n"
    f"Version: {VERSION.split('version ', 1)[1]}\n\n"
    "Run 'docker-machine COMMAND --help' for more information on a command.\n"
)
# Commands of docker-machine the double does not play: the driver never runs them.
UNIMPLEMENTED = {"active", "mount", "provision", "scp", "upgrade", "help"}


def main(argv: list[str]) -> int:
    info_to_stderr(False)
    try:
        return run(argv)
    except UsageError as exc:  # urfave/cli: the help on stdout, the error by log.Error
        sys.stdout.write(f"Incorrect Usage.\n\n{exc.help}")
        sys.stdout.flush()
        print(exc.message, file=sys.stderr, flush=True)
        return 1
    except MachineError as exc:
        print(exc.message, file=sys.stderr, flush=True)
        return exc.code
    except BrokenPipeError:
        return 1


def run(argv: list[str]) -> int:
    if argv[:1] == ["_vm-init"]:
        return vm_init_main(argv[1])
    try:
        values, rest = parse_flags(argv, GLOBAL_FLAGS, interspersed=False)
    except UsageError as exc:
        exc.help = APP_HELP
        raise
    if values.get("version") or rest[:1] == ["version"]:
        info(VERSION)
        return 0
    root = (
        values.get("storage-path") or os.environ.get("MACHINE_STORAGE_PATH") or "~/.docker/machine"
    )
    store = Store(root)
    if rest[:1] == ["_teardown"]:  # not docker-machine's: clean up after a demo or a crash
        teardown_all(store.root)
        return 0
    log_call(store, argv)
    if not rest or values.get("help"):
        sys.stdout.write(APP_HELP)
        return 0
    command, args = rest[0], rest[1:]
    handlers: dict[str, Callable[[Store, list[str]], int]] = {
        "create": cmd_create,
        "rm": cmd_rm,
        "inspect": cmd_inspect,
        "ip": cmd_ip,
        "url": cmd_url,
        "status": cmd_status,
        "config": cmd_config,
        "env": lambda s, a: cmd_env(s, a, argv),
        "ls": cmd_ls,
        "ssh": cmd_ssh,
        "start": lambda s, a: power_action(s, a, "start"),
        "stop": lambda s, a: power_action(s, a, "stop"),
        "kill": lambda s, a: power_action(s, a, "kill"),
        "restart": lambda s, a: power_action(s, a, "restart"),
        "regenerate-certs": cmd_regenerate_certs,
    }
    if command in handlers:
        return handlers[command](store, args)
    if command in UNIMPLEMENTED:
        raise MachineError(f"docker-machine double: {go_quote(command)} is not implemented")
    raise MachineError(
        f"docker-machine: '{command}' is not a docker-machine command. See 'docker-machine --help'."
    )
