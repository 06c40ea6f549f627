"""Socket handoff to an unrelated process over a Unix socket, with real processes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid

import pytest

from _serve import Served
from _support import ROOT, Load, children_of, http_get, process_state, reap_orphans


def _gone(pid):
    reap_orphans()
    return process_state(pid) in (None, "Z")


def test_an_unrelated_process_takes_over_under_load_twice(procs, tmp_path):
    handoff = str(tmp_path / "handoff.sock")
    first = Served(procs, tmp_path, "wsgi_app.py:app", "--handoff-socket", handoff)
    assert os.stat(handoff).st_mode & 0o777 == 0o600
    load = Load(first.port, keepalive=True, paths=("/hello",) * 4 + ("/slow",), clients=4).start()
    fresh = Load(first.port, keepalive=False, paths=("/hello",) * 4 + ("/slow",), clients=4).start()
    previous = first
    for _ in range(2):
        load.wait_requests(load.total + 100)
        # Not a child of the old process: started independently, on the same port spec.
        taker = Served(procs, tmp_path, "wsgi_app.py:app", "--takeover", handoff,
                       "--handoff-socket", handoff, port=first.port)
        assert previous.proc.wait(30) == 0  # the old one drained and exited
        assert f"took 1 listener(s) over from pid {previous.proc.pid}" in taker.log()
        previous = taker
    for lg in (load, fresh):
        lg.wait_requests(lg.total + 100)
        lg.stop()
    assert load.failures == [] and fresh.failures == []
    assert previous.proc.pid in set(load.pids) | set(fresh.pids)
    previous.proc.send_signal(signal.SIGQUIT)
    assert previous.proc.wait(30) == 0
    assert not os.path.exists(handoff)  # the last holder removed its own socket file


def test_takeover_from_nothing_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "graceful", "serve", "x:app", "--takeover",
                             str(tmp_path / "none.sock")], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, PYTHONPATH=ROOT), cwd=str(tmp_path))
    assert result.returncode == 2
    assert "cannot connect to handoff socket" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch a child to uid 65534")
def test_another_uid_is_refused_and_the_server_is_unaffected(procs, tmp_path):
    handoff = f"@graceful-test-{uuid.uuid4().hex}"  # abstract: SO_PEERCRED is the only gate
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--handoff-socket", handoff)
    before = len(os.listdir(f"/proc/{served.proc.pid}/fd"))
    load = Load(served.port, keepalive=True, paths=("/hello",), clients=2).start()
    load.wait_requests(20)
    code = ("import os, sys\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            "from graceful.handoff import take_over, HandoffError\n"
            "os.setgid(65534); os.setuid(65534)  # after the imports: /root is not readable\n"
            "try:\n"
            f"    take_over({handoff!r}, 30)\n"
            "except HandoffError as exc:\n"
            "    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert "uid 65534 may not take these sockets" in result.stdout, result
    load.wait_requests(load.total + 20)
    load.stop()
    assert load.failures == []
    served.wait(lambda: "handoff refused to pid" in served.log(), 30)
    served.wait(lambda: len(os.listdir(f"/proc/{served.proc.pid}/fd")) == before, 30,
                what=f"{before} open fds")


@pytest.mark.parametrize("garbage", [
    b"\x00\x00\x00\x01x",                    # a frame too short
    b"\xff\xff\xff\xff",                      # a frame too long
    b"\x00\x00\x00\x04\x09\x01{}",            # an unknown version
    b"\x00\x00\x00\x03\x01\x01{",             # truncated JSON
    b"\x00\x00\x00\x0c\x01\x01{\"pid\":1}",   # a HELLO one byte short, then silence
    b"\x00\x00\x00\x0b\x01\x01{\"pid\":1}",   # a HELLO, then silence instead of READY
])
def test_garbage_closes_that_connection_and_leaks_nothing(procs, tmp_path, garbage):
    handoff = str(tmp_path / "h.sock")
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--handoff-socket", handoff,
                    "--ready-timeout", "1")
    before = len(os.listdir(f"/proc/{served.proc.pid}/fd"))
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(30)
        conn.connect(handoff)
        conn.sendall(garbage)
        if garbage.startswith(b"\x00\x00\x00\x0b"):
            conn.recv(65536)  # the listeners arrive; we never say READY: the server times out
        while conn.recv(65536):
            pass  # until the server closes this connection
    served.wait(lambda: "did not happen, still serving" in served.log(), 30)
    assert re.search(r"HTTP/1.1 200", _get(served.port))
    # (the HTTP connection just served is closed by the server a moment later)
    served.wait(lambda: len(os.listdir(f"/proc/{served.proc.pid}/fd")) == before, 30,
                what=f"{before} open fds")
    assert process_state(served.proc.pid) not in (None, "Z")


def _get(port):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data.decode("latin-1")
            data += chunk


def test_slow_requests_in_flight_at_the_old_process_all_complete(procs, tmp_path):
    from _serve import Client
    from _support import wait_established

    handoff = str(tmp_path / "handoff.sock")
    old = Served(procs, tmp_path, "wsgi_app.py:app", "--handoff-socket", handoff)
    slow = [Client(old.connect()) for _ in range(4)]
    for c in slow:
        c.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_established(old.port, [c.sock for c in slow])
    new = Served(procs, tmp_path, "wsgi_app.py:app", "--takeover", handoff, port=old.port)
    for c in slow:
        r = c.response()
        assert r.status == 200 and r.body == b"slow\n"
    assert old.proc.wait(30) == 0
    assert Client(new.connect()).request("GET", "/hello").headers["x-pid"] == str(new.proc.pid)


def test_a_new_master_takes_the_listeners_over_from_a_running_master(procs, tmp_path):
    handoff = str(tmp_path / "handoff.sock")
    old = Served(procs, tmp_path, "wsgi_app.py:app", "--workers", "2", "--handoff-socket",
                 handoff)
    old_workers = set(children_of(old.proc.pid))
    paths = ("/hello",) * 4 + ("/slow",)
    loads = [Load(old.port, keepalive=k, paths=paths, clients=3).start() for k in (True, False)]
    loads[0].wait_requests(50)
    new = Served(procs, tmp_path, "wsgi_app.py:app", "--workers", "2", "--takeover", handoff,
                 "--handoff-socket", handoff, port=old.port)
    assert old.proc.wait(30) == 0  # its workers drained, then it exited
    assert not any(process_state(pid) not in (None, "Z") for pid in old_workers)
    new_workers = set(children_of(new.proc.pid))
    for load in loads:
        load.wait_requests(load.total + 100)
        load.stop()
    assert loads[0].failures == [] and loads[1].failures == []
    assert new_workers & set(loads[1].pids)
    new.proc.send_signal(signal.SIGQUIT)
    assert new.proc.wait(30) == 0


def test_handoff_uid_allows_another_user(procs, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch a child to uid 65534")
    handoff = f"@graceful-test-{uuid.uuid4().hex}"
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--handoff-socket", handoff,
                    "--handoff-uid", "65534")
    code = ("import os, sys\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            "from graceful.handoff import take_over\n"
            "os.setgid(65534); os.setuid(65534)\n"
            f"conn, pid, pairs = take_over({handoff!r}, 30)\n"
            "print([name for name, fd in pairs], pid)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.split() == ["['web']", str(served.proc.pid)], result
    # It went away without READY: the server still serves and still offers its sockets.
    served.wait(lambda: "did not happen, still serving" in served.log(), 30)
    assert b"hello" in http_get(served.port, "/hello")


def test_handoff_uid_must_be_a_number_or_a_user(tmp_path):
    result = subprocess.run([sys.executable, "-m", "graceful", "serve", "x:app",
                             "--handoff-uid", "no-such-user-here"], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
                            cwd=str(tmp_path))
    assert result.returncode == 2
    assert "'no-such-user-here' is neither a uid number nor a user name" in result.stderr


def test_a_taker_killed_after_it_took_the_pidfile_gives_it_back(procs, tmp_path):
    from graceful.pidfile import owner_pid, read_pid

    handoff = str(tmp_path / "handoff.sock")
    pidfile = tmp_path / "app.pid"
    old = Served(procs, tmp_path, "lifecycle_app.py:app", "--handoff-socket", handoff,
                 "--pidfile", str(pidfile))
    old.wait(lambda: owner_pid(pidfile) == old.proc.pid, what="the pidfile to name the server")
    # The taker takes the pidfile as it gets ready, then is killed before it says READY.
    env = dict(os.environ, LIFECYCLE_APP_DIE_BEFORE_READY=str(pidfile))
    taker = Served(procs, tmp_path, "lifecycle_app.py:app", "--takeover", handoff, "--pidfile",
                   str(pidfile), port=old.port, env=env, wait=False)
    assert taker.proc.wait(60) == -signal.SIGKILL
    assert f"dying before READY; the pidfile names {taker.proc.pid}" in taker.log()
    # Logged once the pidfile is back in place.
    old.wait(lambda: f"taken back from failed successor pid {taker.proc.pid}" in old.log(), 30,
             what="the pidfile to be taken back by the server that still serves")
    assert owner_pid(pidfile) == read_pid(pidfile) == old.proc.pid
    assert list(tmp_path.glob(".app.pid.*.tmp")) == []  # the taker's staged file is gone too
    assert http_get(old.port, "/hello").count(f"X-Pid: {old.proc.pid}".encode()) == 1
    # It still offers its sockets: the next taker takes over, and the pidfile follows it.
    new = Served(procs, tmp_path, "lifecycle_app.py:app", "--takeover", handoff, "--pidfile",
                 str(pidfile), port=old.port)
    assert old.proc.wait(30) == 0
    new.wait(lambda: owner_pid(pidfile) == new.proc.pid, what="the pidfile to name the new one")
    new.proc.send_signal(signal.SIGQUIT)
    assert new.proc.wait(30) == 0
    assert not pidfile.exists()
