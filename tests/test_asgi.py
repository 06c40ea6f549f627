"""The ASGI server over real sockets: a conformance matrix, lifespan, drain, upgrade, rollback."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from _serve import Client, Served
from _support import Load, process_state, reap_orphans, wait_established, wait_for


def test_asgi_matrix_on_one_keepalive_connection(procs, tmp_path):
    served = Served(procs, tmp_path, "asgi_app.py:app")
    client = Client(served.connect())
    r = client.request("GET", "/hello")
    assert (r.status, r.body, r.headers["content-length"]) == (200, b"hello\n", "6")
    r = client.request("HEAD", "/hello")
    assert (r.status, r.body) == (200, b"")
    big = os.urandom(300_000)  # more than the read buffer: reading pauses and resumes
    assert client.request("POST", "/echo", big).body == big
    chunks = [b"abc", os.urandom(70_000), b"x"]
    assert client.request("POST", "/echo", chunks=chunks).body == b"".join(chunks)
    r = client.request("GET", "/stream")
    assert r.headers["transfer-encoding"] == "chunked" and r.body == b"part 0\npart 1\npart 2\n"
    assert len(client.request("GET", "/big").body) == 64 * 131072
    assert client.request("GET", "/error").status == 500
    assert client.request("GET", "/nope").status == 404
    r = client.request("GET", "/scope?a=1", headers=[("X-Test", "yes")])
    scope = json.loads(r.body)
    assert scope["http_version"] == "1.1" and scope["method"] == "GET"
    assert (scope["path"], scope["query_string"]) == ("/scope", "a=1")
    assert scope["client"][0] == "127.0.0.1" and scope["server"] == ["127.0.0.1", served.port]
    assert ["x-test", "yes"] in scope["headers"] and scope["asgi"]["version"] == "3.0"
    r = client.request("GET", "/hello")  # still the same connection after all that
    assert r.status == 200
    websocket = Client(served.connect())
    r = websocket.request("GET", "/ws", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")])
    # An incomplete handshake (no Sec-WebSocket-Version) is refused: test_asgi_websocket.py
    assert r.status == 426 and websocket.closed_by_server()
    log = served.log()
    assert log.count("Traceback") == 1 and "the application failed on purpose" in log


def test_http_disconnect_reaches_the_app(procs, tmp_path):
    events = tmp_path / "events"
    env = dict(os.environ, ASGI_APP_EVENTS=str(events))
    served = Served(procs, tmp_path, "asgi_app.py:app", env=env)
    client = Client(served.connect())
    client.send(b"POST /disconnect HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    wait_established(served.port, [client.sock])
    client.sock.close()
    wait_for(lambda: events.exists() and "http.disconnect" in events.read_text(), 10,
             what="the app to see http.disconnect")


def test_lifespan_startup_failure_exits_non_zero(procs, tmp_path):
    for mode in ("fail", "raise"):
        env = dict(os.environ, ASGI_APP_LIFESPAN=mode)
        served = Served(procs, tmp_path, "asgi_app.py:app", "--lifespan", "auto", env=env,
                        wait=False)
        assert served.proc.wait(30) == 3, served.log()
        assert "lifespan startup failed" in served.log() or "startup exploded" in served.log()


def test_lifespan_unsupported_is_tolerated_in_auto_mode(procs, tmp_path):
    env = dict(os.environ, ASGI_APP_LIFESPAN="unsupported")
    served = Served(procs, tmp_path, "asgi_app.py:app", env=env)
    assert Client(served.connect()).request("GET", "/hello").status == 200


def test_sigquit_drains_then_runs_lifespan_shutdown(procs, tmp_path):
    events = tmp_path / "events"
    env = dict(os.environ, ASGI_APP_EVENTS=str(events))
    served = Served(procs, tmp_path, "asgi_app.py:app", "--graceful-timeout", "600", env=env)
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
    assert idle.closed_by_server()
    assert served.proc.wait(30) == 0
    pid = served.proc.pid
    assert events.read_text().splitlines() == [f"{pid} startup", f"{pid} shutdown"]


def _upgrade(served, pid, pids):
    os.kill(pid, signal.SIGHUP)
    return wait_for(lambda: [int(p) for p in re.findall(r"ready: pid (\d+) ", served.log())
                             if int(p) not in pids], 30, what="a successor")[0]


def _gone(pid):
    reap_orphans()
    return process_state(pid) in (None, "Z")


def test_sighup_upgrades_under_load_and_a_failing_lifespan_is_rolled_back(procs, tmp_path):
    switch = tmp_path / "lifespan-mode"
    app = tmp_path / "app.py"
    # The deployed app reads its lifespan mode from a file, so the test can break a deploy.
    app.write_text(
        "import os, sys\n"
        f"os.environ['ASGI_APP_LIFESPAN'] = open({str(switch)!r}).read().strip()\n"
        f"sys.path.insert(0, {os.path.join(os.path.dirname(__file__), 'apps')!r})\n"
        "sys.modules.pop('asgi_app', None)\n"
        "from asgi_app import app\n")
    switch.write_text("ok")
    served = Served(procs, tmp_path, str(app) + ":app")
    loads = [Load(served.port, keepalive=True, paths=("/hello",) * 4 + ("/slow",), clients=4).start(),
             Load(served.port, keepalive=False, paths=("/hello",) * 4 + ("/slow",), clients=4).start()]
    pid = served.proc.pid
    pids = [pid]
    for _ in range(2):
        for load in loads:
            load.wait_requests(load.total + 100)
        new = _upgrade(served, pid, pids)
        wait_for(lambda: _gone(pid), 30, what=f"generation {pid} to exit")
        pid = new
        pids.append(pid)
    switch.write_text("fail")  # a broken deploy: lifespan startup fails
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: "upgrade not done" in served.log() or "upgrade failed" in served.log(), 30,
             what="the rollback")
    for load in loads:
        load.wait_requests(load.total + 100)
        load.stop()
    assert [f for load in loads for f in load.failures] == []
    assert set(pids) <= {p for load in loads for p in load.pids}
    assert process_state(pid) not in (None, "Z")  # the last good generation still serves
    os.kill(pid, signal.SIGQUIT)
    wait_for(lambda: _gone(pid), 30)


@pytest.mark.parametrize("app", ["asgi_app.py:app", "wsgi_app.py:app"])
def test_upgrades_under_a_storm_of_fresh_connections_reset_none(procs, tmp_path, app):
    # Thousands of new connections a second: some are accepted by asyncio at the very moment
    # the old generation stops; each must still be answered (asyncio builds the transport in a
    # task, and one built after Server.close() used to drop the connection with an RST).
    from graceful._loadgen import LoadGenerator, Stats

    served = Served(procs, tmp_path, app)
    load = LoadGenerator(served.port, concurrency=8, mode="fresh", paths=("/hello",),
                         stats=Stats())
    load.start(max_duration=120)
    pid, pids = served.proc.pid, [served.proc.pid]
    try:
        for _ in range(6):
            wait_for(lambda: load.stats.total >= 500 * len(pids), 30, what="requests")
            pid = _upgrade(served, pid, pids)
            pids.append(pid)
        wait_for(lambda: load.stats.total >= 500 * len(pids), 30, what="requests")
    finally:
        load.stop()
    assert load.stats.failed == 0, load.stats.samples
    os.kill(pid, signal.SIGQUIT)
    wait_for(lambda: _gone(pid), 30)


def test_ten_upgrades_of_graceful_serve_leak_no_fd(procs, tmp_path):
    for app in ("asgi_app.py:app", "wsgi_app.py:app"):
        served = Served(procs, tmp_path, app)
        pid = served.proc.pid
        baseline = len(os.listdir(f"/proc/{pid}/fd"))
        pids = [pid]
        for _ in range(10):
            new = _upgrade(served, pid, pids)
            wait_for(lambda: _gone(pid), 30, what=f"generation {pid} to exit")
            pid = new
            pids.append(pid)
            assert len(os.listdir(f"/proc/{pid}/fd")) == baseline, (app, os.listdir(f"/proc/{pid}/fd"))
        os.kill(pid, signal.SIGQUIT)
        wait_for(lambda: _gone(pid), 30)
