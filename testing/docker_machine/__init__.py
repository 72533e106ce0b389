"""A test double for the docker-machine program (v0.16.2), standard library only.

It keeps docker-machine's store layout, outputs and exit codes (see
/work/shared/reference/docker-machine-none-driver.txt and docker-machine.md), and
the rough edges measured on the genuine binary: config.json saved non-atomically,
the unlocked certificate bootstrap, the 2-second pause and exit 3 of failed creates,
unknown drivers and flags refused as urfave/cli does, entries whose driver plugin
is missing. Drivers (drivers.py): `none` and `generic` as upstream's, and `local`,
the double's own cloud. A `local` or `generic` machine is a simulated VM: a real
OpenSSH server with its own host key and, when running as root, its own network
namespace, address, private /tmp, /run, /builds, /cache, and a real dockerd.

Modules, each depending only on those above it:
  common     constants, MachineError, log.Info output
  gotext     Go's encoding/json, text/template, tabwriter, as docker-machine prints
  store      the storage: config.json (saved as libmachine does), vm.json, double.json
  faults     fault injection from double.json
  flags      flag parsing, "Incorrect Usage." and command help
  drivers    the known drivers, their flags, pre-create checks, engine ports
  certs      CA, client and server certificates (openssl), SSH keys
  engine     TLS client of a machine's Docker engine
  netns      VM processes and network namespaces, host side
  vminit     the init running inside a VM (sshd, dockerd)
  machines   making, booting and powering VMs; machine state and URL
  create     `create`
  commands   `inspect`, `url`, `rm` (the driver's), and `status`, `ip`, `ssh`, `config`,
             `env`, `start`, `stop`, `kill`, `restart` (the double's own tests and an
             operator debugging the demo by hand use them)
  listing    `ls`
  power      what a `start` changes (a new address), `regenerate-certs`
  helpers    for tests: what happens behind docker-machine's back, what is left over
  cli        global flags and the command table

Every invocation is appended to <storage>/calls.log. Faults and settings are
read from <storage>/double.json at each invocation (set them with `set_faults`);
a fault {"times": N} fires for the next N uses, -1 for always:

  "engine": "dockerd" | "none"      a real dockerd in each VM (default when root)
  "vm_mode": "netns" | "local"      namespaces (default when root) or 127.0.0.1:port
  "create_fail": {"times", "message", "leave": "error" | "none" | "vm"}
  "create_rate_limit": {"times"}    AWS-style RequestLimitExceeded, leaves an Error entry
  "create_precheck_fail": {"times", "message"}
                                    the driver's pre-create check fails: exit 3
  "create_hang": {"times"}          sleeps forever once config.json is written
  "create_delay": SECONDS           a slow cloud
  "ssh_never_ready": {"times"}      port 22 accepts TCP but never speaks SSH
  "rm_fail": {"times", "message", "hang"}
                                    the cloud refuses to remove the VM (after hanging
                                    for "hang" seconds, if given)
  "boot_timeout": SECONDS           how long a create waits for SSH and the engine
  "fail_pause": SECONDS             a failed create's pause before exiting (2.0)
  "save_gap": SECONDS               widens config.json's empty/absent window (0.0)
  "keygen_time": SECONDS            scale of the CA and client key generation time (0.2)
  "start_new_address": {"times"}    a start brings the VM back at a new address: `ip`,
                                    `url`, `ssh` say so, `inspect` keeps the old one, the
                                    engine's certificate fails until `regenerate-certs`
  "start_fail": {"times", "message"}
                                    the cloud refuses to start the VM
  "start_hang": {"times"}           a start that never returns
  "start_delay": SECONDS            a slow cloud's start
  "stop_fail": {"times", "message"} the cloud refuses to stop the VM

The helpers in helpers.py (`set_faults`, `kill_vm`, `kill_sshd`, `rotate_host_key`,
`make_driver_missing`, `vm_pids`, `teardown_all`, ...) are for tests;
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
