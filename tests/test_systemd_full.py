"""sd_notify is best effort: a NOTIFY_SOCKET whose reader stopped reading (its receive queue
full) drops the message with one warning and never blocks the server.

Each notify runs in a child process: a blocking send would hang it, and the test fails by its
deadline instead of hanging the test run."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from _serve import Served
from _support import http_get

DEADLINE = 60.0  # generous: the machine is loaded; a blocking send never ends at all


@pytest.fixture(params=["path", "abstract"])
def full_socket(request, tmp_path):
    """A bound AF_UNIX datagram socket that nobody reads, filled until a send would block;
    yields the NOTIFY_SOCKET value that names it."""
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        reader.bind(address)
        value = address
    else:
        name = f"graceful-full-{os.getpid()}-{time.monotonic_ns()}"
        address = "\0" + name
        reader.bind(address)
        value = "@" + name
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
        filler.setblocking(False)
        for _ in range(100_000):
            try:
                filler.sendto(b"STATUS=filler", address)
            except BlockingIOError:
                break
        else:
            pytest.fail("the notify socket's queue never filled")
    yield value
    reader.close()


def test_notify_to_a_full_socket_returns_and_warns_once(full_socket, procs):
    code = ("import logging, sys\n"
            "logging.basicConfig(stream=sys.stderr)\n"
            "from graceful import systemd\n"
            "results = [systemd.ready(), systemd.status('a'), systemd.status('b'),\n"
            "           systemd.stopping()]\n"
            "print(results, flush=True)\n")
    proc = procs.python("-c", code, env={**os.environ, "NOTIFY_SOCKET": full_socket},
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail("sd_notify blocked on a NOTIFY_SOCKET that nobody reads")
    assert proc.returncode == 0, err
    assert out.strip() == "[False, False, False, False]"
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    # One per kind: READY, STATUS (twice sent, warned once), STOPPING; each names the socket.
    assert len(warnings) == 3, err
    assert all(full_socket in line for line in warnings), err
    assert [kind for kind in ("READY", "STATUS", "STOPPING")
            if any(f": {kind} dropped" in line for line in warnings)] == ["READY", "STATUS",
                                                                        "STOPPING"], err
    assert "Traceback" not in err


@pytest.mark.parametrize("app, extra", [("wsgi_app.py:app", ()), ("asgi_app.py:app", ()),
                                        ("wsgi_app.py:app", ("--workers", "2"))],
                         ids=["wsgi", "asgi", "master"])
def test_serve_becomes_ready_and_serves_despite_a_full_notify_socket(full_socket, procs,
                                                                      tmp_path, app, extra):
    env = {**os.environ, "NOTIFY_SOCKET": full_socket}
    served = Served(procs, tmp_path, app, *extra, env=env, wait=False)
    try:
        served.wait_ready(served.proc.pid, timeout=DEADLINE)
    except AssertionError:
        raise AssertionError(f"not ready with a full NOTIFY_SOCKET; log:\n{served.log()}")
    response = http_get(served.port, "/hello")
    assert response.startswith(b"HTTP/1.1 200"), response
    assert f"NOTIFY_SOCKET {full_socket} is not reading" in served.log()
