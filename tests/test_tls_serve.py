"""HTTPS on both built-in servers, with real processes, certificates made by openssl at test
time, and the stdlib ssl client: requests, keep-alive and pipelining over TLS, mTLS, plain HTTP
to the TLS port, silent clients, and certificate rotation by SIGHUP (one process and
``--workers``), with rollback for a broken certificate."""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from typing import List

import pytest

from _serve import Client, Served
from _support import PYTHON, ROOT, process_state, reap_orphans, wait_for
from _tls import make_certificates

APPS = ["edge_wsgi.py:app", "edge_asgi.py:app"]
ONE, TWO = "graceful server one", "graceful server two"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(str(tmp_path_factory.mktemp("certs")))


def _deployed(tmp_path, certs, name="server"):
    """cert.pem/key.pem in tmp_path, a copy of ``name``'s: what a deploy replaces."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(certs[f"{name}.pem"], cert)
    shutil.copy(certs[f"{name}.key"], key)
    return str(cert), str(key)


def _client_context(certs, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs["ca.pem"])
    context.set_alpn_protocols(["h2", "http/1.1"])  # the server picks http/1.1
    if client_cert:
        context.load_cert_chain(certs["client.pem"], certs["client.key"])
    return context


def _tls_connect(served, context) -> ssl.SSLSocket:
    return context.wrap_socket(served.connect(timeout=30), server_hostname="127.0.0.1")


def _subject_cn(sock: ssl.SSLSocket) -> str:
    return dict(rdn[0] for rdn in sock.getpeercert()["subject"])["commonName"]


def _serve_tls(procs, tmp_path, certs, app, *extra, **kwargs):
    cert, key = _deployed(tmp_path, certs)
    return Served(procs, tmp_path, app, "--certfile", cert, "--keyfile", key, *extra, **kwargs)


@pytest.mark.parametrize("app", APPS)
def test_https_get_keepalive_and_pipelined(procs, tmp_path, certs, app):
    served = _serve_tls(procs, tmp_path, certs, app)
    with _tls_connect(served, _client_context(certs)) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        assert _subject_cn(sock) == ONE
        client = Client(sock)
        info = json.loads(client.request("GET", "/info").body)
        assert info["wsgi.url_scheme"] == "https" and info["HTTPS"] == "on"
        assert client.request("GET", "/info").status == 200  # keep-alive
        client.send(b"GET /a/info HTTP/1.1\r\nHost: t\r\n\r\n"
                    b"GET /b/info HTTP/1.1\r\nHost: t\r\n\r\n"
                    b"GET /c/info HTTP/1.1\r\nHost: t\r\n\r\n")  # pipelined, in one record
        paths = [json.loads(client.response().body)["PATH_INFO"] for _ in range(3)]
        assert paths == ["/a/info", "/b/info", "/c/info"]


@pytest.mark.parametrize("app", APPS)
def test_mtls_client_subject_is_visible_to_the_app(procs, tmp_path, certs, app):
    served = _serve_tls(procs, tmp_path, certs, app, "--ca-certs", certs["ca.pem"],
                        "--cert-reqs", "required")
    with _tls_connect(served, _client_context(certs, client_cert=True)) as sock:
        info = json.loads(Client(sock).request("GET", "/info").body)
    assert info["SSL_CLIENT_S_DN"] == "CN=graceful client,O=graceful"
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
        with _tls_connect(served, _client_context(certs)) as sock:  # no client certificate
            Client(sock).request("GET", "/info")  # TLS 1.3 reports it on the first read


@pytest.mark.parametrize("app", APPS)
def test_plain_http_to_the_tls_port_gets_400_and_close(procs, tmp_path, certs, app):
    served = _serve_tls(procs, tmp_path, certs, app)
    with served.connect() as sock:
        client = Client(sock)
        response = client.request("GET", "/info")
        assert response.status == 400
        assert b"plain HTTP request was sent to HTTPS port" in response.body
        assert client.closed_by_server()


@pytest.mark.parametrize("app", APPS)
def test_silent_clients_cost_no_thread_and_are_closed_after_the_header_timeout(
        procs, tmp_path, certs, app):
    served = _serve_tls(procs, tmp_path, certs, app, "--threads", "1", "--header-timeout", "3",
                        "--keepalive-timeout", "300")  # so only the header timeout closes
    silent = [served.connect() for _ in range(5)]
    silent.append(served.connect())
    silent[-1].sendall(b"\x16\x03\x01")  # the start of a ClientHello, never finished
    try:
        for _ in range(3):  # served by the one worker thread while all of them wait
            with _tls_connect(served, _client_context(certs)) as sock:
                assert Client(sock).request("GET", "/info").status == 200
        for sock in silent:  # they were all still open while those were served
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
        for sock in silent:
            sock.setblocking(True)
            sock.settimeout(60)
            assert sock.recv(1) == b""  # closed by the server, without an answer
    finally:
        for sock in silent:
            sock.close()


class _HttpsLoad:
    """Keep-alive HTTPS clients in threads; every request that fails is recorded."""

    def __init__(self, port: int, context: ssl.SSLContext, clients: int = 3) -> None:
        self.port, self.context = port, context
        self.ok = 0
        self.failures: List[str] = []
        self.pids: List[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def wait_requests(self, n: int) -> None:
        wait_for(lambda: self.ok + len(self.failures) >= n, 120, what=f"{n} HTTPS requests")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        deadline = time.monotonic() + 240
        conn = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            if conn is not None and _readable_while_idle(conn.sock):
                conn.close()  # the server closed it between requests: not a failure
                conn = None
            if conn is None:
                conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30,
                                                   context=self.context)
            try:
                conn.request("GET", "/info")
                response = conn.getresponse()
                body = response.read()
                assert response.status == 200, (response.status, body[:100])
                with self._lock:
                    self.ok += 1
                    pid = int(response.getheader("X-Pid"))
                    if pid not in self.pids:
                        self.pids.append(pid)
                if response.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:
                with self._lock:
                    self.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def _readable_while_idle(sock) -> bool:
    """An idle keep-alive connection with something to read was closed by the server (it sends
    nothing unasked); one closed after the request was written is a failure."""
    if sock is None:
        return True
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(0))


def _successor(served, pids):
    return wait_for(lambda: [int(p) for p in re.findall(r"ready: pid (\d+) ", served.log())
                             if int(p) not in pids], 60, what="a successor")[0]


def _gone(pid):
    reap_orphans()
    return process_state(pid) in (None, "Z")


def _served_cn(served, certs) -> str:
    with _tls_connect(served, _client_context(certs)) as sock:
        return _subject_cn(sock)


@pytest.mark.parametrize("app", APPS)
def test_certificate_rotation_by_sighup_under_https_load_and_a_broken_one_rolls_back(
        procs, tmp_path, certs, app):
    served = _serve_tls(procs, tmp_path, certs, app)
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    pid = served.proc.pid
    load = _HttpsLoad(served.port, _client_context(certs))
    try:
        load.wait_requests(50)
        _deployed(tmp_path, certs, "server2")  # the new certificate and key, on disk
        os.kill(pid, signal.SIGHUP)
        new = _successor(served, [pid])
        served.wait(lambda: _gone(pid), 60, what=f"generation {pid} to exit")
        load.wait_requests(load.ok + len(load.failures) + 50)
        assert _served_cn(served, certs) == TWO
        # A broken deploy: a key that does not match the certificate.
        shutil.copy(certs["other.key"], key)
        os.kill(new, signal.SIGHUP)
        served.wait(lambda: "upgrade rolled back" in served.log(), 60, what="the rollback")
        assert "does not match the certificate" in served.log()
        load.wait_requests(load.ok + len(load.failures) + 50)
        assert _served_cn(served, certs) == TWO  # the old generation, its certificate
        assert process_state(new) not in (None, "Z")
        with open(cert, "wb") as f:
            f.write(b"garbage\n")  # and garbage for a certificate
        os.kill(new, signal.SIGHUP)
        served.wait(lambda: served.log().count("upgrade rolled back") == 2, 60,
                    what="the second rollback")
        assert "not a PEM certificate" in served.log()
    finally:
        load.stop()
    assert load.failures == []
    assert load.pids[:2] == [pid, new]


def test_certificate_rotation_with_workers(procs, tmp_path, certs):
    served = _serve_tls(procs, tmp_path, certs, "edge_wsgi.py:app", "--workers", "2")
    load = _HttpsLoad(served.port, _client_context(certs))
    try:
        load.wait_requests(50)
        assert _served_cn(served, certs) == ONE
        _deployed(tmp_path, certs, "server2")
        os.kill(served.proc.pid, signal.SIGHUP)
        served.wait(lambda: "generation 2 is serving" in served.log(), 60,
                    what="generation 2")
        load.wait_requests(load.ok + len(load.failures) + 50)
        assert _served_cn(served, certs) == TWO
        with open(tmp_path / "cert.pem", "wb") as f:
            f.write(b"garbage\n")
        os.kill(served.proc.pid, signal.SIGHUP)
        served.wait(lambda: "reload failed, generation 2 keeps serving" in served.log(), 60,
                    what="the failed reload")
        load.wait_requests(load.ok + len(load.failures) + 50)
        assert _served_cn(served, certs) == TWO
    finally:
        load.stop()
    assert load.failures == []


@pytest.mark.parametrize("workers", [(), ("--workers", "2")])
def test_a_broken_certificate_at_first_start_is_one_line_and_exit_2(tmp_path, certs, workers):
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate\n")
    cases = [(["--certfile", str(tmp_path / "missing.pem")], "missing.pem"),
             (["--certfile", str(garbage)], "not a PEM certificate"),
             (["--certfile", certs["server.pem"], "--keyfile", certs["other.key"]],
              "does not match"),
             (["--certfile", certs["server.pem"], "--keyfile", certs["server-enc.key"]],
              "--keyfile-password"),
             (["--keyfile", certs["server.key"]], "need --certfile")]
    for args, reason in cases:
        result = subprocess.run([PYTHON, "-m", "graceful", "serve", "edge_wsgi.py:app",
                                 "--bind", "127.0.0.1:0", *workers, *args],
                                cwd=os.path.join(ROOT, "tests", "apps"), capture_output=True,
                                text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.stderr)
        assert len(lines) == 1 and reason in lines[0], (args, lines)


def test_websockets_over_tls(procs, tmp_path, certs):
    import base64

    served = _serve_tls(procs, tmp_path, certs, "ws_app.py:app")
    key = base64.b64encode(os.urandom(16)).decode()
    with _tls_connect(served, _client_context(certs)) as sock:
        sock.sendall(("GET /scope HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head

        def take(n: int) -> bytes:
            nonlocal data
            while len(data) < n:
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            taken, data = data[:n], data[n:]
            return taken

        first, size = take(2)
        assert first == 0x81  # a whole text frame
        if size == 126:
            size = int.from_bytes(take(2), "big")
        scope = json.loads(take(size))
    assert scope["scheme"] == "wss"
    assert scope["extensions"]["tls"]["tls_version"] in (0x0303, 0x0304)  # the http scope's, kept
    assert "websocket.http.response" in scope["extensions"]


@pytest.mark.parametrize("app", APPS)
def test_curl_over_https_and_mtls(procs, tmp_path, certs, app):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (.ci/run installs it)")
    served = _serve_tls(procs, tmp_path, certs, app, "--ca-certs", certs["ca.pem"],
                        "--cert-reqs", "optional")
    base = ["curl", "-sS", "--fail", "--cacert", certs["ca.pem"]]
    url = f"https://127.0.0.1:{served.port}"
    result = subprocess.run(base + [f"{url}/info", f"{url}/x/info"], capture_output=True,
                            text=True, timeout=60)  # two requests on one connection
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout[:result.stdout.index("}") + 1])
    assert first["wsgi.url_scheme"] == "https" and not first["SSL_CLIENT_S_DN"]
    result = subprocess.run(base + ["--cert", certs["client.pem"], "--key", certs["client.key"],
                                    f"{url}/info"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["SSL_CLIENT_S_DN"] == "CN=graceful client,O=graceful"
    if app.startswith("edge_wsgi"):  # a body the close ends, over TLS
        result = subprocess.run(base + ["--http1.0", f"{url}/stream"], capture_output=True,
                                timeout=60)
        assert (result.returncode, result.stdout) == (0, b"part 0\npart 1\npart 2\n"), result
