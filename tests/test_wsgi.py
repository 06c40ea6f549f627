"""The WSGI server over real sockets: a PEP 3333 validated matrix, bad input (for the ASGI
server too), drain, upgrade."""

from __future__ import annotations

import json
import os
import re
import signal
import socket

import pytest

from _serve import APPS, Client, Served
from _support import Load, children_of, process_state, reap_orphans, wait_established, wait_for


def test_validated_app_matrix_on_one_keepalive_connection(procs, tmp_path):
    served = Served(procs, tmp_path, "wsgi_app.py:app")
    client = Client(served.connect())
    r = client.request("GET", "/hello")
    assert (r.status, r.body, r.headers["content-length"]) == (200, b"hello\n", "6")
    assert "date" in r.headers and "connection" not in r.headers
    r = client.request("HEAD", "/hello")
    assert (r.status, r.body) == (200, b"")
    big = os.urandom(100_000)
    assert client.request("POST", "/echo", big).body == big
    chunks = [b"abc", os.urandom(5000), b"x"]
    assert client.request("POST", "/echo", chunks=chunks).body == b"".join(chunks)
    r = client.request("GET", "/stream")
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.body == b"part 0\npart 1\npart 2\n"
    assert client.request("GET", "/write").body == b"written then returned\n"
    with open(os.path.join(APPS, "wsgi_app.py"), "rb") as f:
        assert client.request("GET", "/file").body == f.read()
    r = client.request("POST", "/partial", b"0123456789" * 1000)  # the app reads 5 bytes
    assert r.body == b"01234"
    assert client.request("GET", "/error").status == 500
    assert client.request("GET", "/nope").status == 404
    r = client.request("GET", "/hello")  # still the same connection after all that
    assert r.status == 200
    client.sock.close()
    log = served.log()
    assert "WSGIWarning" not in log and "AssertionError" not in log, log
    assert log.count("Traceback") == 1 and "the application failed on purpose" in log


def test_expect_100_continue_and_http_1_0(procs, tmp_path):
    served = Served(procs, tmp_path, "wsgi_app.py:app")
    client = Client(served.connect())
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert client._take_line() == b"HTTP/1.1 100 Continue"  # before we sent any body
    assert client._take_line() == b""
    client.send(b"hello")
    assert client.response().body == b"hello"
    client.sock.close()
    old = Client(served.connect())
    old.send(b"GET /stream HTTP/1.0\r\n\r\n")
    r = old.response()  # no length, no chunking in 1.0: the body ends at the close
    assert r.body == b"part 0\npart 1\npart 2\n" and r.headers["connection"] == "close"


def test_file_wrapper_uses_sendfile_for_real_files(procs, tmp_path):
    served = Served(procs, tmp_path, "wsgi_app.py:raw_app")
    client = Client(served.connect())
    r = client.request("GET", "/file")
    with open(os.path.join(APPS, "wsgi_app.py"), "rb") as f:
        content = f.read()
    assert r.body == content and r.headers["content-length"] == str(len(content))
    assert client.request("GET", "/hello").status == 200


def test_environ_over_tcp_and_unix(procs, tmp_path):
    path = str(tmp_path / "s.sock")
    served = Served(procs, tmp_path, "wsgi_app.py:app",
                    binds=None, port=None)
    served_unix = Served(procs, tmp_path, "wsgi_app.py:app", binds=[f"unix=unix:{path}"])
    client = Client(served.connect())
    r = client.request("GET", "/env?x=1&y=%20", headers=[("X-Test", "a"), ("X_Test", "spoof")])
    env = json.loads(r.body)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"].isdigit()
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", str(served.port))
    assert (env["QUERY_STRING"], env["PATH_INFO"], env["SCRIPT_NAME"]) == ("x=1&y=%20", "/env", "")
    assert env["HTTP_X_TEST"] == "a"  # the underscore spelling is dropped, not merged
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    unix = socket.socket(socket.AF_UNIX)
    unix.settimeout(10)
    unix.connect(path)
    env = json.loads(Client(unix).request("GET", "/env").body)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("", None)
    assert env["SERVER_NAME"] == path
    unix.close()
    served_unix.proc.send_signal(signal.SIGQUIT)
    assert served_unix.proc.wait(30) == 0


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n", 400),
    (b"GET /hello HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    (b"GET /hello HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
])
@pytest.mark.parametrize("app", ["wsgi_app.py:app", "asgi_app.py:app"])
def test_bad_requests_get_their_status_and_a_close(procs, tmp_path, request_bytes, status, app):
    served = Served(procs, tmp_path, app)
    client = Client(served.connect())
    client.send(request_bytes)
    r = client.response()
    assert r.status == status and r.headers["connection"] == "close"
    assert client.closed_by_server()
    assert Client(served.connect()).request("GET", "/hello").status == 200  # the server is fine


def test_body_limit_gives_413(procs, tmp_path):
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--max-body", "1000")
    client = Client(served.connect())
    assert client.request("POST", "/echo", b"x" * 1000).body == b"x" * 1000
    r = client.request("POST", "/echo", b"x" * 1001)
    assert r.status == 413 and r.headers["connection"] == "close"
    client = Client(served.connect())
    r = client.request("POST", "/echo", chunks=[b"x" * 600, b"y" * 600])
    assert r.status == 413


@pytest.mark.parametrize("app", ["wsgi_app.py:app", "asgi_app.py:app"])
def test_slow_loris_gets_408_and_idle_keepalive_is_closed(procs, tmp_path, app):
    served = Served(procs, tmp_path, app, "--header-timeout", "1", "--keepalive-timeout", "1")
    loris = Client(served.connect())
    loris.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n")  # and never the blank line
    idle = Client(served.connect())
    assert idle.request("GET", "/hello").status == 200
    assert loris.response().status == 408
    assert loris.closed_by_server()
    assert idle.closed_by_server()


def test_sigquit_finishes_in_flight_and_closes_idle(procs, tmp_path):
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--graceful-timeout", "600")
    idle = Client(served.connect())
    assert idle.request("GET", "/hello").status == 200
    # In flight when the drain begins, for sure: each request's body is finished only then.
    slow = [Client(served.connect()) for _ in range(3)]
    for c in slow:
        c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
    wait_established(served.port, [c.sock for c in slow])
    served.proc.send_signal(signal.SIGQUIT)
    served.wait(lambda: "draining (SIGQUIT)" in served.log(), what="the drain to begin")
    for c in slow:
        c.send(b"world")
        r = c.response()
        assert (r.status, r.body, r.headers["connection"]) == (200, b"helloworld", "close")
    assert idle.closed_by_server()  # after the idle grace, far before the 600 s deadline
    assert served.proc.wait(30) == 0


def test_sighup_upgrades_under_load_lose_nothing(procs, tmp_path):
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--ready-path", "/-/ready")
    loads = [Load(served.port, keepalive=True, paths=("/hello",) * 4 + ("/slow",), clients=4).start(),
             Load(served.port, keepalive=False, paths=("/hello",) * 4 + ("/slow",), clients=4).start()]
    pid = served.proc.pid
    pids = [pid]
    for _ in range(3):
        for load in loads:
            load.wait_requests(load.total + 100)
        os.kill(pid, signal.SIGHUP)
        new = served.wait(lambda: [int(p) for p in re.findall(r"ready: pid (\d+) ", served.log())
                                   if int(p) not in pids], 30, what=f"a successor of {pid}")[0]
        wait_for(lambda: (reap_orphans(), process_state(pid) in (None, "Z"))[1], 30,
                 what=f"generation {pid} to exit")
        pid = new
        pids.append(pid)
    for load in loads:
        load.wait_requests(load.total + 100)
        load.stop()
    assert [f for load in loads for f in load.failures] == []
    assert set(pids) <= {p for load in loads for p in load.pids}
    os.kill(pid, signal.SIGQUIT)
    wait_for(lambda: (reap_orphans(), process_state(pid) in (None, "Z"))[1], 30)
    assert children_of(os.getpid()) == [] or all(process_state(p) in (None, "Z")
                                                 for p in children_of(os.getpid()))


def test_access_log_is_reopened_on_sigusr1(procs, tmp_path):
    log = tmp_path / "access.log"
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--access-log", str(log))
    client = Client(served.connect())
    client.request("GET", "/hello?a=1")
    wait_for(lambda: log.exists() and '"GET /hello?a=1 HTTP/1.1" 200 6' in log.read_text())
    log.rename(tmp_path / "access.log.1")  # what logrotate does
    served.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: log.exists(), what="the access log to be reopened")
    client.request("GET", "/hello?b=2")
    wait_for(lambda: '"GET /hello?b=2 HTTP/1.1" 200 6' in log.read_text())
    assert "b=2" not in (tmp_path / "access.log.1").read_text()
