"""A connection accepted before the drain but whose request has not arrived yet is served, not
closed as idle: the drain's idle grace is for keep-alive connections *between* requests.

Under load a client can take longer than the grace between its connect() and its request; a
server that closes it then loses that request (the client sees EOF before any response)."""

from __future__ import annotations

import signal

import pytest

from _serve import Client, Served
from _support import wait_established


@pytest.mark.parametrize("app", ["wsgi_app.py:app", "asgi_app.py:app"])
def test_a_fresh_connection_accepted_before_the_drain_is_served_after_the_idle_grace(
        procs, tmp_path, app):
    served = Served(procs, tmp_path, app)
    old = served.proc.pid
    # A keep-alive connection that served one request: the drain closes it after the grace,
    # and that close is the clock that tells us the grace is over.
    kept = Client(served.connect())
    assert kept.request("GET", "/hello").status == 200
    fresh = served.connect()  # accepted by the old generation; its request comes much later
    wait_established(served.port, [fresh])
    served.wait(lambda: _accepted_by(old, fresh), what="the old generation to accept it")
    served.proc.send_signal(signal.SIGHUP)
    assert kept.closed_by_server(timeout=60), "the idle keep-alive connection was not closed"
    client = Client(fresh)
    response = client.request("GET", "/hello")
    assert response.status == 200
    assert response.headers["x-pid"] == str(old)  # the generation that accepted it served it
    assert "close" in response.headers.get("connection", "")


def _accepted_by(pid: int, client) -> bool:
    """Whether ``pid`` holds the server side of ``client``'s connection (an fd on it)."""
    import os

    local = client.getsockname()[1]
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == local and fields[3] == "01":
                inodes.add(fields[9])
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False
