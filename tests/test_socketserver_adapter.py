"""Every stdlib socketserver flavour served by graceful: upgrade, drain, idle keep-alive."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from _support import ROOT, free_port, read_line, reap_orphans, process_state, wait_for

CHILD = os.path.join(ROOT, "tests", "children", "socketserver_child.py")


def _start(procs, server_class, bind, *extra):
    proc = procs.python(CHILD, server_class, bind, *extra, stdout=subprocess.PIPE)
    assert read_line(proc.stdout, 30).startswith("READY")
    return proc


def _connect(address):
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(address)
    return sock


def _echo(sock, text: str) -> int:
    sock.sendall(text.encode() + b"\n")
    reply = sock.makefile("rb").readline().decode()
    pid, echoed = reply.split(" ", 1)
    assert echoed == text + "\n"
    return int(pid)


def _http(sock) -> tuple:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    f = sock.makefile("rb")
    status = f.readline()
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    body = f.read(int(headers["content-length"]))
    assert status.startswith(b"HTTP/1.1 200"), status
    return int(body), headers


def _successor(pid: int) -> int:
    return wait_for(lambda: [c for c in _children(pid)], 30, what="a successor")[0]


def _children(pid):
    from _support import children_of
    return [c for c in children_of(pid) if process_state(c) not in (None, "Z")]


@pytest.mark.parametrize("server_class", ["TCPServer", "ThreadingTCPServer", "UnixStreamServer"])
def test_stream_servers_upgrade_and_finish_open_connections(procs, tmp_path, server_class):
    if server_class == "UnixStreamServer":
        address = str(tmp_path / "echo.sock")
        bind = f"echo=unix:{address}"
    else:
        address = ("127.0.0.1", free_port())
        bind = f"echo=127.0.0.1:{address[1]}"
    proc = _start(procs, server_class, bind)
    old = _connect(address)
    assert _echo(old, "before") == proc.pid
    os.kill(proc.pid, signal.SIGHUP)
    new_pid = _successor(proc.pid)
    # New connections reach the successor once it is ready; the old one keeps this connection.
    wait_for(lambda: _echo_fresh(address) == new_pid, 30, what="the successor serving")
    if server_class != "TCPServer":  # a plain TCPServer serves one connection at a time
        assert _echo(old, "still here") == proc.pid
    old.close()  # the old generation's last connection ends, so it exits
    assert proc.wait(timeout=30) == 0
    os.kill(new_pid, signal.SIGQUIT)
    wait_for(lambda: process_state(new_pid) in (None, "Z"), 30)
    reap_orphans()


def _echo_fresh(address):
    sock = _connect(address)
    try:
        return _echo(sock, "fresh")
    finally:
        sock.close()


@pytest.mark.parametrize("server_class", ["HTTPServer", "ThreadingHTTPServer"])
def test_http_servers_close_idle_keepalive_connections_on_drain(procs, server_class):
    port = free_port()
    proc = _start(procs, server_class, f"web=127.0.0.1:{port}", "--graceful-timeout", "600")
    idle = _connect(("127.0.0.1", port))
    pid, headers = _http(idle)
    assert pid == proc.pid and headers.get("connection") != "close"
    os.kill(proc.pid, signal.SIGQUIT)
    # The idle connection is closed after the short idle grace, long before the 600 s deadline.
    assert idle.recv(1) == b""
    assert proc.wait(timeout=60) == 0
    idle.close()


def test_busy_keepalive_connection_gets_connection_close(procs):
    port = free_port()
    # A long idle grace: however late the request below comes after the drain began, the idle
    # connection is still open for it (with the default 0.5 s a loaded machine may close it).
    proc = _start(procs, "ThreadingHTTPServer", f"web=127.0.0.1:{port}", "--graceful-timeout",
                  "600", "--idle-grace", "600")
    conn = _connect(("127.0.0.1", port))
    _http(conn)
    os.kill(proc.pid, signal.SIGQUIT)
    # A request sent during the drain is answered, and told the connection closes.
    wait_for(lambda: _refused(port), 30, what="the listener to close")
    pid, headers = _http(conn)
    assert pid == proc.pid and headers["connection"] == "close"
    assert conn.recv(1) == b""
    assert proc.wait(timeout=60) == 0


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True  # (a probe whose handshake met the close is reset: closed as well)
