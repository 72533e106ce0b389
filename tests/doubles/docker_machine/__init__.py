"""A test double for the docker-machine program (v0.16.2), standard library only.

It keeps docker-machine's store layout, outputs and exit codes (see
/work/shared/reference/docker-machine-none-driver.txt), so the driver under test
cannot tell it from the real program. Driver `none` behaves as upstream's. Any
other driver name makes a simulated VM: a real OpenSSH server with its own host
key and, when running as root, its own network namespace, address, private
/tmp, /run, /builds and /cache, and a real dockerd.

Every invocation is appended to <storage>/calls.log. Faults and settings are
read from <storage>/double.json at each invocation (set them with `set_faults`);
a fault {"times": N} fires for the next N uses, -1 for always:

  "engine": "dockerd" | "none"      a real dockerd in each VM (default when root)
  "vm_mode": "netns" | "local"      namespaces (default when root) or 127.0.0.1:port
  "create_fail": {"times", "message", "leave": "error" | "none" | "vm"}
  "create_rate_limit": {"times"}    AWS-style RequestLimitExceeded, leaves an Error entry
  "create_hang": {"times"}          sleeps forever once config.json is written
  "create_delay": SECONDS           a slow cloud
  "ssh_never_ready": {"times"}      port 22 accepts TCP but never speaks SSH
  "rm_fail": {"times", "message"}   the cloud refuses to remove the VM
  "boot_timeout": SECONDS           how long a create waits for SSH and the engine

The helpers in helpers.py (`set_faults`, `kill_vm`, `kill_sshd`,
`rotate_host_key`, `vm_pids`, `teardown_all`, ...) are for tests;
`docker-machine -s STORAGE _teardown` runs teardown_all from a shell.
"""

from __future__ import annotations

from .cli import main
from .helpers import (
    kill_sshd,
    kill_vm,
    leftover_namespaces,
    machine_names,
    make_driver_missing,
    rotate_host_key,
    set_faults,
    storage_pids,
    teardown_all,
    vm_pids,
)

__all__ = [
    "kill_sshd",
    "kill_vm",
    "leftover_namespaces",
    "machine_names",
    "main",
    "make_driver_missing",
    "rotate_host_key",
    "set_faults",
    "storage_pids",
    "teardown_all",
    "vm_pids",
]
