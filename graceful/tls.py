"""TLS for the built-in servers: one server context from the options, and what a request may
know of the client's certificate.

TLS state cannot move between processes, so certificates rotate the way code does: replace the
files, send SIGHUP, and the successor builds its context from the new files before it is ready.
A missing file, garbage, or a key that does not match its certificate fails that successor's
start (a rollback: the old generation keeps serving with the old certificate) or, at first start,
is a one-line error. Connections already open finish on the generation that accepted them.
"""

from __future__ import annotations

import os
import ssl
from typing import Any, Dict, List, Optional

from .errors import GracefulError

__all__ = ["TLSError", "server_context", "client_certificate"]

CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class TLSError(GracefulError):
    """The TLS options cannot make a working server context."""


def server_context(certfile: str, keyfile: Optional[str] = None, password: Optional[str] = None,
                   ca_certs: Optional[str] = None, cert_reqs: str = "none",
                   ciphers: Optional[str] = None) -> ssl.SSLContext:
    """A server context: TLS 1.2 at least, ALPN ``http/1.1``, the certificate chain loaded and
    checked against its key, and client certificates verified against ``ca_certs`` if asked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    _load_chain(context, certfile, keyfile, password)
    if cert_reqs not in CERT_REQS:
        raise TLSError(f"--cert-reqs {cert_reqs!r}: use none, optional or required")
    if cert_reqs != "none" and not ca_certs:
        raise TLSError(f"--cert-reqs {cert_reqs} needs --ca-certs FILE: the CAs that sign "
                       f"client certificates")
    if ca_certs:
        _readable(ca_certs, "--ca-certs")
        try:
            context.load_verify_locations(cafile=ca_certs)
        except (ssl.SSLError, ValueError) as exc:
            raise TLSError(f"--ca-certs {ca_certs}: no PEM certificate in it ({_reason(exc)})")
    context.verify_mode = CERT_REQS[cert_reqs]
    if ciphers:
        try:
            context.set_ciphers(ciphers)
        except ssl.SSLError:
            raise TLSError(f"--ciphers {ciphers!r}: no cipher matches that OpenSSL cipher "
                           f"list") from None
    return context


def _load_chain(context: ssl.SSLContext, certfile: str, keyfile: Optional[str],
                password: Optional[str]) -> None:
    _readable(certfile, "--certfile")
    if keyfile:
        _readable(keyfile, "--keyfile")
    try:
        context.load_cert_chain(certfile, keyfile, password=password or _no_password)
    except ssl.SSLError as exc:
        raise TLSError(_chain_problem(certfile, keyfile, password, exc)) from None
    except _NoPassword:
        raise TLSError(f"--keyfile {keyfile or certfile}: the key is encrypted; give "
                       f"--keyfile-password (or GRACEFUL_KEYFILE_PASSWORD)") from None


class _NoPassword(Exception):
    pass


def _no_password() -> str:
    # Called by OpenSSL only for an encrypted key: without this it would prompt on the tty.
    raise _NoPassword()


def _chain_problem(certfile: str, keyfile: Optional[str], password: Optional[str],
                   exc: ssl.SSLError) -> str:
    reason = _reason(exc)
    key = keyfile or certfile
    if password and _encrypted(key):
        return f"--keyfile {key}: wrong --keyfile-password"
    if "KEY_VALUES_MISMATCH" in reason.upper() or "key values mismatch" in reason:
        return f"--keyfile {key} does not match the certificate in --certfile {certfile}"
    if "BAD_DECRYPT" in reason.upper() or "bad decrypt" in reason:
        return f"--keyfile {key}: wrong --keyfile-password"
    if "PEM" in reason.upper() or "NO_START_LINE" in reason.upper():
        return (f"--certfile {certfile} / --keyfile {key}: not a PEM certificate and key "
                f"({reason})")
    return f"--certfile {certfile} / --keyfile {key}: {reason}"


def _encrypted(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return b"ENCRYPTED" in f.read(1 << 20)
    except OSError:
        return False


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(exc)
    return f"{reason}: {text}" if reason and reason not in text else text


def _readable(path: str, option: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TLSError(f"{option} {path}: {exc.strerror}") from None
    if os.path.getsize(path) == 0:
        raise TLSError(f"{option} {path}: the file is empty")


def client_certificate(sslobj: Any) -> Dict[str, Any]:
    """What an application may know of a TLS connection: version, cipher, and the client's
    certificate (subject, issuer, DER/PEM), if it sent one that verified."""
    info: Dict[str, Any] = {"version": sslobj.version(), "cipher": None, "client_cert": None,
                            "subject": "", "issuer": "", "pem": ""}
    cipher = sslobj.cipher()
    if cipher:
        info["cipher"] = cipher[0]
    cert = sslobj.getpeercert()
    der = sslobj.getpeercert(binary_form=True)
    if cert and der:
        info["client_cert"] = cert
        info["subject"] = _rfc4514(cert.get("subject", ()))
        info["issuer"] = _rfc4514(cert.get("issuer", ()))
        info["pem"] = ssl.DER_cert_to_PEM_cert(der)
    return info


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
          "emailAddress": "emailAddress", "domainComponent": "DC"}


def _rfc4514(name: Any) -> str:
    """``((('commonName', 'x'),), ...)`` -> ``CN=x,O=...`` (most specific first, RFC 4514)."""
    parts: List[str] = []
    for rdn in reversed(list(name)):
        pieces = []
        for key, value in rdn:
            escaped = "".join("\\" + c if c in ',+"\\<>;=' else c for c in str(value))
            pieces.append(f"{_SHORT.get(key, key)}={escaped}")
        parts.append("+".join(pieces))
    return ",".join(parts)


def wsgi_environ(info: Dict[str, Any]) -> Dict[str, str]:
    """mod_ssl-style environ keys for a WSGI request over TLS."""
    environ = {"HTTPS": "on", "SSL_PROTOCOL": info["version"] or "",
               "SSL_CIPHER": info["cipher"] or ""}
    if info["client_cert"]:
        environ.update(SSL_CLIENT_VERIFY="SUCCESS", SSL_CLIENT_S_DN=info["subject"],
                       SSL_CLIENT_I_DN=info["issuer"], SSL_CLIENT_CERT=info["pem"])
    else:
        environ["SSL_CLIENT_VERIFY"] = "NONE"
    return environ


def asgi_extension(info: Dict[str, Any]) -> Dict[str, Any]:
    """The ASGI ``tls`` extension of a connection scope."""
    versions = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
    return {"server_cert": None,
            "client_cert_chain": [info["pem"]] if info["pem"] else [],
            "client_cert_name": info["subject"] or None,
            "client_cert_error": None,
            "tls_version": versions.get(info["version"] or ""),
            "cipher_suite": None}
