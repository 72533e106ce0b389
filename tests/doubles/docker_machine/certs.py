"""Certificates and SSH keys, made with the openssl and ssh-keygen programs."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from typing import NamedTuple

from .common import MachineError, info
from .store import Store, write_plain

# docker-machine bootstraps its certs without a lock; the double stretches the
# window between writing ca.pem and the rest so concurrent first creates collide.
CERT_RACE_WINDOW = 0.3


class CertError(Exception):
    pass


def openssl(args: list[str], stdin: bytes | None = None) -> bytes:
    result = subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace")
        if "key values mismatch" in message or "does not match" in message:
            raise CertError("tls: private key does not match public key")
        raise CertError(message.strip().splitlines()[-1] if message.strip() else "openssl failed")
    return result.stdout


def new_key() -> bytes:
    # EC keys: RSA 2048 as upstream uses would cost ~100 ms per key for nothing.
    return openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])


def username() -> str:
    """mcnutils.GetUsername, which names the certificates' organisation."""
    return os.environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name


def is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Signer(NamedTuple):
    """The CA a create signs with: the store's, or the one this create just made."""

    cert: str
    key: str
    scratch: str | None = None  # where a CA this create made is kept

    def sign(self, key: bytes, org: str, extensions: list[str]) -> bytes:
        for path, what in ((self.cert, "certificate"), (self.key, "key")):
            if not os.path.exists(path):
                raise CertError(f"open {path}: no such file or directory")
            if os.path.getsize(path) == 0:
                raise CertError(f"tls: failed to find any PEM data in {what} input")
        addext = [arg for ext in extensions for arg in ("-addext", ext)]
        subject = f"/O={org[:64]}"  # openssl, unlike Go, holds O= to its 64-character limit
        csr = openssl(["req", "-new", "-key", "/dev/stdin", "-subj", subject, *addext], key)
        serial = "0x" + os.urandom(16).hex()
        return openssl(
            [
                "x509", "-req", "-in", "/dev/stdin", "-CA", self.cert, "-CAkey", self.key,
                "-set_serial", serial, "-days", "1080", "-copy_extensions", "copy",
            ],
            csr,
        )  # fmt: skip

    def discard(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def bootstrap_certs(store: Store) -> Signer:
    """cert.BootstrapCertificates: make the store's CA and client cert when missing.

    Like upstream it takes no lock. It writes ca.pem, waits CERT_RACE_WINDOW, then
    writes ca-key.pem and the client cert; a create starting in that window finds
    ca.pem without its key and fails. A create that made its own CA keeps signing
    with it, so when a concurrent create overwrote ca.pem its machine's TLS does
    not verify against the store's CA, and its final connection check fails.
    """
    os.makedirs(store.certs, mode=0o700, exist_ok=True)
    signer = Signer(store.cert("ca.pem"), store.cert("ca-key.pem"))
    try:
        if not os.path.exists(store.cert("ca.pem")):
            signer = create_ca(store)
        client_cert, client_key = store.cert("cert.pem"), store.cert("key.pem")
        if not os.path.exists(client_cert):
            info(f"Creating client certificate: {client_cert}")
            if os.path.exists(client_key):
                raise CertError("client key already exists")
            try:
                key = new_key()
                cert = signer.sign(key, username(), ["extendedKeyUsage=clientAuth"])
            except CertError as exc:
                raise CertError(f"Generating client certificate failed: {exc}") from None
            write_plain(client_cert, cert, 0o644)
            write_plain(client_key, key, 0o600)
    except CertError as exc:
        signer.discard()
        raise MachineError(f"Error generating certificates: {exc}") from None
    return signer


def create_ca(store: Store) -> Signer:
    import tempfile

    ca, ca_key = store.cert("ca.pem"), store.cert("ca-key.pem")
    info(f"Creating CA: {ca}")
    if os.path.exists(ca_key):
        raise CertError("certificate authority key already exists")
    key = new_key()
    usage = "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign"
    cert = openssl(
        ["req", "-new", "-x509", "-key", "/dev/stdin", "-subj", f"/O={username()}",
         "-days", "1080", "-addext", usage],
        key,
    )  # fmt: skip
    scratch = tempfile.mkdtemp(prefix=".dmd-", dir=store.root)
    signer = Signer(os.path.join(scratch, "ca.pem"), os.path.join(scratch, "ca-key.pem"), scratch)
    write_plain(signer.cert, cert, 0o644)
    write_plain(signer.key, key, 0o600)
    write_plain(ca, cert, 0o644)
    time.sleep(CERT_RACE_WINDOW)
    write_plain(ca_key, key, 0o600)
    return signer


def provision_certs(store: Store, name: str, signer: Signer, ip: str, sans: list[str]) -> None:
    """ConfigureAuth: copy the client certs into the machine dir, make its server cert."""
    mdir = store.machine_dir(name)
    copies = [(signer.cert, "ca.pem"), (store.cert("cert.pem"), "cert.pem")]
    copies.append((store.cert("key.pem"), "key.pem"))
    for source, target in copies:
        try:
            with open(source, "rb") as f:
                write_plain(os.path.join(mdir, target), f.read(), 0o600)
        except FileNotFoundError:
            raise MachineError(
                "Error creating machine: Error running provisioning: Copying "
                f"{target} to machine dir failed: open {source}: no such file or directory"
            ) from None
    alt = [f"IP:{ip}", "DNS:localhost"] + [f"{'IP' if is_ip(s) else 'DNS'}:{s}" for s in sans]
    extensions = [
        "subjectAltName=" + ",".join(alt),
        "extendedKeyUsage=serverAuth",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "basicConstraints=critical,CA:FALSE",
    ]
    try:
        key = new_key()
        cert = signer.sign(key, f"{username()}.{name}", extensions)
    except CertError as exc:
        raise MachineError(
            "Error creating machine: Error running provisioning: error generating server cert: "
            + str(exc)
        ) from None
    write_plain(os.path.join(mdir, "server.pem"), cert, 0o644)
    write_plain(os.path.join(mdir, "server-key.pem"), key, 0o600)


def verify_offline(store: Store, name: str) -> str | None:
    """What a TLS check would find, without an engine: None when both sides trust each other."""
    mdir = store.machine_dir(name)
    unknown_ca = "x509: certificate signed by unknown authority"
    checks = [
        (store.cert("ca.pem"), os.path.join(mdir, "server.pem"), unknown_ca),  # the client's view
        (
            os.path.join(mdir, "ca.pem"),
            store.cert("cert.pem"),
            "remote error: tls: bad certificate",
        ),
    ]
    for ca, cert, failure in checks:
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", ca, cert], capture_output=True, check=False
        )
        if result.returncode != 0:
            return failure
    return None


def ssh_keygen(path: str, comment: str) -> None:
    for stale in (path, path + ".pub"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
        stdin=subprocess.DEVNULL,
        check=True,
    )
