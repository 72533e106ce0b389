"""The system OpenSSH client, pinned to each job's machine.

Every job gets its own ssh_config, known_hosts and master socket in its state
dir. The host key is learned at first contact (accept-new, into a known_hosts
file that holds only this machine) and enforced (StrictHostKeyChecking yes)
on every connection after that. One master connection (ControlMaster) serves
every stage; if it dies, the next stage reconnects against the pinned key.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from driver import process
from driver.errors import CommandError, DriverError
from driver.settings import SSHSettings
from driver.state import HOST_ALIAS, Address, MachineDir, write_private

CONTROL_PERSIST = "10m"  # the master outlives idle gaps between stages, not a lost job
HOST_KEY_CHANGED = re.compile(
    r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed"
)


class HostKeyChanged(DriverError):
    """The machine presented another host key than the one pinned: someone else answers."""


# Unix socket paths are limited to 108 bytes; ssh adds ~17 for its temporary name.
MAX_CONTROL_PATH = 90


def config_text(
    machine_dir: MachineDir,
    *,
    machine: str,
    host: str,
    port: int,
    user: str,
    key_path: str,
    connect_timeout: float,
    keepalive_interval: float,
) -> str:
    return "\n".join(
        [
            f"# Written by gitlab-machine-driver for machine {machine}.",
            f"# Debug with: ssh -F {machine_dir.ssh_config} {HOST_ALIAS}",
            f"Host {HOST_ALIAS}",
            f"  HostName {host}",
            f"  Port {port}",
            f"  User {user}",
            f"  IdentityFile {key_path}",
            "  IdentitiesOnly yes",
            "  IdentityAgent none",
            "  BatchMode yes",
            f"  HostKeyAlias {machine}",
            f"  UserKnownHostsFile {machine_dir.known_hosts}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  UpdateHostKeys no",
            "  CheckHostIP no",
            f"  ControlPath {machine_dir.control_path}",
            "  ControlMaster auto",
            f"  ControlPersist {CONTROL_PERSIST}",
            f"  ConnectTimeout {int(connect_timeout)}",
            f"  ServerAliveInterval {int(keepalive_interval)}",
            "  ServerAliveCountMax 3",
            "  ForwardAgent no",
            "  ForwardX11 no",
            "  RequestTTY no",
            "  LogLevel ERROR",
            "",
        ]
    )


def write_config(
    machine_dir: MachineDir,
    settings: SSHSettings,
    *,
    machine: str,
    address: Address,
    durable: bool = True,
) -> None:
    write_private(
        machine_dir.ssh_config,
        config_text(
            machine_dir,
            machine=machine,
            host=address.host,
            port=address.port,
            user=address.user,
            key_path=address.key_path,
            connect_timeout=settings.connect_timeout,
            keepalive_interval=settings.keepalive_interval,
        ),
        durable=durable,
    )


def check_control_path(machine_dir: MachineDir) -> None:
    if len(str(machine_dir.control_path)) > MAX_CONTROL_PATH:
        raise DriverError(
            f"the SSH control socket path {machine_dir.control_path} is too long for a unix socket",
            hint=f"set state_dir to a path shorter than {MAX_CONTROL_PATH - 20} characters",
        )


def argv(machine_dir: MachineDir, *options: str) -> list[str]:
    return machine_dir.ssh_argv(*options)


def run(
    machine_dir: MachineDir,
    remote_command: str,
    *,
    timeout: float,
    input: bytes | None = None,
    stdin_file: Path | None = None,
    check: bool = True,
    what: str = "",
    hint: str = "",
) -> process.Result:
    return process.run(
        [*argv(machine_dir), remote_command],
        timeout=timeout,
        input=input,
        stdin_file=stdin_file,
        check=check,
        what=what,
        hint=hint,
    )


def wait_ready(
    machine_dir: MachineDir,
    *,
    target: str,
    timeout: float,
    connect_timeout: float,
    progress: Callable[[str], None],
    interval: float = 1.0,
    report_every: float = 10.0,
    pinned: bool = False,
) -> None:
    """Wait until the machine accepts our key; pins its host key at the first contact
    (``pinned``: the key in known_hosts already is the only one accepted).

    The connection that succeeds stays on as the job's master connection.
    """
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + report_every
    progress(f"Waiting for SSH on {target} (up to {timeout:g}s)...")
    last_error = ""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DriverError(
                f"SSH on {target} did not become ready within {timeout:g}s"
                + (f"; last error: {last_error}" if last_error else ""),
                hint="the VM may have failed to boot or its firewall blocks port 22 from "
                "the runner host; raise [ssh] ready_timeout if the cloud is just slow",
            )
        try:
            checking = "yes" if pinned else "accept-new"
            process.run(
                # First contact: learn the host key; it is enforced from here on.
                [*argv(machine_dir, "-o", f"StrictHostKeyChecking={checking}"), "true"],
                timeout=min(remaining, connect_timeout + 5),
                what="ssh",
            )
            return
        except CommandError as e:
            if HOST_KEY_CHANGED.search(e.output):
                # Pinned at an earlier attempt, different now: someone else answers there.
                when = "at its creation" if pinned else "at first contact a moment ago"
                raise HostKeyChanged(
                    f"the machine at {target} presented a different SSH host key than {when}: "
                    "refusing to connect; this may be an attack "
                    "(someone else answering at its address)",
                    hint="the machine is not used; check the cloud for a VM at that address "
                    "that is not this machine",
                ) from None
            last_error = (e.output.splitlines() or [e.message])[-1]
        if time.monotonic() >= next_report:
            waited = timeout - (deadline - time.monotonic())
            progress(f"Still waiting for SSH on {target} ({waited:.0f}s): {last_error}")
            next_report += report_every
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def hand_over_master(source: MachineDir, target: MachineDir) -> bool:
    """Give ``target`` the master connection open at ``source`` (a pool machine's, to the
    job that claimed it): its socket is renamed, the connection itself goes on, so the
    job's stages need no new connection. False if ``source`` had none.

    The master keeps the options it was opened with (the pool's ssh_config, the same
    settings and pinned key); a rekey must present the same host key. When it ends it
    removes the socket path it was opened at, not ``target``'s: ssh then finds a stale
    socket at ``target``, removes it and connects afresh (ControlMaster auto)."""
    try:
        os.rename(source.control_path, target.control_path)
    except FileNotFoundError:
        return False
    return True


def stop_master(machine_dir: MachineDir) -> None:
    """Close the job's master connection (and with it every session on it)."""
    if not machine_dir.ssh_config.exists():
        return
    process.run(argv(machine_dir, "-O", "exit"), timeout=10, check=False)
