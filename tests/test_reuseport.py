"""SO_REUSEPORT handoff: a new process binds beside the old one; no connection is reset."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from _serve import Served
from _support import Load, http_get, wait_established
from graceful import reuseport
from graceful._proc import tcp_listeners

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT") or not os.path.exists(
    "/proc/net/tcp"), reason="SO_REUSEPORT steering is Linux-only")


def _reuseport_listener(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _landed(port: int, listeners, n: int = 30):
    """Connect ``n`` clients; how many each listener got, in order."""
    clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
    # connect() returns before the server side has the final ACK: until then a connection is
    # in no accept queue, and a loaded machine can make that last long enough to be counted.
    wait_established(port, clients)
    counts = []
    for listener in listeners:
        count = 0
        for _ in range(n + 1):
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            conn.close()
            count += 1
        counts.append(count)
    for client in clients:
        client.close()
    return counts


def _group(port: int) -> int:
    return sum(1 for row in tcp_listeners() if row.local_port == port)


def test_steering_keeps_traffic_on_the_old_socket_until_the_new_one_takes_it():
    old = _reuseport_listener()
    port = old.getsockname()[1]
    new = _reuseport_listener(port)
    try:
        assert reuseport.group_size(old) == reuseport.group_size(new) == 2
        assert reuseport.hold_traffic(new) is not None  # just bound: the old one keeps it all
        assert _landed(port, [old, new]) == [30, 0]
        reuseport.take_traffic(new)  # ready
        assert _landed(port, [old, new]) == [0, 30]
        old.close()
        assert reuseport.group_size(new) == 1
        assert _landed(port, [new]) == [30]
        newer = _reuseport_listener(port)  # the next handoff, same steps
        try:
            reuseport.hold_traffic(newer)
            assert _landed(port, [new, newer]) == [30, 0]
            reuseport.take_traffic(newer)
            assert _landed(port, [new, newer]) == [0, 30]
        finally:
            newer.close()
    finally:
        old.close()
        new.close()


def test_a_new_process_that_dies_before_ready_takes_no_connection(procs, tmp_path):
    old = Served(procs, tmp_path, "wsgi_app.py:app", "--reuse-port")
    load = Load(old.port, keepalive=False, paths=("/hello",), clients=4).start()
    load.wait_requests(50)
    env = dict(os.environ, ASGI_APP_LIFESPAN="hang")
    stuck = Served(procs, tmp_path, "asgi_app.py:app", "--reuse-port", "--lifespan", "on",
                   port=old.port, env=env, wait=False)
    stuck.wait(lambda: _group(old.port) == 2, what="the new process to bind beside")
    load.wait_requests(load.total + 200)  # all while the new process is bound, never ready
    os.kill(stuck.proc.pid, signal.SIGKILL)
    stuck.proc.wait(30)
    load.wait_requests(load.total + 50)
    load.stop()
    assert load.failures == []  # without steering the kernel queued some on the dead one
    assert load.pids == [old.proc.pid]
    assert "SO_REUSEPORT handoff by SO_ATTACH_REUSEPORT_CBPF steering" in old.log()


def test_sigterm_after_a_process_beside_is_ready_loses_nothing(procs, tmp_path):
    old = Served(procs, tmp_path, "wsgi_app.py:app", "--reuse-port")
    fresh = Load(old.port, keepalive=False, paths=("/hello",) * 4 + ("/slow",), clients=4).start()
    kept = Load(old.port, keepalive=True, paths=("/hello",) * 4 + ("/slow",), clients=2).start()
    fresh.wait_requests(50)
    new = Served(procs, tmp_path, "wsgi_app.py:app", "--reuse-port", port=old.port)
    # Ready: every new connection goes to the new process, while the old one still serves.
    for _ in range(20):
        assert f"X-Pid: {new.proc.pid}\r\n".encode() in http_get(new.port, "/hello")
    old.proc.send_signal(signal.SIGTERM)
    assert old.proc.wait(30) == 0
    for load in (fresh, kept):
        load.wait_requests(load.total + 50)
        load.stop()
    assert fresh.failures == [] and kept.failures == []
    assert new.proc.pid in kept.pids  # keep-alive clients moved on once the old one closed


def test_takeover_with_reuse_port_binds_beside_and_the_old_one_drains(procs, tmp_path):
    handoff = str(tmp_path / "handoff.sock")
    pidfile = str(tmp_path / "app.pid")
    old = Served(procs, tmp_path, "wsgi_app.py:app", "--reuse-port", "--handoff-socket", handoff,
                 "--pidfile", pidfile)
    load = Load(old.port, keepalive=False, paths=("/hello",) * 4 + ("/slow",), clients=4).start()
    load.wait_requests(50)
    new = Served(procs, tmp_path, "wsgi_app.py:app", "--reuse-port", "--takeover", handoff,
                 "--handoff-socket", handoff, "--pidfile", pidfile, port=old.port)
    assert old.proc.wait(30) == 0
    assert "binding beside its listeners (SO_REUSEPORT)" in new.log()
    assert "its own listeners beside ours" in old.log()
    load.wait_requests(load.total + 100)
    load.stop()
    assert load.failures == []
    assert load.pids[-1] == new.proc.pid
    with open(pidfile) as f:
        assert int(f.read()) == new.proc.pid
    new.proc.send_signal(signal.SIGQUIT)
    assert new.proc.wait(30) == 0
