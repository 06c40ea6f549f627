"""Behind a proxy, with real server processes on 127.0.0.1: forwarded headers believed from
trusted peers only, the PROXY protocol (v1 and v2) before HTTP, and --root-path; the WSGI and
the ASGI server alike."""

from __future__ import annotations

import json
import socket

import pytest

from _serve import Client, Served
from graceful.http.proxy_protocol import INET, PROXY, ProxyHeader, encode

APPS = ["edge_wsgi.py:app", "edge_asgi.py:app"]


def _info(sock: socket.socket, preamble: bytes = b"", headers=()) -> dict:
    """GET /info on ``sock``, sent in one segment after ``preamble``."""
    lines = ["GET /info HTTP/1.1", "Host: app.test"] + [f"{n}: {v}" for n, v in headers]
    client = Client(sock)
    client.send(preamble + ("\r\n".join(lines) + "\r\n\r\n").encode())
    response = client.response()
    assert response.status == 200, response
    return json.loads(response.body)


def _closed_without_answer(sock: socket.socket, timeout: float = 30.0) -> bool:
    """The server closed the connection and sent nothing (a reset counts as closed)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("app", APPS)
def test_forwarded_headers_from_a_trusted_peer_set_client_scheme_and_host(procs, tmp_path, app):
    served = Served(procs, tmp_path, app)  # the default trusts 127.0.0.1
    with served.connect() as sock:
        info = _info(sock, headers=[("X-Forwarded-For", "203.0.113.7, 127.0.0.1"),
                                    ("X-Forwarded-Proto", "https"),
                                    ("X-Forwarded-Host", "shop.example:8443")])
    assert info["REMOTE_ADDR"] == "203.0.113.7"
    assert info["wsgi.url_scheme"] == "https"
    assert (info["SERVER_NAME"], info["SERVER_PORT"]) == ("shop.example", "8443")
    if app.startswith("edge_wsgi"):
        assert info["HTTP_HOST"] == "shop.example:8443"
    with served.connect() as sock:
        info = _info(sock, headers=[("Forwarded", 'for="[2001:db8::5]:4711";proto=https')])
    assert (info["REMOTE_ADDR"], info["wsgi.url_scheme"]) == ("2001:db8::5", "https")


@pytest.mark.parametrize("app", APPS)
def test_forwarded_headers_from_an_untrusted_peer_change_nothing(procs, tmp_path, app):
    served = Served(procs, tmp_path, app, "--forwarded-allow-ips", "10.0.0.1")
    with served.connect() as sock:
        info = _info(sock, headers=[("X-Forwarded-For", "203.0.113.7"),
                                    ("X-Forwarded-Proto", "https"),
                                    ("X-Forwarded-Host", "evil.example")])
    assert info["REMOTE_ADDR"] == "127.0.0.1"
    assert info["wsgi.url_scheme"] == "http"
    assert info["SERVER_NAME"] == "127.0.0.1"
    assert info["HTTP_HOST"] == "app.test"
    assert info["HTTP_X_FORWARDED_FOR"] == "203.0.113.7"  # passed through to the app, untouched


def test_forwarded_allow_ips_comes_from_the_environment_too(procs, tmp_path):
    import os

    hops = [("X-Forwarded-For", "203.0.113.7, 198.51.100.1")]
    served = Served(procs, tmp_path, "edge_wsgi.py:app",
                    env=dict(os.environ, FORWARDED_ALLOW_IPS="10.0.0.1"))
    with served.connect() as sock:
        assert _info(sock, headers=hops)["REMOTE_ADDR"] == "127.0.0.1"  # loopback untrusted
    served = Served(procs, tmp_path, "edge_wsgi.py:app",
                    env=dict(os.environ, FORWARDED_ALLOW_IPS="*"))
    with served.connect() as sock:  # every hop trusted: the leftmost is the client
        assert _info(sock, headers=hops)["REMOTE_ADDR"] == "203.0.113.7"


@pytest.mark.parametrize("app", APPS)
def test_proxy_protocol_v1_and_v2_from_an_allowed_peer_name_the_client(procs, tmp_path, app):
    served = Served(procs, tmp_path, app, "--proxy-protocol")
    v1 = b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 443\r\n"
    with served.connect() as sock:
        info = _info(sock, v1)  # header and request in one segment: nothing after it is lost
    assert (info["REMOTE_ADDR"], info["REMOTE_PORT"]) == ("198.51.100.9", "40000")
    v2 = encode(ProxyHeader(2, PROXY, INET, ("192.0.2.44", 5555), ("127.0.0.1", 443),
                            tlvs=((0xE0, b"x" * 600),)))  # longer than one peek
    with served.connect() as sock:
        info = _info(sock, v2)
        assert info["REMOTE_ADDR"] == "192.0.2.44"
        info = _info(sock)  # keep-alive: the next request is plain HTTP, same client
        assert info["REMOTE_ADDR"] == "192.0.2.44"
    tls_said = encode(ProxyHeader(2, PROXY, INET, ("192.0.2.45", 5556), ("127.0.0.1", 443),
                                  tlvs=((0x20, b"\x01\x00\x00\x00\x00"),)))  # PP2_TYPE_SSL
    with served.connect() as sock:  # haproxy send-proxy-v2-ssl: the client came over TLS
        info = _info(sock, tls_said)
    assert (info["REMOTE_ADDR"], info["wsgi.url_scheme"]) == ("192.0.2.45", "https")
    with served.connect() as sock:  # the header in pieces, each in its own segment
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in (v1[:5], v1[5:20]):
            sock.sendall(piece)
        info = _info(sock, v1[20:])
    assert info["REMOTE_ADDR"] == "198.51.100.9"


@pytest.mark.parametrize("app", APPS)
def test_proxy_protocol_refuses_disallowed_peers_and_garbage(procs, tmp_path, app):
    served = Served(procs, tmp_path, app, "--proxy-protocol", "--proxy-allow-from", "10.0.0.1")
    with served.connect() as sock:
        sock.sendall(b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 443\r\nGET /info HTTP/1.1\r\n"
                     b"Host: x\r\n\r\n")
        assert _closed_without_answer(sock)
    served = Served(procs, tmp_path, app, "--proxy-protocol")
    with served.connect() as sock:
        sock.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")  # no PROXY header at all
        assert _closed_without_answer(sock)
    with served.connect() as sock:
        sock.sendall(b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n")
        assert _closed_without_answer(sock)
    assert served.proc.poll() is None
    with served.connect() as sock:  # and it still serves
        assert _info(sock, b"PROXY UNKNOWN\r\n")["REMOTE_ADDR"] == "127.0.0.1"


@pytest.mark.parametrize("app", APPS)
def test_a_partial_proxy_header_is_closed_after_the_header_timeout(procs, tmp_path, app):
    served = Served(procs, tmp_path, app, "--proxy-protocol", "--header-timeout", "1")
    with served.connect() as sock:
        sock.sendall(b"PROXY TCP4 198.51.100.9 ")
        assert _closed_without_answer(sock, timeout=60)
    served.wait(lambda: "no PROXY header in time" in served.log(), what="the log line")


@pytest.mark.parametrize("app", APPS)
def test_root_path_splits_the_path(procs, tmp_path, app):
    served = Served(procs, tmp_path, app, "--root-path", "/api/")
    with served.connect() as sock:
        client = Client(sock)
        info = json.loads(client.request("GET", "/api/v1/info").body)
        assert info["SCRIPT_NAME"] == "/api"
        expected = "/v1/info" if app.startswith("edge_wsgi") else "/api/v1/info"
        assert info["PATH_INFO"] == expected  # ASGI: path includes root_path
        info = json.loads(client.request("GET", "/apix/info").body)  # not under the root
        assert (info["SCRIPT_NAME"], info["PATH_INFO"]) == ("", "/apix/info")


def test_a_bad_trust_list_or_root_path_is_one_line_and_exit_2(procs, tmp_path):
    import subprocess

    from _support import PYTHON, ROOT
    import os

    for option, value in (("--forwarded-allow-ips", "proxy.example"),
                          ("--proxy-allow-from", "10.0.0.1/8"), ("--root-path", "api")):
        result = subprocess.run([PYTHON, "-m", "graceful", "serve", "edge_wsgi.py:app",
                                 "--bind", "127.0.0.1:0", option, value],
                                cwd=os.path.join(ROOT, "tests", "apps"), capture_output=True,
                                text=True, timeout=60,
                                env=dict(os.environ, PYTHONPATH=ROOT))
        assert result.returncode == 2, (option, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and value in lines[0] and "Traceback" not in result.stderr, lines
