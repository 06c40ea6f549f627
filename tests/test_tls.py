"""The TLS server context: built from real openssl-made files, and every broken input is one
clear error naming the option and the file."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from _tls import make_certificates
from graceful.tls import TLSError, client_certificate, server_context, wsgi_environ


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(str(tmp_path_factory.mktemp("certs")))


def _handshake(context: ssl.SSLContext, client: ssl.SSLContext) -> dict:
    """A real TLS handshake over a loopback socket pair; returns what the server learned."""
    a, b = socket.socketpair()
    result: dict = {}

    def serve() -> None:
        with context.wrap_socket(a, server_side=True) as tls:
            result.update(client_certificate(tls))
            result["alpn"] = tls.selected_alpn_protocol()
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    with client.wrap_socket(b, server_hostname="localhost") as tls:
        assert tls.recv(2) == b"ok"
    thread.join(30)
    return result


def _client(certs, cert: bool = False) -> ssl.SSLContext:
    client = ssl.create_default_context(cafile=certs["ca.pem"])
    client.set_alpn_protocols(["http/1.1"])
    if cert:
        client.load_cert_chain(certs["client.pem"], certs["client.key"])
    return client


def test_a_server_context_serves_tls12_or_newer_with_alpn(certs):
    context = server_context(certs["server.pem"], certs["server.key"])
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    seen = _handshake(context, _client(certs))
    assert seen["alpn"] == "http/1.1" and seen["version"] in ("TLSv1.2", "TLSv1.3")
    assert seen["client_cert"] is None and wsgi_environ(seen)["SSL_CLIENT_VERIFY"] == "NONE"


def test_mutual_tls_gives_the_client_subject(certs):
    context = server_context(certs["server.pem"], certs["server.key"], ca_certs=certs["ca.pem"],
                             cert_reqs="required")
    seen = _handshake(context, _client(certs, cert=True))
    assert seen["subject"] == "CN=graceful client,O=graceful"
    environ = wsgi_environ(seen)
    assert environ["SSL_CLIENT_S_DN"] == "CN=graceful client,O=graceful"
    assert environ["SSL_CLIENT_VERIFY"] == "SUCCESS" and "BEGIN CERTIFICATE" in environ["SSL_CLIENT_CERT"]


def test_an_encrypted_key_loads_with_its_password(certs):
    server_context(certs["server.pem"], certs["server-enc.key"], password="secret")


@pytest.mark.parametrize("case, message", [
    ("missing", "--certfile {d}/none.pem: No such file"),
    ("empty", "--certfile {d}/empty.pem: the file is empty"),
    ("garbage", "not a PEM certificate and key"),
    ("mismatch", "--keyfile {other} does not match the certificate"),
    ("encrypted", "the key is encrypted; give --keyfile-password"),
    ("wrong password", "wrong --keyfile-password"),
    ("mtls without ca", "--cert-reqs required needs --ca-certs"),
    ("bad ca", "--ca-certs"),
    ("ciphers", "--ciphers 'NOPE-NOTHING': no cipher matches"),
])
def test_a_broken_tls_option_is_one_line_naming_it(certs, tmp_path, case, message):
    d = str(tmp_path)
    (tmp_path / "empty.pem").write_bytes(b"")
    (tmp_path / "garbage.pem").write_bytes(b"this is not a certificate\n" * 5)
    cert, key = certs["server.pem"], certs["server.key"]
    kwargs = {
        "missing": dict(certfile=f"{d}/none.pem"),
        "empty": dict(certfile=f"{d}/empty.pem"),
        "garbage": dict(certfile=f"{d}/garbage.pem", keyfile=f"{d}/garbage.pem"),
        "mismatch": dict(certfile=cert, keyfile=certs["other.key"]),
        "encrypted": dict(certfile=cert, keyfile=certs["server-enc.key"]),
        "wrong password": dict(certfile=cert, keyfile=certs["server-enc.key"], password="nope"),
        "mtls without ca": dict(certfile=cert, keyfile=key, cert_reqs="required"),
        "bad ca": dict(certfile=cert, keyfile=key, ca_certs=f"{d}/garbage.pem",
                       cert_reqs="optional"),
        "ciphers": dict(certfile=cert, keyfile=key, ciphers="NOPE-NOTHING"),
    }[case]
    with pytest.raises(TLSError) as info:
        server_context(**kwargs)
    text = str(info.value)
    assert message.format(d=d, other=certs["other.key"]) in text, text
    assert "\n" not in text
