"""A client of a machine's Docker engine: the TLS checks docker-machine makes (worded as
Go's net/http and crypto/tls word their failures) and a ping over the VM's unix socket."""

from __future__ import annotations

import socket
from typing import Any

from .certs import is_ip
from .common import ENGINE_PORT, MachineError, go_quote

CERT_HINT = (
    "You can attempt to regenerate them using 'docker-machine regenerate-certs [name]'.\n"
    "Be advised that this will trigger a Docker daemon restart which might stop running "
    "containers.\n"
)


class EngineError(Exception):
    """A failure talking to a Docker engine, worded as Go's net/http and crypto/tls do."""


def _der_length(der: bytes, pos: int) -> tuple[int, int]:
    first = der[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    return int.from_bytes(der[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


def cert_ip_sans(der: bytes) -> list[str]:
    """The iPAddress entries of a certificate's subjectAltName (enough DER to find them)."""
    import ipaddress

    at = der.find(b"\x06\x03\x55\x1d\x11")  # OID 2.5.29.17
    if at < 0:
        return []
    pos = at + 5
    if der[pos] == 0x01:  # the optional "critical" BOOLEAN
        pos += 3
    _, pos = _der_length(der, pos + 1)  # OCTET STRING
    length, pos = _der_length(der, pos + 1)  # SEQUENCE of GeneralName
    end, ips = pos + length, []
    while pos < end:
        tag = der[pos]
        length, pos = _der_length(der, pos + 1)
        if tag == 0x87:
            ips.append(str(ipaddress.ip_address(der[pos : pos + length])))
        pos += length
    return ips


def _hostname_error(host: str, der: bytes) -> str | None:
    """Go (as docker-machine was built) checks the name before the chain."""
    if not is_ip(host):
        return None
    ips = cert_ip_sans(der)
    if not ips:
        return (
            f"x509: cannot validate certificate for {host} because it doesn't contain any IP SANs"
        )
    if host not in ips:
        return f"x509: certificate is valid for {', '.join(ips)}, not {host}"
    return None


def engine_get(
    address: str, path: str, ca: str, cert: str, key: str, timeout: float
) -> tuple[int, bytes]:
    """GET https://address/path with the given TLS material; Go-worded EngineError on failure."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    ctx = _tls_context(ca, cert, key)
    sock = _dial(host, int(port or ENGINE_PORT), timeout)
    try:
        with _handshake(ctx, sock, host, int(port or ENGINE_PORT), timeout) as tls:
            problem = _hostname_error(host, tls.getpeercert(binary_form=True) or b"")
            if problem:
                raise EngineError(problem)
            return _http_get(tls, host, path, address)
    finally:
        sock.close()


def _tls_context(ca: str, cert: str, key: str) -> Any:
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # TLS 1.2, as docker-machine's Go spoke it: a refused client cert fails the handshake.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # checked by _hostname_error, in Go's order and words
    try:
        ctx.load_verify_locations(ca)
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise EngineError(f"open {exc.filename}: no such file or directory") from None
    except ssl.SSLError:
        raise EngineError("tls: private key does not match public key") from None
    return ctx


def _dial(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise EngineError(f"dial tcp {host}:{port}: i/o timeout") from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise EngineError(f"dial tcp {host}:{port}: connect: {reason}") from None


def _handshake(ctx: Any, sock: socket.socket, host: str, port: int, timeout: float) -> Any:
    import ssl

    try:
        return ctx.wrap_socket(sock, server_hostname=None if is_ip(host) else host)
    except ssl.SSLCertVerificationError:
        der = _peer_cert_insecure(host, port, timeout)
        problem = _hostname_error(host, der) or "x509: certificate signed by unknown authority"
        raise EngineError(problem) from None
    except ssl.SSLError as exc:
        raise EngineError(_tls_alert(exc)) from None
    except OSError:
        raise EngineError("tls: DialWithDialer timed out") from None


def _tls_alert(exc: Exception) -> str:
    reason = str(getattr(exc, "reason", "") or exc).lower().replace("_", " ")
    return "remote error: tls: " + reason.replace("sslv3 alert ", "").replace("tlsv13 alert ", "")


def _http_get(tls: Any, host: str, path: str, address: str) -> tuple[int, bytes]:
    import ssl

    chunks = []
    try:
        tls.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    except ssl.SSLError as exc:
        raise EngineError(_tls_alert(exc)) from None
    except TimeoutError:
        raise EngineError(f"read tcp {address}: i/o timeout") from None
    except OSError as exc:
        raise EngineError(f"read tcp {address}: {(exc.strerror or str(exc)).lower()}") from None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b" ", 2)
    return (int(status[1]) if len(status) > 1 and status[1].isdigit() else 0), body


def _peer_cert_insecure(host: str, port: int, timeout: float) -> bytes:
    """The server's certificate without verifying it, to word a verification failure."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            return tls.getpeercert(binary_form=True) or b""
    except OSError:
        return b""


def engine_check(host: dict[str, Any], address: str) -> None:
    """check.DefaultConnChecker's certificate check of one engine address."""
    try:
        engine_get(
            address,
            "/_ping",
            host["HostOptions"]["AuthOptions"]["CaCertPath"],
            host["HostOptions"]["AuthOptions"]["ClientCertPath"],
            host["HostOptions"]["AuthOptions"]["ClientKeyPath"],
            timeout=20,
        )
    except EngineError as exc:
        raise MachineError(cert_check_error(address, str(exc))) from None


def cert_check_error(address: str, problem: str) -> str:
    return (
        "Error checking and/or regenerating the certs: There was an error validating "
        f"certificates for host {go_quote(address)}: {problem}\n{CERT_HINT}"
    )


def engine_ping_unix(init_pid: int) -> bool:
    """GET /_ping on the VM's /run/docker.sock, reached through the init's mount namespace."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(f"/proc/{init_pid}/root/run/docker.sock")
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and reply.split(b" ", 2)[1:2] == [b"200"]
