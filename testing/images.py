"""Container images for image-mode tests, made from the host's own Debian files, and a
registry on a test host of the docker-machine double to serve them from.

No registry outside this machine is reachable, so every image is a tarball of
host files (`docker import`ed and pushed on the registry's host):

- `ci/bash`: bash, git, coreutils and the docker CLI (with their libraries);
- `ci/busybox`: only busybox-static's `sh` and applets, no bash;
- `ci/web`: busybox `httpd` serving a page on port 8080 (EXPOSE 8080), a service;
- `ci/helper`: `ci/bash` plus a stand-in `gitlab-runner-helper`, as the helper image;
- `ci/crashing`: a postgres-like service (EXPOSE 5432) that exits at once with an error.
- `ci/entry`: `ci/busybox` whose ENTRYPOINT script sets FROM_ENTRYPOINT, then execs
  its arguments (the docker executor's requirement);
- `ci/stdin-entry`: `ci/busybox` whose ENTRYPOINT ignores its arguments and runs a
  shell, which reads its program from stdin (docker accepts that too).
- `ci/docker:dind` and `ci/docker:cli` (`dind_images()`, only for the tests and the bench
  that need them: ~150 MB): stand-ins for docker's `docker:dind` and `docker:cli` with the
  host's dockerd, containerd, runc, iptables and docker CLI, and entrypoints doing what
  docker's `dockerd-entrypoint.sh` and `docker-entrypoint.sh` do.

`Registry.start` runs Debian's docker-registry twice on one test host: :5000 open,
:5001 requiring a login (htpasswd, bcrypt).
"""

from __future__ import annotations

import contextlib
import crypt  # bcrypt for the registry's htpasswd; deprecated, still in 3.11
import fcntl
import io
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driver.procs import pid_alive
from testing.world import Env, destroy_world, new_world

FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# Who needs forwarding on, and its value before the first of them: test sessions and
# benches overlap on one host, and one restoring it under another cut that one's pulls.
FORWARD_USERS = Path("/tmp/gmd-tests-ip-forward.json")
REGISTRY_CONFIG = """version: 0.1
storage:
  filesystem:
    rootdirectory: {root}/data-{port}
http:
  addr: :{port}
{auth}"""
AUTH_CONFIG = """auth:
  htpasswd:
    realm: gmd-tests
    path: {root}/htpasswd
"""
BASH_TOOLS = [
    "/bin/bash", "/usr/bin/git", "/usr/bin/docker", "/bin/cat", "/bin/ls", "/bin/mkdir",
    "/bin/rm", "/bin/sleep", "/bin/date", "/usr/bin/wc", "/usr/bin/head", "/usr/bin/id",
    "/bin/hostname", "/bin/uname", "/usr/bin/env", "/bin/chmod", "/usr/bin/find",
    "/bin/grep", "/bin/sed", "/usr/bin/tr", "/usr/bin/touch", "/usr/bin/stat",
    "/usr/bin/readlink", "/bin/ln", "/usr/bin/tail", "/bin/sh",
]  # fmt: skip
# What the runner's cache and artifact stages call, standing in for gitlab-runner-helper.
HELPER_SCRIPT = """#!/bin/bash
case "$1" in
  --version) echo "gitlab-runner-helper 17.9.0 (stand-in)";;
  cache-archiver|artifacts-uploader) echo "helper stand-in: $1 in $(pwd)";;
  *) echo "helper stand-in: $*";;
esac
"""
# What postgres says when started without its password variable.
CRASH_MESSAGE = "Error: Database is uninitialized and superuser password is not specified."
PASSWD = "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000::/tmp:/bin/sh\n"
GROUP = "root:x:0:\nbuilder:x:1000:\n"


def _libraries(binaries: Iterable[str]) -> set[str]:
    libs: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if path.startswith("/"):
                libs.add(path)
    return libs


class Rootfs:
    """A tarball built in memory: files copied from the host, or written."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w")  # noqa: SIM115 - closed in bytes()
        self.dirs: set[str] = set()
        self.files: set[str] = set()

    def _parents(self, path: str) -> None:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                self.tar.addfile(info)

    def dir(self, path: str, mode: int = 0o755) -> None:
        self._parents(path)
        info = tarfile.TarInfo(path.strip("/"))
        info.type, info.mode = tarfile.DIRTYPE, mode
        self.tar.addfile(info)
        self.dirs.add(path.strip("/"))

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        if path.strip("/") in self.files:
            return  # the same library reached twice
        self.files.add(path.strip("/"))
        self._parents(path)
        info = tarfile.TarInfo(path.strip("/"))
        info.size, info.mode = len(data), mode
        self.tar.addfile(info, io.BytesIO(data))

    def copy(self, host_path: str, path: str | None = None) -> None:
        real = Path(host_path).resolve()
        self.write(path or host_path, real.read_bytes(), 0o755)

    def link(self, path: str, target: str) -> None:
        self._parents(path)
        info = tarfile.TarInfo(path.strip("/"))
        info.type, info.linkname = tarfile.SYMTYPE, target
        self.tar.addfile(info)

    def base(self) -> None:
        self.write("/etc/passwd", PASSWD.encode())
        self.write("/etc/group", GROUP.encode())
        self.dir("/tmp", 0o1777)
        self.dir("/root", 0o700)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


ENTRYPOINT_SCRIPT = b"""#!/bin/sh
export FROM_ENTRYPOINT=exec-args
exec "$@"
"""
STDIN_ENTRYPOINT_SCRIPT = b"""#!/bin/sh
export FROM_ENTRYPOINT=stdin-shell
exec /bin/sh
"""


def _busybox_fs() -> Rootfs:
    fs = Rootfs()
    fs.base()
    fs.copy("/bin/busybox", "/bin/busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout
    for applet in applets.split():
        if applet != "busybox":
            fs.link(f"/bin/{applet}", "busybox")
    return fs


def busybox_rootfs(
    extra: dict[str, bytes] | None = None, executables: dict[str, bytes] | None = None
) -> bytes:
    fs = _busybox_fs()
    for path, data in (extra or {}).items():
        fs.write(path, data)
    for path, data in (executables or {}).items():
        fs.write(path, data, 0o755)
    return fs.bytes()


def prebuilt_helper(path: Path) -> None:
    """A stand-in for gitlab-runner's prebuilt-alpine-<arch>.tar.xz: the helper's rootfs
    with dumb-init and /entrypoint (each execs its arguments), xz-compressed."""
    import lzma

    exec_args = b'#!/bin/sh\nexec "$@"\n'
    rootfs = bash_rootfs(
        helper=True, extra={"/usr/bin/dumb-init": exec_args, "/entrypoint": exec_args}
    )
    path.write_bytes(lzma.compress(rootfs, format=lzma.FORMAT_XZ, preset=0))


def bash_rootfs(helper: bool = False, extra: dict[str, bytes] | None = None) -> bytes:
    fs = Rootfs()
    fs.base()
    tools = [t for t in BASH_TOOLS if Path(t).exists()]
    for tool in tools:
        fs.copy(tool)
    for lib in sorted(_libraries(tools)):
        fs.copy(lib)
    if helper:
        fs.write("/usr/bin/gitlab-runner-helper", HELPER_SCRIPT.encode(), 0o755)
    for path, data in (extra or {}).items():
        fs.write(path, data, 0o755)
    return fs.bytes()


@dataclass
class Image:
    name: str  # ci/bash:1
    rootfs: bytes
    changes: list[str]


def test_images() -> list[Image]:
    return [
        Image("ci/bash:1", bash_rootfs(), ['CMD ["bash"]']),
        Image("ci/helper:1", bash_rootfs(helper=True), ['CMD ["bash"]']),
        Image("ci/busybox:1", busybox_rootfs(), ['CMD ["sh"]']),
        Image(
            "ci/web:1",
            busybox_rootfs({"/www/index.html": b"hello from the web service\n"}),
            ['CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]', "EXPOSE 8080"],
        ),
        Image(
            "ci/crashing:1",
            busybox_rootfs(),
            [
                "CMD " + json.dumps(["sh", "-c", f"echo {shlex.quote(CRASH_MESSAGE)} >&2; exit 1"]),
                "EXPOSE 5432",
            ],
        ),
        Image(
            "ci/entry:1",
            busybox_rootfs(executables={"/entrypoint.sh": ENTRYPOINT_SCRIPT}),
            ['ENTRYPOINT ["/entrypoint.sh"]', 'CMD ["sh"]'],
        ),
        Image(
            "ci/stdin-entry:1",
            busybox_rootfs(executables={"/entrypoint.sh": STDIN_ENTRYPOINT_SCRIPT}),
            ['ENTRYPOINT ["/entrypoint.sh"]'],
        ),
    ]


# A registry front that answers the first N manifest requests with Docker Hub's rate
# limit (429 TOOMANYREQUESTS), then passes every request to the open registry.
RATE_LIMITED_PROXY = r"""
import http.client, http.server, re, sys, threading
port, refusals = int(sys.argv[1]), int(sys.argv[2])
lock, seen = threading.Lock(), [0]
BODY = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}'
HOP = {"connection", "transfer-encoding", "keep-alive"}

class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, head):
        if re.match(r"/v2/.+/manifests/", self.path):
            with lock:
                seen[0] += 1
                refuse = seen[0] <= refusals
            if refuse:
                self.send_response(429)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                if not head:
                    self.wfile.write(BODY)
                return
        upstream = http.client.HTTPConnection("127.0.0.1", 5000, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        upstream.request(self.command, self.path, headers=headers)
        reply = upstream.getresponse()
        data = b"" if head else reply.read()
        self.send_response(reply.status)
        for key, value in reply.getheaders():
            if key.lower() not in HOP and not (key.lower() == "content-length" and not head):
                self.send_header(key, value)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    def do_GET(self):
        self.answer(False)

    def do_HEAD(self):
        self.answer(True)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("", port), Front).serve_forever()
"""


# docker:dind's dockerd-entrypoint.sh, the parts a CI job sees: with DOCKER_TLS_CERTDIR set,
# a CA, server and client certificates in $DOCKER_TLS_CERTDIR/{ca,server,client} (the
# client's are what the job gets through a shared /certs/client volume), then dockerd on
# tcp 2376 with --tlsverify; without, on 2375 in the clear. vfs: no overlay on overlay.
DIND_ENTRYPOINT = r"""#!/bin/sh
set -eu
certs() {
  dir=$1 cn=$2 usage=$3 san=${4:-}
  mkdir -p "$dir"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/key.pem"
  openssl req -new -key "$dir/key.pem" -subj "/CN=$cn" -out "$dir/csr.pem"
  printf 'extendedKeyUsage = %s\n' "$usage" > "$dir/openssl.cnf"
  [ -z "$san" ] || printf 'subjectAltName = %s\n' "$san" >> "$dir/openssl.cnf"
  openssl x509 -req -in "$dir/csr.pem" -CA "$DOCKER_TLS_CERTDIR/ca/cert.pem" \
    -CAkey "$DOCKER_TLS_CERTDIR/ca/key.pem" -CAcreateserial -days 825 \
    -extfile "$dir/openssl.cnf" -out "$dir/cert.pem"
  cp "$DOCKER_TLS_CERTDIR/ca/cert.pem" "$dir/ca.pem"
  chmod 0644 "$dir/cert.pem" "$dir/ca.pem" "$dir/key.pem"
}
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  # What --privileged would give (refused on the test host: see DIND_SERVICE_SETTINGS):
  # writable cgroups for the containers dockerd makes, with the CAP_SYS_ADMIN it has.
  for m in $(awk '$3 == "cgroup" && $4 ~ /^ro,/ {print $2}' /proc/mounts); do
    mount -o remount,bind,rw "$m"
  done
  set -- dockerd --storage-driver=vfs "$@"
  if [ -n "${DOCKER_TLS_CERTDIR:-}" ]; then
    ca=$DOCKER_TLS_CERTDIR/ca
    if [ ! -s "$ca/cert.pem" ]; then
      mkdir -p "$ca"
      openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$ca/key.pem"
      openssl req -new -x509 -days 825 -key "$ca/key.pem" -subj "/CN=docker:dind CA" \
        -out "$ca/cert.pem"
    fi
    ips=$(hostname -i 2>/dev/null | sed 's/\([^ ]*\)/IP:\1,/g; s/ //g')
    certs "$DOCKER_TLS_CERTDIR/server" "docker:dind server" serverAuth \
      "${ips}DNS:docker,DNS:localhost,DNS:$(hostname),IP:127.0.0.1"
    certs "$DOCKER_TLS_CERTDIR/client" "docker:dind client" clientAuth
    d=$DOCKER_TLS_CERTDIR/server
    set -- "$@" --host=unix:///var/run/docker.sock --host=tcp://0.0.0.0:2376 --tlsverify \
      --tlscacert "$d/ca.pem" --tlscert "$d/cert.pem" --tlskey "$d/key.pem"
  else
    set -- "$@" --host=unix:///var/run/docker.sock --host=tcp://0.0.0.0:2375 --tls=false
  fi
fi
exec "$@"
"""
# docker:cli's docker-entrypoint.sh: a DOCKER_HOST for the `docker` service alias when the
# job sets none and no socket is there, TLS when $DOCKER_TLS_CERTDIR/client holds certs.
CLI_ENTRYPOINT = r"""#!/bin/sh
set -eu
_should_tls() {
  [ -n "${DOCKER_TLS_CERTDIR:-}" ] && [ -s "$DOCKER_TLS_CERTDIR/client/ca.pem" ] \
    && [ -s "$DOCKER_TLS_CERTDIR/client/cert.pem" ] && [ -s "$DOCKER_TLS_CERTDIR/client/key.pem" ]
}
if [ -z "${DOCKER_HOST:-}" ] && [ -S /var/run/docker.sock ]; then
  export DOCKER_HOST=unix:///var/run/docker.sock
fi
if [ -z "${DOCKER_HOST:-}" ]; then
  if _should_tls || [ -n "${DOCKER_TLS_VERIFY:-}" ]; then
    export DOCKER_HOST=tcp://docker:2376
  else
    export DOCKER_HOST=tcp://docker:2375
  fi
fi
if _should_tls; then
  export DOCKER_TLS_VERIFY=1
  export DOCKER_CERT_PATH="$DOCKER_TLS_CERTDIR/client"
fi
exec "$@"
"""
DIND_BINARIES = [
    "/usr/sbin/dockerd", "/usr/bin/containerd", "/usr/bin/containerd-shim-runc-v2",
    "/usr/sbin/runc", "/usr/bin/docker-init", "/usr/sbin/docker-proxy",
    "/usr/sbin/xtables-nft-multi", "/usr/bin/openssl",
]  # fmt: skip
XTABLES = ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
           "ip6tables-restore"]  # fmt: skip
XTABLES_MODULES = Path("/usr/lib/x86_64-linux-gnu/xtables")


def dind_rootfs() -> bytes:
    fs = _busybox_fs()
    for binary in DIND_BINARIES:
        fs.copy(binary, "/usr/local/bin/" + Path(binary).name)
    for name in XTABLES:
        fs.link(f"/usr/local/sbin/{name}", "/usr/local/bin/xtables-nft-multi")
    modules = sorted(XTABLES_MODULES.glob("*.so"))
    for module in modules:
        fs.copy(str(module))
    for lib in sorted(_libraries([*DIND_BINARIES, *map(str, modules)])):
        fs.copy(lib)
    fs.copy("/usr/lib/ssl/openssl.cnf")
    fs.write("/usr/local/bin/dockerd-entrypoint.sh", DIND_ENTRYPOINT.encode(), 0o755)
    fs.dir("/var/lib/docker")
    fs.dir("/var/run")
    return fs.bytes()


def docker_cli_rootfs() -> bytes:
    fs = _busybox_fs()
    fs.copy("/usr/bin/docker", "/usr/local/bin/docker")
    for lib in sorted(_libraries(["/usr/bin/docker"])):
        fs.copy(lib)
    fs.write("/usr/local/bin/docker-entrypoint.sh", CLI_ENTRYPOINT.encode(), 0o755)
    return fs.bytes()


DOCKER_PATH = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def dind_images() -> list[Image]:
    """docker:dind and docker:cli stand-ins (large: only for the dind tests and bench)."""
    return [
        Image(
            "ci/docker:dind",
            dind_rootfs(),
            [
                DOCKER_PATH,
                "ENV DOCKER_TLS_CERTDIR=/certs",
                'ENTRYPOINT ["dockerd-entrypoint.sh"]',
                "CMD []",
                "EXPOSE 2375 2376",
            ],
        ),
        Image(
            "ci/docker:cli",
            docker_cli_rootfs(),
            [
                DOCKER_PATH,
                "ENV DOCKER_TLS_CERTDIR=/certs",
                'ENTRYPOINT ["docker-entrypoint.sh"]',
                'CMD ["sh"]',
            ],
        ),
    ]


def _htpasswd(user: str, password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"


@dataclass
class Registry:
    """Two registries on one test host: `open` (:5000) and `private` (:5001, a login)."""

    env: Env
    host: str = ""
    ssh: list[str] | None = None
    forwarding: bool = False

    @property
    def open(self) -> str:
        return f"{self.host}:5000"

    @property
    def private(self) -> str:
        return f"{self.host}:5001"

    def start(self, user: str, password: str, images: list[Image]) -> None:
        forwarding(True)  # machines reach each other through the host
        self.forwarding = True
        self.dm("create", "--driver", "local", "registry-host")
        info = json.loads(self.dm("inspect", "registry-host"))["Driver"]
        self.host = info["IPAddress"]
        home = self.env.storage / "machines" / "registry-host"  # visible inside the machine
        self.ssh = [
            "ssh", "-i", info["SSHKeyPath"], "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={self.env.base / 'registry_known_hosts'}",
            f"root@{self.host}",
        ]  # fmt: skip
        (home / "htpasswd").write_text(_htpasswd(user, password))
        starts = []
        for port, auth in ((5000, ""), (5001, AUTH_CONFIG.format(root=home))):
            config = home / f"registry-{port}.yml"
            config.write_text(REGISTRY_CONFIG.format(root=home, port=port, auth=auth))
            starts.append(
                f"setsid nohup docker-registry serve {config} > {home}/registry-{port}.log "
                "2>&1 < /dev/null &"
            )
        self.run(" ".join(starts))
        self.run(
            "for p in 5000 5001; do for i in $(seq 50); do "
            "(exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.2; done; done"
        )
        for image in images:
            tarball = home / (image.name.replace("/", "_").replace(":", "_") + ".tar")
            tarball.write_bytes(image.rootfs)
            changes = " ".join(f"--change {shlex.quote(c)}" for c in image.changes)
            self.run(
                f"docker import {changes} {tarball} 127.0.0.1:5000/{image.name} >/dev/null && "
                f"docker push -q 127.0.0.1:5000/{image.name} >/dev/null"
            )

    def push_private(self, image: str, user: str, password: str) -> str:
        """Copy an image of the open registry into the private one; its name there."""
        target = f"127.0.0.1:5001/{image}"
        self.run(
            f"docker tag 127.0.0.1:5000/{image} {target} && "
            f"echo {shlex.quote(password)} | docker login -u {user} --password-stdin "
            f"127.0.0.1:5001 >/dev/null && docker push -q {target} >/dev/null && "
            "docker logout 127.0.0.1:5001 >/dev/null"
        )
        return f"{self.private}/{image}"

    def rate_limited(self, port: int, refusals: int) -> str:
        """The open registry behind a front on ``port`` whose first ``refusals`` manifest
        requests get 429 TOOMANYREQUESTS; its address (host:port)."""
        home = self.env.storage / "machines" / "registry-host"
        script = home / "rate-limited-proxy.py"
        script.write_text(RATE_LIMITED_PROXY)
        self.run(
            f"setsid nohup python3 {script} {port} {refusals} > {home}/proxy-{port}.log 2>&1 "
            f"< /dev/null & for i in $(seq 50); do "
            f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.2; done"
        )
        return f"{self.host}:{port}"

    def dm(self, *args: str) -> str:
        return subprocess.run(
            ["docker-machine", "--storage-path", str(self.env.storage), *args],
            env=self.env.process_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def run(self, command: str) -> None:
        assert self.ssh is not None
        done = subprocess.run([*self.ssh, command], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"

    def stop(self) -> None:
        if self.forwarding:
            forwarding(False)
            self.forwarding = False


def image_mode(registry: Registry, **image: Any) -> dict[str, dict[str, Any]]:
    """Settings for a world whose jobs run in their images from ``registry``: the
    VMs may pull from the test hosts over plain HTTP, the helper comes from there
    too. ``image``: more [image] settings. For `Env.configure(**image_mode(...))`."""
    return {
        "machine": {"engine_insecure_registry": ["10.213.0.0/16"]},
        "image": {
            "mode": "container",
            "helper_image": f"{registry.open}/ci/helper:1",
            "pull_policy": ["if-not-present"],
            **image,
        },
    }


def forwarding(on: bool) -> None:
    """IP forwarding on while any live process of ours needs it; then as it was."""
    with open(FORWARD_USERS.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            users = json.loads(FORWARD_USERS.read_text())
        except (OSError, ValueError):
            users = {"saved": FORWARD.read_text(), "pids": []}
        live = [pid for pid in users["pids"] if pid_alive(pid)]
        pids = [pid for pid in live if pid != os.getpid()]
        if on:
            if not live:  # the first user: what to restore after the last
                users["saved"] = FORWARD.read_text()
            pids.append(os.getpid())
            FORWARD.write_text("1\n")
        elif not pids:
            FORWARD.write_text(users["saved"])
            FORWARD_USERS.unlink(missing_ok=True)  # the last one out: nothing left behind
            return
        users["pids"] = pids
        FORWARD_USERS.write_text(json.dumps(users))


@contextlib.contextmanager
def serving(user: str, password: str, served: list[Image]) -> Iterator[Registry]:
    """A registry on a test host of its own world, serving ``served`` (and, on its
    private port, what is pushed there with ``user``/``password``); gone on exit."""
    world = new_world()
    registry = Registry(world)
    try:
        registry.start(user, password, served)
        yield registry
    finally:
        registry.stop()
        destroy_world(world)


def available() -> bool:
    return (
        Path("/usr/sbin/dockerd").exists()
        and shutil.which("docker-registry") is not None
        and Path("/bin/busybox").exists()
    )


def dind_available() -> bool:
    """What dind_images() copies, besides available()'s."""
    return (
        os.geteuid() == 0
        and available()
        and all(Path(p).exists() for p in [*DIND_BINARIES, "/usr/bin/docker"])
        and XTABLES_MODULES.is_dir()
    )
