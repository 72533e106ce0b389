"""Certificates and SSH keys, made with the openssl and ssh-keygen programs."""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import subprocess
import tempfile
import time
from typing import NamedTuple

from .common import MachineError, info
from .store import Store, locked, settings, write_plain

# Go makes an RSA-2048 key for the CA and for the client certificate: ~0.3 s on average,
# with a long tail. How long each one takes decides which of several concurrent first
# creates writes ca.pem last and which writes cert.pem last (double.json "keygen_time").
KEYGEN_TIME = 0.2


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


def keygen_pause(store: Store) -> None:
    """The time Go's rsa.GenerateKey takes (the double's own EC keys take next to none)."""
    scale = float(settings(store).get("keygen_time", KEYGEN_TIME))
    if scale > 0:
        time.sleep(scale * (0.5 + random.expovariate(1.0)))


def bootstrap_certs(store: Store) -> None:
    """cert.BootstrapCertificates: make the store's CA and client cert when missing.

    Like upstream it takes no lock. Concurrent first creates all find no ca.pem, all
    make a CA and write it; each then loads whichever CA is on disk (usually its own)
    to sign its client certificate. The CA written last and the client certificate
    written last rarely belong together, every create exits 0, and nothing says so.
    (Go looks at or writes a pair of files microseconds apart; the double, slower and
    often preempted, does each such step under `paired` so that it never tears a pair.)
    """
    os.makedirs(store.certs, mode=0o700, exist_ok=True)
    ca, ca_key = store.cert("ca.pem"), store.cert("ca-key.pem")
    client_cert, client_key = store.cert("cert.pem"), store.cert("key.pem")
    try:
        with paired(store):
            make_ca, ca_key_exists = not os.path.exists(ca), os.path.exists(ca_key)
        if make_ca:
            info(f"Creating CA: {ca}")
            if ca_key_exists:
                raise CertError("certificate authority key already exists")
            try:
                generate_ca(store, ca, ca_key)
            except CertError as exc:
                raise CertError(f"Generating CA certificate failed: {exc}") from None
        with paired(store):
            make_client, key_exists = not os.path.exists(client_cert), os.path.exists(client_key)
        if make_client:
            info(f"Creating client certificate: {client_cert}")
            if key_exists:
                raise CertError("client key already exists")
            try:
                authority = load_ca(store, ca, ca_key)  # GenerateCert loads the CA first...
                keygen_pause(store)  # ...then makes the key
                key = new_key()
                cert = sign(
                    authority, key, username() + ".<bootstrap>", ["extendedKeyUsage=clientAuth"]
                )
            except CertError as exc:
                raise CertError(f"Generating client certificate failed: {exc}") from None
            with paired(store):
                write_plain(client_cert, cert, 0o644)
                write_plain(client_key, key, 0o600)
    except CertError as exc:
        raise MachineError(f"Error generating certificates: {exc}") from None


def generate_ca(store: Store, cert_path: str, key_path: str) -> None:
    """GenerateCACertificate: a key, a self-signed CA, written in place: cert, then key."""
    keygen_pause(store)
    key = new_key()
    usage = "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign"
    cert = openssl(
        ["req", "-new", "-x509", "-key", "/dev/stdin", "-subj", f"/O={username()}",
         "-days", "1080", "-addext", usage],
        key,
    )  # fmt: skip
    with paired(store):
        write_plain(cert_path, cert, 0o644)
        write_plain(key_path, key, 0o600)


def paired(store: Store) -> contextlib.AbstractContextManager[None]:
    """One look at, or one write of, a certificate and its key (see bootstrap_certs)."""
    return locked(store.path("double.lock"))


class Authority(NamedTuple):
    """A CA as tls.LoadX509KeyPair read it: the bytes on disk at that moment."""

    cert: bytes
    key: bytes


def load_ca(store: Store, cert_path: str, key_path: str) -> Authority:
    loaded = []
    with paired(store):
        for path in (cert_path, key_path):
            try:
                with open(path, "rb") as f:
                    loaded.append(f.read())
            except FileNotFoundError:
                raise CertError(f"open {path}: no such file or directory") from None
    for data, what in zip(loaded, ("certificate", "key"), strict=True):
        if b"-----BEGIN" not in data:
            raise CertError(f"tls: failed to find any PEM data in {what} input")
    return Authority(*loaded)


def sign(authority: Authority, key: bytes, org: str, extensions: list[str]) -> bytes:
    """x509.CreateCertificate for `key`, signed by `authority`."""
    addext = [arg for ext in extensions for arg in ("-addext", ext)]
    subject = f"/O={org[:64]}"  # openssl, unlike Go, holds O= to its 64-character limit
    csr = openssl(["req", "-new", "-key", "/dev/stdin", "-subj", subject, *addext], key)
    serial = "0x" + os.urandom(16).hex()
    with tempfile.TemporaryDirectory(prefix="dmd-ca-") as scratch:
        ca, ca_key = os.path.join(scratch, "ca.pem"), os.path.join(scratch, "ca-key.pem")
        write_plain(ca, authority.cert, 0o600)
        write_plain(ca_key, authority.key, 0o600)
        return openssl(
            [
                "x509", "-req", "-in", "/dev/stdin", "-CA", ca, "-CAkey", ca_key,
                "-set_serial", serial, "-days", "1080", "-copy_extensions", "copy",
            ],
            csr,
        )  # fmt: skip


def provision_certs(store: Store, name: str, ip: str, sans: list[str]) -> None:
    """ConfigureAuth: copy the store's certs into the machine dir, make its server cert."""
    mdir = store.machine_dir(name)
    for file in ("ca.pem", "cert.pem", "key.pem"):
        try:
            with open(store.cert(file), "rb") as f:
                write_plain(os.path.join(mdir, file), f.read(), 0o600)
        except FileNotFoundError:
            raise MachineError(
                "Error creating machine: Error running provisioning: Copying "
                f"{file} to machine dir failed: open {store.cert(file)}: no such file or directory"
            ) from None
    alt = [f"IP:{ip}", "DNS:localhost"] + [f"{'IP' if is_ip(s) else 'DNS'}:{s}" for s in sans]
    extensions = [
        "subjectAltName=" + ",".join(alt),
        "extendedKeyUsage=serverAuth",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "basicConstraints=critical,CA:FALSE",
    ]
    try:
        authority = load_ca(store, store.cert("ca.pem"), store.cert("ca-key.pem"))
        key = new_key()
        cert = sign(authority, key, f"{username()}.{name}", extensions)
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
