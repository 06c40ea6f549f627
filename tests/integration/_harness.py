"""Shared machinery of the integration suite: servers to test (graceful, and uvicorn or gunicorn
to compare with), a strict HTTP/1.1 client (h11), curl, and reloads under load.

Imported by the test modules only (it needs the integration venv); conftest.py stays stdlib.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import h11
import pytest

from _serve import Served
from _support import Load, free_port, process_state, reap_orphans, wait_for

APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps")

# Both ways graceful serves: one process that re-execs itself, and a master with workers.
MODES = {"one-process": (), "workers-2": ("--workers", "2")}


def app_fixtures(app: str):
    """The two server fixtures of a framework's test module, for ``app`` ("module.py:name" of
    tests/integration/apps/): ``server`` (one process) and ``server_in_each_mode`` (each of
    MODES). Use as ``server, server_in_each_mode = app_fixtures(APP)`` at module level."""

    @pytest.fixture
    def server(serve):
        return serve(app)

    @pytest.fixture(params=list(MODES))
    def server_in_each_mode(request, serve):
        return serve(app, *MODES[request.param])

    return server, server_in_each_mode


def _app_env(markers, data_file) -> Dict[str, str]:
    env = dict(os.environ)
    env["INTEGRATION_MARKERS"] = str(markers)
    env["INTEGRATION_DATA"] = str(data_file)
    return env


class GracefulServer:
    """`graceful serve APP` (an app of tests/integration/apps/) on a free loopback port."""

    def __init__(self, procs, tmp_path, app: str, *extra: str, markers, data_file,
                 env: Optional[Dict[str, str]] = None) -> None:
        self.workers = "--workers" in extra
        full_env = _app_env(markers, data_file)
        full_env.update(env or {})
        self.pidfile = tmp_path / f"graceful-{free_port()}.pid"
        self._served = Served(procs, tmp_path, os.path.join(APPS, app), *extra,
                              "--pidfile", str(self.pidfile), env=full_env)
        self.port = self._served.port
        self.proc = self._served.proc
        self.url = f"http://127.0.0.1:{self.port}"
        self.generation = 1
        # The process that takes SIGHUP: the master, or the one serving. Served waited for its
        # "ready" line, which a master logs once its first generation is ready.
        self.pid = self.proc.pid

    def log(self) -> str:
        return self._served.log()

    def wait(self, predicate, timeout: float = 30.0, what: str = "condition"):
        return self._served.wait(predicate, timeout, what)

    def reload(self) -> None:
        """SIGHUP, and wait until the next generation serves (one process: and the old process
        has exited; a master's old workers drain on in the background)."""
        if self.workers:
            self.generation += 1
            os.kill(self.pid, signal.SIGHUP)
            self.wait(lambda: f"generation {self.generation} is serving" in self.log(), 60,
                      what=f"generation {self.generation} to serve")
            return
        old = self.pid
        seen = {int(p) for p in re.findall(r"ready: pid (\d+) ", self.log())}
        os.kill(old, signal.SIGHUP)
        self.pid = self.wait(lambda: [int(p) for p in re.findall(r"ready: pid (\d+) ", self.log())
                                      if int(p) not in seen], 60,
                             what=f"a successor of {old}")[0]
        self.wait(lambda: (reap_orphans(), process_state(old) in (None, "Z"))[1], 60,
                  what=f"generation {old} to exit")

    def quit(self, timeout: float = 30.0) -> None:
        """SIGQUIT to the serving process (or master) and wait until it is gone."""
        pid = self.pid
        os.kill(pid, signal.SIGQUIT)

        def gone() -> bool:
            reap_orphans(exclude=[self.proc.pid])  # a successor is an orphan we reap
            if pid == self.proc.pid:
                return self.proc.poll() is not None
            return process_state(pid) in (None, "Z")

        self.wait(gone, timeout, what=f"pid {pid} to exit")


class ReferenceServer:
    """The same app under uvicorn or gunicorn from the venv, on a free loopback port."""

    def __init__(self, procs, tmp_path, server: str, app: str, *extra: str, markers,
                 data_file) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if server == "uvicorn":
            args = ["-m", "uvicorn", "--app-dir", APPS, "--host", "127.0.0.1",
                    "--port", str(self.port), "--log-level", "warning", *extra, app]
        elif server == "gunicorn":
            args = ["-m", "gunicorn", "--chdir", APPS, "--bind", f"127.0.0.1:{self.port}",
                    "--workers", "1", "--log-level", "warning", *extra, app]
        else:
            raise ValueError(f"unknown reference server {server!r}: uvicorn or gunicorn")
        self.log_path = tmp_path / f"{server}-{self.port}.log"
        with open(self.log_path, "w") as log:
            self.proc = procs.spawn([sys.executable, *args], stderr=log, stdout=log,
                                    env=_app_env(markers, data_file), cwd=str(tmp_path))
        wait_for(lambda: self.proc.poll() is not None or _accepts(self.port), 60,
                 what=f"{server} to listen")
        assert self.proc.poll() is None, self.log_path.read_text()

    def log(self) -> str:
        return self.log_path.read_text()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    except OSError:
        return False


# --- a strict client -----------------------------------------------------------------------

@dataclass
class StrictResponse:
    status: int
    headers: List[Tuple[str, str]]
    body: bytes
    http_version: str
    trailers: List[Tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> Optional[str]:
        values = [v for n, v in self.headers if n == name.lower()]
        return ", ".join(values) if values else None

    def __repr__(self) -> str:
        return f"<{self.status} {self.headers} {self.body[:80]!r}>"


@dataclass
class StrictRequest:
    method: str
    target: str
    headers: Sequence[Tuple[str, str]] = ()
    body: bytes = b""


def strict_exchange(port: int, requests: Sequence[StrictRequest], *, pipelined: bool = False,
                    host: str = "127.0.0.1", timeout: float = 30.0) -> List[StrictResponse]:
    """Send ``requests`` on one connection and parse every response with h11, which refuses
    any framing error (a wrong Content-Length, broken chunks, bad header syntax, bytes after a
    response). Then one more request with ``Connection: close`` must get a clean response and
    a clean EOF, so a body longer than its framing said, or a connection left in a bad state,
    fails too. ``pipelined`` writes every request before reading any response.
    """
    conn = h11.Connection(h11.CLIENT)
    wire = [_encode(h11.Connection(h11.CLIENT), r) for r in requests]
    final = StrictRequest("GET", requests[0].target if requests[0].method == "GET" else "/",
                          [("Connection", "close")])
    responses: List[StrictResponse] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        if pipelined:
            sock.sendall(b"".join(wire))
        for index, request in enumerate(requests):
            _send_through(conn, request, sock, write=not pipelined)
            responses.append(_receive(conn, sock))
            _assert_head_framing(responses[-1], request)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                assert index == len(requests) - 1, (
                    f"the server closed the connection after request {index + 1} of "
                    f"{len(requests)}: {responses[-1]!r}")
                _expect_eof(sock)
                return responses
            conn.start_next_cycle()
        _send_through(conn, final, sock, write=True)
        last = _receive(conn, sock)
        _assert_head_framing(last, final)
        _expect_eof(sock)
    return responses


def _encode(conn: h11.Connection, request: StrictRequest) -> bytes:
    headers = list(request.headers)
    if not any(n.lower() == "host" for n, _ in headers):
        headers.insert(0, ("Host", "127.0.0.1"))
    if request.body and not any(n.lower() in ("content-length", "transfer-encoding")
                                for n, _ in headers):
        headers.append(("Content-Length", str(len(request.body))))
    data = conn.send(h11.Request(method=request.method, target=request.target, headers=headers))
    if request.body:
        data += conn.send(h11.Data(data=request.body))
    data += conn.send(h11.EndOfMessage())
    return data


def _send_through(conn: h11.Connection, request: StrictRequest, sock, write: bool) -> None:
    data = _encode(conn, request)
    if write:
        sock.sendall(data)


def _receive(conn: h11.Connection, sock) -> StrictResponse:
    head = None
    body: List[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            if not data and head is None:
                raise AssertionError("the server closed the connection instead of responding")
            conn.receive_data(data)  # EOF mid-body: h11 raises RemoteProtocolError
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return StrictResponse(
                head.status_code, [(n.decode(), v.decode("latin-1")) for n, v in head.headers],
                b"".join(body), head.http_version.decode(),
                [(n.decode(), v.decode("latin-1")) for n, v in event.headers])
        elif isinstance(event, h11.ConnectionClosed):
            raise AssertionError(f"the server closed the connection mid-response "
                                 f"(head {head!r}, {sum(map(len, body))} body bytes)")


def _expect_eof(sock) -> None:
    """After a response that ends the connection nothing more may come, and a FIN must (a
    reset raises here)."""
    data = sock.recv(65536)
    assert data == b"", f"bytes after the last response: {data[:200]!r}"


def _assert_head_framing(response: StrictResponse, request: StrictRequest) -> None:
    """What h11 tolerates but RFC 9112 forbids an origin server to send."""
    names = [n for n, _ in response.headers]
    assert not ("content-length" in names and "transfer-encoding" in names), response
    assert names.count("content-length") <= 1, response
    if response.status in (204, 304) or 100 <= response.status < 200:
        assert "transfer-encoding" not in names and not response.body, response
    if request.method == "HEAD":
        assert not response.body, response


# --- curl ----------------------------------------------------------------------------------

def curl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run curl (bounded) and return its result; stdout is bytes."""
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", str(int(timeout)),
                           *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout + 30)


# --- reloads under load --------------------------------------------------------------------

def reload_under_load(server: GracefulServer, paths: Sequence[str], reloads: int = 5,
                      between: int = 40) -> List[Load]:
    """``reloads`` SIGHUPs while keep-alive and fresh-connection clients request ``paths``;
    each reload waits for the handover and for ``between`` more requests per load. Returns the
    stopped loads: every request that was written and not answered 200 is in their failures."""
    loads = [Load(server.port, keepalive=True, paths=paths, clients=3, max_seconds=240).start(),
             Load(server.port, keepalive=False, paths=paths, clients=3, max_seconds=240).start()]
    try:
        for load in loads:
            load.wait_requests(between, timeout=120)
        for _ in range(reloads):
            server.reload()
            for load in loads:
                load.wait_requests(load.total + between, timeout=120)
    finally:
        for load in loads:
            load.stop()
    return loads
