"""asyncio servers (streams and Protocols) under graceful: upgrade under load, drain, abort."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from _support import (ROOT, Load, children_of, free_port, process_state, read_line, reap_orphans,
                      wait_established, wait_for)

CHILD = os.path.join(ROOT, "tests", "children", "asyncio_child.py")

KINDS = [pytest.param([], id="streams"), pytest.param(["--protocol"], id="protocol")]


def _start(procs, port, *extra):
    proc = procs.python(CHILD, f"web=127.0.0.1:{port}", *extra, stdout=subprocess.PIPE)
    assert read_line(proc.stdout, 30).startswith("READY")
    return proc


def _get(sock, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("extra", KINDS)
def test_sighup_under_load_moves_serving_with_zero_failures(procs, extra):
    port = free_port()
    proc = _start(procs, port, *extra)
    loads = [Load(port, keepalive=True, paths=("/fast",) * 4 + ("/slow",), clients=3).start(),
             Load(port, keepalive=False, paths=("/fast",) * 4 + ("/slow",), clients=2).start()]
    for load in loads:
        load.wait_requests(100)
    os.kill(proc.pid, signal.SIGHUP)
    successor = wait_for(lambda: [c for c in children_of(proc.pid)
                                  if process_state(c) not in (None, "Z")], 30)[0]
    assert proc.wait(timeout=30) == 0
    for load in loads:
        load.wait_requests(load.total + 100)
        load.stop()
    assert [f for load in loads for f in load.failures] == []
    assert {successor, proc.pid} <= {pid for load in loads for pid in load.pids}
    os.kill(successor, signal.SIGQUIT)
    wait_for(lambda: process_state(successor) in (None, "Z"), 30)
    reap_orphans()


@pytest.mark.parametrize("extra", KINDS)
def test_sigquit_finishes_slow_requests_and_closes_idle_ones(procs, extra):
    port = free_port()
    proc = _start(procs, port, *extra, "--graceful-timeout", "600")
    idle = socket.create_connection(("127.0.0.1", port), timeout=30)
    assert _get(idle, "/fast").startswith(b"HTTP/1.1 200")
    # These answer only once the drain has begun, so they are in flight across the SIGQUIT
    # however late the server handles it (a fixed-length request could finish first).
    slow = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
    for s in slow:
        s.sendall(b"GET /until-drain HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_established(port, slow)  # queued or accepted, not still in the handshake
    os.kill(proc.pid, signal.SIGQUIT)
    for s in slow:
        data = b""
        while not data.endswith(b"\n") or b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b"Connection: close" in data
        s.close()
    assert idle.recv(1) == b""  # closed after the idle grace, long before the 600 s deadline
    idle.close()
    assert proc.wait(timeout=60) == 0


@pytest.mark.parametrize("extra", KINDS)
def test_a_hung_handler_is_aborted_at_the_graceful_timeout(procs, extra):
    port = free_port()
    proc = _start(procs, port, *extra, "--graceful-timeout", "1")
    baseline = _sockets(proc.pid)
    hung = socket.create_connection(("127.0.0.1", port), timeout=30)
    hung.sendall(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_for(lambda: _sockets(proc.pid) > baseline, what="the connection to be accepted")
    os.kill(proc.pid, signal.SIGQUIT)
    try:
        assert hung.recv(1) == b""
    except ConnectionResetError:
        pass  # an abort may reset: the deadline forces it
    assert proc.wait(timeout=30) == 0
    hung.close()


def _sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count
