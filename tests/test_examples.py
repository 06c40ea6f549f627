"""Each example runs by the command in its header: start, one request, one upgrade, stop."""

from __future__ import annotations

import os
import signal

import pytest

from _support import ROOT, free_port, http_get, process_state, reap_orphans, wait_for
from graceful.pidfile import read_pid


def _pid(pidfile):
    try:
        return read_pid(pidfile)
    except Exception:
        return None


def _get_or_none(port):
    try:
        return http_get(port)
    except ConnectionRefusedError:
        return None


@pytest.mark.parametrize("example", ["http_server.py", "asyncio_server.py"])
def test_example_serves_upgrades_and_stops(procs, tmp_path, example):
    port = free_port()
    pidfile = str(tmp_path / "example.pid")
    proc = procs.python(os.path.join(ROOT, "examples", example), f"web=127.0.0.1:{port}", pidfile)
    reply = wait_for(lambda: _get_or_none(port), 30, what="the example to answer")
    assert reply.endswith(f"hello from pid {proc.pid}\n".encode())
    assert _pid(pidfile) == proc.pid
    os.kill(proc.pid, signal.SIGHUP)
    new = wait_for(lambda: _pid(pidfile) not in (None, proc.pid) and _pid(pidfile), 30)
    assert proc.wait(timeout=30) == 0
    assert http_get(port).endswith(f"hello from pid {new}\n".encode())
    os.kill(new, signal.SIGQUIT)
    wait_for(lambda: process_state(new) in (None, "Z"), 30, what="the upgraded example to exit")
    reap_orphans()
    assert not os.path.exists(pidfile)
