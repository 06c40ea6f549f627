"""The built-in servers end a TLS connection with close_notify before the TCP close, so a client
that checks for truncation (Python's ssl with ``suppress_ragged_eofs=False``, Go, strict curl)
sees a clean end of stream and not an SSLEOFError: after a ``Connection: close`` response, a
response framed by the close (HTTP/1.0, no Content-Length), and a keep-alive connection the
server closes when it stayed idle too long."""

from __future__ import annotations

import socket
import ssl

import pytest

from _serve import Served
from _tls import make_certificates

APPS = ["edge_wsgi.py:app", "edge_asgi.py:app"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(str(tmp_path_factory.mktemp("certs")))


def _serve_tls(procs, tmp_path, certs, app, *extra):
    return Served(procs, tmp_path, app, "--certfile", certs["server.pem"], "--keyfile",
                  certs["server.key"], *extra)


def _strict_client(served, certs) -> ssl.SSLSocket:
    """A TLS connection on which a TCP close without close_notify raises SSLEOFError."""
    context = ssl.create_default_context(cafile=certs["ca.pem"])
    return context.wrap_socket(served.connect(timeout=60), server_hostname="127.0.0.1",
                               suppress_ragged_eofs=False)


def _read_to_the_end(sock: ssl.SSLSocket) -> bytes:
    """Everything until the end of the stream; raises SSLEOFError if it was a truncation."""
    data = b""
    for _ in range(10_000):  # bounded: each recv waits at most the socket's timeout
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"no end of stream after {len(data)} bytes")


@pytest.mark.parametrize("app", APPS)
def test_connection_close_response_ends_with_close_notify(procs, tmp_path, certs, app):
    served = _serve_tls(procs, tmp_path, certs, app)
    with _strict_client(served, certs) as sock:
        sock.sendall(b"GET /info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = _read_to_the_end(sock)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"}"), data


def test_a_body_framed_by_the_close_ends_with_close_notify(procs, tmp_path, certs):
    served = _serve_tls(procs, tmp_path, certs, "edge_wsgi.py:app")  # its /stream has no length
    with _strict_client(served, certs) as sock:
        sock.sendall(b"GET /stream HTTP/1.0\r\nHost: t\r\n\r\n")
        data = _read_to_the_end(sock)
    assert data.startswith(b"HTTP/1.") and data.endswith(b"part 0\npart 1\npart 2\n"), data


@pytest.mark.parametrize("app", APPS)
def test_idle_keepalive_closed_by_the_server_ends_with_close_notify(procs, tmp_path, certs, app):
    served = _serve_tls(procs, tmp_path, certs, app, "--keepalive-timeout", "1")
    with _strict_client(served, certs) as sock:
        sock.sendall(b"GET /info HTTP/1.1\r\nHost: t\r\n\r\n")
        data = _read_to_the_end(sock)  # the response, then the server's close when idle
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"}"), data
    assert b"connection: close" not in data.lower()  # it was kept alive, then timed out
