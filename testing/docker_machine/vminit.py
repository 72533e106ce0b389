"""The simulated VM's init, running inside the VM (`docker-machine _vm-init MACHINE_DIR`).

In a namespace it covers PRIVATE_DIRS with tmpfs and takes the machine's name as
hostname, then starts sshd and (when wanted) dockerd, reaps orphans as subreaper,
restarts sshd on SIGHUP and powers off cleanly on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from .common import DOCKERD, SSHD
from .netns import descendants, kill_until_gone, process_table
from .store import vm_disk, write_atomic

# A fresh VM's own /tmp, /run, job dirs and (empty) root home: nothing of the host's
# or another VM's files, and no host shell start-up files run on each SSH session.
PRIVATE_DIRS = (
    ("/tmp", "1777"),
    ("/run", "755"),
    ("/builds", "755"),
    ("/cache", "755"),
    ("/root", "700"),
    ("/usr/local/bin", "755"),  # where the driver installs gitlab-runner: never the host's
)
MS_NOSUID, MS_NODEV, MS_BIND = 2, 4, 4096
# What a VM's init hands its services: nothing of the process that created the VM (a
# runner's TMPDIR, gone when its job ends, made the VM's dockerd fail a later exec).
VM_ENVIRONMENT = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def private_mounts(mdir: str) -> None:
    """Private tmpfs on PRIVATE_DIRS; the machine dir and this interpreter stay reachable."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        def enc(s: str | None) -> bytes | None:
            return s.encode() if s is not None else None

        if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)):
            err = ctypes.get_errno()
            raise OSError(err, f"mount {target}: {os.strerror(err)}")

    # The store may live under /tmp, the interpreter under /root (pyenv): bind them back.
    keep = {}
    for path in (mdir, vm_disk(mdir), sys.base_prefix, sys.prefix):
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
            keep[path] = (fd, os.fstat(fd))
    for target, mode in PRIVATE_DIRS:
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    for path, (fd, before) in keep.items():
        try:
            now = os.stat(path)
            hidden = (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino)
        except FileNotFoundError:
            hidden = True
        if hidden:
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND, None)
        os.close(fd)


class VmInit:
    """PID 'one' of a simulated VM: starts sshd and dockerd, reaps, restarts sshd on SIGHUP."""

    def __init__(self, mdir: str) -> None:
        import selectors

        self.mdir = mdir
        with open(os.path.join(mdir, "vm.json"), encoding="utf-8") as f:
            self.vm: dict[str, Any] = json.load(f)
        self.selector = selectors.DefaultSelector()
        self.sshd: subprocess.Popen[bytes] | None = None
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.dockerd_started = 0.0
        self.engine_fallback = False
        self.listeners: list[socket.socket] = []
        self.held: list[socket.socket] = []
        self.pending: list[int] = []
        self.stopping = False

    def log(self, message: str) -> None:
        print(f"[dmd-init {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def run(self) -> int:
        import selectors

        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(sig, lambda signum, _frame: self.pending.append(signum))
        self.selector.register(read_end, selectors.EVENT_READ)
        self.start_ssh()
        self.start_engine()
        while True:
            for key, _ in self.selector.select(timeout=1.0):
                if key.fileobj == read_end:
                    with contextlib.suppress(BlockingIOError):
                        os.read(read_end, 512)
                elif isinstance(key.fileobj, socket.socket):
                    with contextlib.suppress(OSError):
                        self.held.append(key.fileobj.accept()[0])  # and never answer
            while self.pending:
                signum = self.pending.pop(0)
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self.shutdown()
                    return 0
                if signum == signal.SIGHUP:
                    self.restart_ssh()
                if signum == signal.SIGUSR1:  # `regenerate-certs`: dockerd takes new certs
                    self.restart_engine()
            self.reap()

    def listen_address(self) -> tuple[str, int]:
        return ("0.0.0.0" if self.vm["mode"] == "netns" else self.vm["ip"], self.vm["port"])

    def start_ssh(self) -> None:
        import selectors

        if self.vm.get("ssh") == "tarpit":  # accepts TCP, never completes a handshake
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(self.listen_address())
            listener.listen(128)
            self.listeners.append(listener)
            self.selector.register(listener, selectors.EVENT_READ)
            self.log("ssh tarpit listening")
            return
        config = os.path.join(self.mdir, "sshd_config")
        self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdin=subprocess.DEVNULL)
        self.log(f"sshd started, pid {self.sshd.pid}")

    def restart_ssh(self) -> None:
        if self.sshd is not None:
            self.stop_child(self.sshd, signal.SIGTERM, 5.0)
            self.sshd = None
        if not self.listeners:
            self.start_ssh()

    def start_engine(self) -> None:
        if not self.vm.get("engine"):
            return
        args = list(self.vm["engine_args"])
        if self.engine_fallback:
            args += ["--bridge=none", "--iptables=false"]
        env = dict(os.environ)
        env.update(e.split("=", 1) for e in self.vm.get("engine_env", []) if "=" in e)
        # dockerd finds containerd, runc and iptables on PATH
        env["PATH"] = env.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
        self.dockerd = subprocess.Popen([DOCKERD, *args], stdin=subprocess.DEVNULL, env=env)
        self.dockerd_started = time.monotonic()
        self.log(
            f"dockerd started, pid {self.dockerd.pid}"
            + (" (no bridge)" if self.engine_fallback else "")
        )

    def restart_engine(self) -> None:
        if self.dockerd is not None:
            self.stop_child(self.dockerd, signal.SIGTERM, 15.0)
            self.dockerd = None
        self.start_engine()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if self.sshd is not None and pid == self.sshd.pid:
                self.sshd = None
                self.log(f"sshd exited ({code})")
            elif self.dockerd is not None and pid == self.dockerd.pid:
                self.dockerd = None
                self.log(f"dockerd exited ({code})")
                self.on_engine_exit()

    def on_engine_exit(self) -> None:
        if self.stopping:
            return
        # Bridge networking needs iptables in the namespace; without it, run bare.
        if not self.engine_fallback and time.monotonic() - self.dockerd_started < 30:
            self.engine_fallback = True
            self.start_engine()
        else:  # tells a create waiting for the engine to stop waiting
            write_atomic(os.path.join(self.mdir, "engine.failed"), b"", 0o644)

    def stop_child(self, proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
        """Signal a child and reap it, escalating to SIGKILL after `timeout`."""
        os.kill(proc.pid, sig)  # an unreaped child: its pid cannot have been reused
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.waitpid(proc.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            if time.monotonic() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.02)

    def shutdown(self) -> None:
        """A clean power-off: dockerd first (it stops its containers), then the rest."""
        self.log("shutting down")
        self.stopping = True
        if self.dockerd is not None:
            self.stop_child(self.dockerd, signal.SIGTERM, 15.0)
        if self.sshd is not None:
            self.stop_child(self.sshd, signal.SIGTERM, 2.0)

        def live_descendants() -> list[int]:
            self.reap()  # as subreaper, every orphan of the VM is ours to reap
            table = process_table()
            return sorted(p for p in descendants({os.getpid()}, table) if table[p][1] != "Z")

        kill_until_gone(live_descendants, 10)


def vm_init_main(mdir: str) -> int:
    import ctypes
    import selectors  # noqa: F401  (imported before /tmp and /run are covered)

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    os.environ.clear()
    os.environ.update(VM_ENVIRONMENT)
    init = VmInit(mdir)
    if init.vm["mode"] == "netns":
        private_mounts(mdir)
        socket.sethostname(os.path.basename(os.path.normpath(mdir)))
    return init.run()
