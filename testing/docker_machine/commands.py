"""The commands that act on existing machines: status, url, ip, inspect, config, env,
rm, ssh, start, stop, kill and restart."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from . import drivers
from .common import MachineError, go_quote, info, info_to_stderr
from .engine import engine_check
from .faults import RM_CLOUD_ERROR, request_id, take_fault
from .flags import HelpFlag, parse_command
from .gotext import NO_VALUE, GoTemplate, TemplateError, go_json
from .machines import current_ip, machine_state, machine_url, power_off, power_on
from .netns import destroy_vm, kill_until_gone, machine_pids
from .power import start_faults, stop_faults
from .store import Store, load_host, machine_exists, remove_entry


def target_name(store: Store, positional: list[str]) -> str:
    if len(positional) > 1:
        raise MachineError("Error: Expected one machine name as an argument")
    if positional:
        return positional[0]
    if machine_exists(store, "default"):
        return "default"
    raise MachineError('Error: No machine name(s) specified and no "default" machine exists')


def cmd_status(store: Store, args: list[str]) -> int:
    _, positional = parse_command(args, "status", "Get the status of a machine")
    name = target_name(store, positional)
    host = load_host(store, name)
    if drivers.missing(host):
        problem = drivers.not_loadable(host["DriverName"])
        raise MachineError(f"error getting state for host {name}: {problem}")
    info(machine_state(store, name, host))
    return 0


def cmd_url(store: Store, args: list[str]) -> int:
    _, positional = parse_command(args, "url", "Get the URL of a machine")
    name = target_name(store, positional)
    host = load_host(store, name)
    drivers.require(host)
    info(machine_url(store, name, host))
    return 0


def cmd_ip(store: Store, args: list[str]) -> int:
    _, positional = parse_command(args, "ip", "Get the IP address of a machine")
    names = positional or [target_name(store, [])]
    hosts = [(n, load_host(store, n)) for n in names]
    errors = []
    for name, host in hosts:
        ip = current_ip(store, name, host)
        if drivers.missing(host):
            errors.append(f"Error getting IP address: {drivers.not_loadable(host['DriverName'])}")
        elif host.get("DriverName") == "local" and machine_state(store, name, host) != "Running":
            # Driver.GetIP of a stopped VM: virtualbox's ErrHostIsNotRunning (amazonec2's
            # public address is released); never the create's stale address.
            errors.append("Error getting IP address: Host is not running")
        elif ip:
            info(ip)
        else:
            errors.append("Error getting IP address: IP address is not set")
    if errors:
        raise MachineError("\n".join(errors))
    return 0


INSPECT_FLAGS = [HelpFlag("format, f", "string", "Format the output using the given go template.")]


def cmd_inspect(store: Store, args: list[str]) -> int:
    usage = "Inspect information about a machine"
    values, positional = parse_command(args, "inspect", usage, INSPECT_FLAGS)
    name = target_name(store, positional)
    host = load_host(store, name)
    if drivers.missing(host):  # the host as loaded: its Driver is an errdriver
        host = {**host, "Driver": {"Name": host["DriverName"]}}
    if not values.get("format"):
        info(go_json(host, indent=4))
        return 0

    def to_json(indent: int | None) -> Callable[[Any], str]:
        return lambda v: go_json(None if v is NO_VALUE else v, indent=indent, sort_keys=True)

    funcs = {"json": to_json(None), "prettyjson": to_json(4)}
    try:
        template = GoTemplate(values["format"], funcs)
    except TemplateError as exc:
        raise MachineError(f"Template parsing error: {exc}\n") from None
    try:
        text = template.execute(host)
    except TemplateError as exc:
        raise MachineError(str(exc)) from None
    sys.stdout.write(text + "\n")
    return 0


def connection(store: Store, name: str, host: dict[str, Any]) -> str:
    """check.DefaultConnChecker.Check: the URL, once its certificates verify."""
    drivers.require(host)
    url = machine_url(store, name, host)
    engine_check(host, re.sub(r"^[a-z]+://", "", url).split("/")[0])
    return url


def cmd_config(store: Store, args: list[str]) -> int:
    info_to_stderr()
    swarm = HelpFlag("swarm", "bool", "Display the Swarm config instead of the Docker daemon")
    usage = "Print the connection config for machine"
    _, positional = parse_command(args, "config", usage, [swarm])
    name = target_name(store, positional)
    host = load_host(store, name)
    try:
        url = connection(store, name, host)
    except MachineError as exc:
        raise MachineError(f"Error running connection boilerplate: {exc.message}") from None
    mdir = store.machine_dir(name)
    ca, cert, key = (go_quote(os.path.join(mdir, f)) for f in ("ca.pem", "cert.pem", "key.pem"))
    sys.stdout.write(f"--tlsverify\n--tlscacert={ca}\n--tlscert={cert}\n--tlskey={key}\n-H={url}\n")
    return 0


ENV_SHELLS = {  # shell: (prefix, delimiter, suffix, usage-hint format, comment)
    "fish": ("set -gx ", ' "', '";\n', "eval ({})", "#"),
    "powershell": ("$Env:", ' = "', '"\n', "& {} | Invoke-Expression", "#"),
    "cmd": ("SET ", "=", "\n", "\t@FOR /f \"tokens=*\" %i IN ('{}') DO @%i", "REM"),
    "emacs": ('(setenv "', '" "', '")\n',
              '(with-temp-buffer (shell-command "{}" (current-buffer)) (eval-buffer))', ";;"),
    "": ("export ", '="', '"\n', "eval $({})", "#"),
}  # fmt: skip


ENV_FLAGS = [
    HelpFlag("no-proxy", "bool", "Add machine IP to NO_PROXY environment variable"),
    HelpFlag(
        "shell",
        "string",
        "Force environment to be configured for a specified shell: "
        "[fish, cmd, powershell, tcsh, emacs], default is auto-detect",
    ),
    HelpFlag("swarm", "bool", "Display the Swarm config instead of the Docker daemon"),
    HelpFlag("unset, u", "bool", "Unset variables instead of setting them"),
]


def cmd_env(store: Store, args: list[str], argv: list[str]) -> int:
    info_to_stderr()
    usage = "Display the commands to set up the environment for the Docker client"
    values, positional = parse_command(args, "env", usage, ENV_FLAGS)
    if values.get("unset"):
        raise MachineError("Error: --unset is not supported by the docker-machine double")
    if len(positional) > 1:
        raise MachineError("Error: Expected one machine name as an argument")
    name = target_name(store, positional)
    host = load_host(store, name)
    try:
        url = connection(store, name, host)
    except MachineError as exc:
        raise MachineError(f"Error checking TLS connection: {exc.message}") from None
    shell = values.get("shell") or ""
    if not shell:
        if not os.environ.get("SHELL"):
            sys.stdout.write(
                "The default lines below are for a sh/bash shell, you can specify the shell "
                "you're using, with the --shell flag.\n\n"
            )
            raise MachineError("Error: Unknown shell")
        shell = os.path.basename(os.environ["SHELL"])
    prefix, delim, suffix, hint, comment = ENV_SHELLS.get(shell, ENV_SHELLS[""])
    variables = [
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_HOST", url),
        ("DOCKER_CERT_PATH", store.machine_dir(name)),
        ("DOCKER_MACHINE_NAME", name),
    ]
    if values.get("no-proxy"):  # add the machine's IP to the no_proxy list, once
        var = "no_proxy" if os.environ.get("no_proxy") else "NO_PROXY"
        hosts = [h for h in os.environ.get(var, "").split(",") if h]
        ip = host["Driver"].get("IPAddress", "")
        variables.append((var, ",".join(hosts if ip in hosts else [*hosts, ip])))
    text = "".join(f"{prefix}{k}{delim}{v}{suffix}" for k, v in variables)
    command_line = " ".join(["docker-machine", *argv])
    text += f"{comment} Run this command to configure your shell: \n"
    text += f"{comment} {hint.format(command_line)}\n"
    sys.stdout.write(text)
    return 0


def confirm(question: str) -> bool:
    sys.stdout.write(f"{question} (y/n): ")
    sys.stdout.flush()
    words = sys.stdin.readline().split()  # fmt.Scanln: exactly one word on the line
    return len(words) == 1 and words[0].lower().startswith("y")


RM_FLAGS = [
    HelpFlag(
        "force, f",
        "bool",
        "Remove local configuration even if machine cannot be removed, "
        "also implies an automatic yes (`-y`)",
    ),
    HelpFlag(
        "y",
        "bool",
        "Assumes automatic yes to proceed with remove, without prompting further user confirmation",
    ),
]


def cmd_rm(store: Store, args: list[str]) -> int:
    values, names = parse_command(args, "rm", "Remove a machine", RM_FLAGS)
    if not names:
        raise MachineError("Error: Expected to get one or more machine names as arguments")
    force, yes = bool(values.get("force")), bool(values.get("y"))
    info(f"About to remove {', '.join(names)}")
    info("WARNING: This action will delete both local reference and remote instance.")
    if not (yes or force) and not confirm("Are you sure?"):
        return 0
    errors = []

    def collect(message: str) -> None:
        if force:
            print(message, file=sys.stderr, flush=True)
        errors.append(message)

    for name in names:
        try:
            remove_remote(store, name, force)
            removed_remote = True
        except MachineError as exc:
            collect(f"Error removing host {go_quote(name)}: {exc.message}")
            removed_remote = False
        if removed_remote or force:
            if machine_exists(store, name):
                if not removed_remote:
                    destroy_vm(store, name)  # the cloud may keep it; nothing stays on this host
                remove_entry(store, name)
                info(f"Successfully removed {name}")
            else:
                collect(f'Can\'t remove "{name}"')
    if errors and not force:
        raise MachineError("\n".join(errors))
    return 0


def remove_remote(store: Store, name: str, force: bool) -> None:
    """Driver.Remove: the cloud call, which the rm_fail fault makes fail (and which an
    entry whose driver plugin is missing cannot make at all)."""
    host = load_host(store, name)
    fault = None if drivers.missing(host) else take_fault(store, "rm_fail")
    if fault and fault.get("hang"):  # a cloud API that hangs, then fails
        time.sleep(float(fault["hang"]))
    if fault or drivers.missing(host):
        if force:  # the entry goes; the cloud may still run (and bill) the VM
            with open(store.path("orphans.log"), "a", encoding="utf-8") as f:
                f.write(f"{name}\n")
        drivers.require(host)
        message = str((fault and fault.get("message")) or RM_CLOUD_ERROR)
        raise MachineError(f"{message}\n\tstatus code: 500, request id: {request_id()}")
    destroy_vm(store, name)


def ssh_args(store: Store, name: str, host: dict[str, Any]) -> list[str]:
    """libmachine's external SSH client command line."""
    driver = host["Driver"]
    if host.get("DriverName") == "none":  # nothing to log in to: ssh prints its usage
        user, address, port, key = "", "", 0, ""
    else:  # empty SSHUser means root, 0 means port 22, no key path means the machine's
        user = driver.get("SSHUser") or "root"
        address = current_ip(store, name, host)
        port = driver.get("SSHPort") or 22
        key = driver.get("SSHKeyPath") or os.path.join(store.machine_dir(name), "id_rsa")
    args = ["ssh", "-F", "/dev/null"]
    for option in (
        "ConnectionAttempts=3",
        "ConnectTimeout=10",
        "ControlMaster=no",
        "ControlPath=none",
        "LogLevel=quiet",
        "PasswordAuthentication=no",
        "ServerAliveInterval=60",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
    ):
        args += ["-o", option]
    args.append(f"{user}@{address}")
    if key:
        args += ["-o", "IdentitiesOnly=yes", "-i", key]
    return [*args, "-p", str(port)]


def cmd_ssh(store: Store, args: list[str]) -> int:
    if not args:
        raise MachineError("Error: Expected one machine name as an argument")
    name, command = args[0], args[1:]
    host = load_host(store, name)
    drivers.require(host)
    if machine_state(store, name, host) != "Running":
        raise MachineError(f"Error: Cannot run SSH command: Host {go_quote(name)} is not running")
    returncode = subprocess.run([*ssh_args(store, name, host), *command], check=False).returncode
    if returncode > 0:
        raise MachineError(f"exit status {returncode}")
    if returncode < 0:  # as Go's exec.ExitError words it
        sig = signal.Signals(-returncode)
        words = {signal.SIGKILL: "killed", signal.SIGTERM: "terminated", signal.SIGINT: "interrupt"}
        raise MachineError(f"signal: {words.get(sig, sig.name)}")
    return 0


def power_action(store: Store, args: list[str], action: str) -> int:
    """start, stop, kill and restart, for one or more machines (runAction)."""
    _, positional = parse_command(args, action, f"{action.capitalize()} a machine")
    names = positional or [target_name(store, [])]
    hosts = [(n, load_host(store, n)) for n in names]
    actions = {"start": vm_start, "stop": vm_stop, "kill": vm_kill, "restart": vm_restart}
    errors = []
    for name, host in hosts:
        try:
            drivers.require(host)
            actions[action](store, name, host)
        except MachineError as exc:
            errors.append(exc.message)
    if errors:
        raise MachineError("\n".join(errors))
    if action in ("start", "restart"):
        info(
            f"{action.capitalize()}ed machines may have new IP addresses. You may need to re-run "
            "the `docker-machine env` command."
        )
    return 0


def no_driver(host: dict[str, Any], verb: str) -> None:
    if host.get("DriverName") == "none":
        raise MachineError(f"hosts without a driver cannot be {verb}")


def not_generic(host: dict[str, Any], verb: str) -> None:
    """drivers/generic/generic.go: Start and Stop return this error (a host it did not make)."""
    if host.get("DriverName") == "generic":
        raise MachineError(f"generic driver does not support {verb}")


def vm_start(store: Store, name: str, host: dict[str, Any]) -> None:
    info(f"Starting {go_quote(name)}...")
    if machine_state(store, name, host) == "Running":
        raise MachineError(f"Machine {go_quote(name)} is already running.")
    not_generic(host, "start")
    start_faults(store, name)
    power_on(store, name)
    info(f"Machine {go_quote(name)} was started.")
    info("Waiting for SSH to be available...")
    info("Detecting the provisioner...")


def vm_stop(store: Store, name: str, host: dict[str, Any]) -> None:
    info(f"Stopping {go_quote(name)}...")
    if machine_state(store, name, host) == "Stopped":
        raise MachineError(f"Machine {go_quote(name)} is already stopped.")
    no_driver(host, "stopped")
    not_generic(host, "stop")
    stop_faults(store)
    power_off(store, name)
    info(f"Machine {go_quote(name)} was stopped.")


def vm_kill(store: Store, name: str, host: dict[str, Any]) -> None:
    info(f"Killing {go_quote(name)}...")
    if machine_state(store, name, host) == "Stopped":
        raise MachineError(f"Machine {go_quote(name)} is already stopped.")
    no_driver(host, "killed")
    kill_until_gone(lambda: machine_pids(store, name))
    info(f"Machine {go_quote(name)} was killed.")


def vm_restart(store: Store, name: str, host: dict[str, Any]) -> None:
    info(f"Restarting {go_quote(name)}...")
    no_driver(host, "restarted")
    if machine_state(store, name, host) == "Running":
        power_off(store, name)
    power_on(store, name)
    info("Waiting for SSH to be available...")
    info("Detecting the provisioner...")
