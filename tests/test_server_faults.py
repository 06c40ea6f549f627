"""Faults of the built-in HTTP servers met in the field: concurrent receive(), empty files,
slow readers, unread request bodies, scope details, file descriptor exhaustion."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time

import pytest

from _serve import APPS, Client, Served
from _support import PYTHON, ROOT, free_port, wait_established, wait_for
from graceful._proc import ESTABLISHED, tcp_sockets

BOTH = pytest.mark.parametrize("app", ["wsgi_app.py:app", "asgi_app.py:app"])


def test_asgi_every_pending_receive_gets_the_disconnect(procs, tmp_path):
    events = tmp_path / "events"
    env = dict(os.environ, ASGI_APP_EVENTS=str(events))
    served = Served(procs, tmp_path, "asgi_app.py:app", env=env)
    client = Client(served.connect())
    client.send(b"GET /two-receivers HTTP/1.1\r\nHost: t\r\n\r\n")
    assert client._take_line().startswith(b"HTTP/1.1 200")  # streaming, both receive() pending
    client.sock.close()
    line = wait_for(lambda: events.exists() and re.search(r"receivers .*", events.read_text()),
                    20, what="the stream to end").group()
    assert line.split()[1:] == ["http.disconnect", "http.disconnect"]


def test_asgi_path_is_decoded_with_replacement_and_asgi_dict_is_per_request(procs, tmp_path):
    served = Served(procs, tmp_path, "asgi_app.py:app")
    client = Client(served.connect())
    scope = json.loads(client.request("GET", "/scope").body)
    assert scope["asgi_was_changed"] is False
    scope = json.loads(client.request("GET", "/scope/%c0/caf%C3%A9?x=%c0").body)
    assert scope["path"] == "/scope/\ufffd/caf\u00e9"
    assert scope["raw_path"] == "/scope/%c0/caf%C3%A9"
    assert scope["query_string"] == "x=%c0"
    assert scope["asgi_was_changed"] is False  # the previous request changed its own copy


@pytest.mark.parametrize("app", ["wsgi_app.py:app", "wsgi_app.py:raw_app"])
def test_wsgi_empty_file_response_keeps_the_connection(procs, tmp_path, app):
    served = Served(procs, tmp_path, app)
    client = Client(served.connect())
    for _ in range(2):
        r = client.request("GET", "/empty-file")
        assert (r.status, r.body, r.headers["content-length"]) == (200, b"", "0")
        assert "connection" not in r.headers
    assert client.request("GET", "/hello").status == 200  # the same connection
    assert "Traceback" not in served.log(), served.log()


_BIG = 16 << 20


def _small_window_client(port: int) -> socket.socket:
    """A client whose small receive buffer keeps most of a large response in the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    return sock


def _server_side_established(port: int, client: socket.socket) -> bool:
    client_port = client.getsockname()[1]
    return any(row.local_port == port and row.remote_port == client_port
               for row in tcp_sockets(ESTABLISHED))


@BOTH
def test_a_slow_steady_reader_gets_a_large_one_piece_response_whole(procs, tmp_path, app):
    # --body-timeout 1: the delivery takes many times that; it must not be cut off, and the
    # connection must stay open for the next request (not be taken for an idle one).
    served = Served(procs, tmp_path, app, "--body-timeout", "1", "--keepalive-timeout", "2")
    client = Client(_small_window_client(served.port))
    client.send(b"GET /one-piece?%d HTTP/1.1\r\nHost: t\r\n\r\n" % _BIG)
    while b"\r\n\r\n" not in client.buffer:
        assert client._fill()
    head, body = client.buffer.split(b"\r\n\r\n", 1)
    assert b"content-length: %d" % _BIG in head.lower()
    received = len(body)
    # At most 16 KiB every 4 ms: 1,024 reads or more, so at least four times the timeout (a
    # cap on the total send time would cut it off; "no progress for 1 s" never does).
    while received < _BIG:
        data = client.sock.recv(16384)
        assert data, f"response cut off after {received} of {_BIG} bytes"
        received += len(data)
        time.sleep(0.004)  # sleep-ok: the client under test reads slowly
    assert received == _BIG
    client.buffer = b""
    assert client.request("GET", "/hello").status == 200
    assert "Traceback" not in served.log()


@BOTH
def test_a_client_that_stops_reading_is_closed_after_the_send_timeout(procs, tmp_path, app):
    served = Served(procs, tmp_path, app, "--body-timeout", "1", "--keepalive-timeout", "600")
    sock = _small_window_client(served.port)
    sock.sendall(b"GET /one-piece?%d HTTP/1.1\r\nHost: t\r\n\r\n" % _BIG)
    wait_established(served.port, [sock])
    served.wait(lambda: not _server_side_established(served.port, sock), 30,
                what="the server to give up on a client that reads nothing")
    received = 0
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            received += len(data)
    except ConnectionResetError:
        pass
    assert received < _BIG
    assert Client(served.connect()).request("GET", "/hello").status == 200


def _upload_unread(client: Client, size: int, expect_continue: bool = False):
    """POST ``size`` bytes to /deny, sending while reading the answer (as curl does)."""
    head = b"POST /deny HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n" % size
    if expect_continue:
        head += b"Expect: 100-continue\r\n"
    failures = []

    def send_body() -> None:
        try:
            client.sock.sendall(os.urandom(size))
        except OSError as exc:
            failures.append(exc)

    client.send(head + b"\r\n")
    sender = threading.Thread(target=send_body, daemon=True)
    if not expect_continue:
        sender.start()
    r = client.response()
    if expect_continue:
        sender.start()  # a client that stops waiting for 100 Continue sends the body anyway
    sender.join(30)
    assert not sender.is_alive()
    return r, failures


@BOTH
@pytest.mark.parametrize("size, expect_continue", [(600_000, False), (3_000_000, False),
                                                   (100_000, True)])
def test_an_unread_request_body_never_breaks_a_promised_keepalive(procs, tmp_path, app, size,
                                                                  expect_continue):
    served = Served(procs, tmp_path, app)
    client = Client(served.connect())
    r, failures = _upload_unread(client, size, expect_continue)
    assert (r.status, r.body) == (401, b"denied\n")
    if r.headers.get("connection") == "close":
        assert size > 1 << 20 or expect_continue  # a small body is read off instead
        assert client.closed_by_server()
        assert failures == []  # read off while closing: no reset under the client's upload
    else:
        assert client.request("GET", "/hello").status == 200  # the same connection


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _accept_failures(log: str) -> int:
    return len(re.findall(r"accept.*(Too many open files|out of system resource)", log))


@BOTH
def test_file_descriptor_exhaustion_pauses_accepting_and_recovers(procs, tmp_path, app):
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "w") as log_file:
        proc = procs.spawn(["sh", "-c", 'ulimit -n 64 && exec "$0" "$@"', PYTHON, "-m", "graceful",
                            "serve", os.path.join(APPS, app), "--bind", f"web=127.0.0.1:{port}",
                            "--keepalive-timeout", "600", "--header-timeout", "600"],
                           stderr=log_file, env=env, cwd=str(tmp_path))
    wait_for(lambda: f"ready: pid {proc.pid} " in log_path.read_text() or proc.poll() is not None,
             30, what="the server to be ready")
    idle = []
    try:
        for _ in range(200):  # far more than 64 fds: they wait in the accept queue
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        wait_for(lambda: _accept_failures(log_path.read_text()), 30, what="accept to fail")
        # A window to watch the server in, not a synchronisation.
        cpu, started = _cpu_seconds(proc.pid), time.monotonic()
        while time.monotonic() - started < 3:
            assert proc.poll() is None
            time.sleep(0.1)  # sleep-ok: the length of the window
        cpu_share = (_cpu_seconds(proc.pid) - cpu) / (time.monotonic() - started)
        assert cpu_share < 0.5, f"the server used {cpu_share:.0%} of a CPU while out of fds"
    finally:
        for sock in idle:
            sock.close()
    log = log_path.read_text()
    assert 1 <= _accept_failures(log) <= 3, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    # Resumes by itself once descriptors are free again.
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            r = Client(sock).request("GET", "/hello")
            assert r.status == 200


@BOTH
def test_a_client_that_stalls_while_its_unread_body_is_read_off_is_closed(procs, tmp_path, app):
    served = Served(procs, tmp_path, app, "--body-timeout", "1", "--keepalive-timeout", "600")
    client = Client(served.connect(timeout=30))
    client.send(b"POST /deny HTTP/1.1\r\nHost: t\r\nContent-Length: 600000\r\n\r\n" + b"x" * 100_000)
    r = client.response()
    assert r.status == 401 and "connection" not in r.headers  # the rest would be read off
    assert client.closed_by_server(timeout=30)  # but it never comes
