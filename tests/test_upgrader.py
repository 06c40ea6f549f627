"""Self re-exec with real processes: SIGHUP upgrades under load, rollback, fds, sd_notify."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
import time

import pytest

from _support import (ROOT, Load, children_of, free_port, open_fds, process_state, read_line,
                      reap_orphans, wait_established, wait_for)
from graceful.pidfile import read_pid

SERVER = ("-m", "graceful._demo_server")


class Server:
    def __init__(self, procs, tmp_path, *extra, env=None, app=None, stderr=None):
        self.port = free_port()
        self.pidfile = str(tmp_path / "server.pid")
        self.app_dir = tmp_path / "app"
        self.app_dir.mkdir()
        self.deploy(app or "")
        self.proc = procs.python(
            *SERVER, "--port", str(self.port), "--pidfile", self.pidfile,
            "--app-dir", str(self.app_dir), "--ready-timeout", "5", "--graceful-timeout", "10",
            *extra, stdout=subprocess.PIPE, env=env, stderr=stderr,
        )
        line = read_line(self.proc.stdout, 30)
        assert line.startswith("READY "), line
        self.first_pid = self.proc.pid
        wait_for(lambda: self.pid() == self.first_pid, what="pidfile naming the first pid")

    def deploy(self, source: str) -> None:
        """Write the code the next generation will import (a deploy, maybe a broken one)."""
        path = self.app_dir / "app.py"
        path.write_text(textwrap.dedent(source))
        for cached in (self.app_dir / "__pycache__").glob("*") if (self.app_dir / "__pycache__").exists() else ():
            cached.unlink()

    def pid(self):
        try:
            return read_pid(self.pidfile)
        except Exception:
            return None

    def upgrade(self, timeout: float = 30.0) -> int:
        old = self.pid()
        os.kill(old, signal.SIGHUP)
        new = wait_for(lambda: self.pid() not in (None, old) and self.pid(), timeout,
                       what=f"a successor of pid {old} in the pidfile")
        wait_for(lambda: _gone(old), timeout, what=f"old generation {old} to exit")
        return new


MIX = ("/fast",) * 4 + ("/slow",)  # one request in five takes 200 ms


def _gone(pid: int) -> bool:
    reap_orphans()
    return process_state(pid) in (None, "Z")


def _expect_no_upgrade(server: Server, load: Load, requests_after: int = 100) -> None:
    """After a rejected upgrade the same pid keeps serving and load keeps succeeding."""
    done = load.total
    load.wait_requests(done + requests_after)
    assert server.pid() == server.first_pid
    assert process_state(server.first_pid) not in (None, "Z")


def test_sighup_upgrades_under_load_lose_nothing(procs, tmp_path):
    server = Server(procs, tmp_path)
    loads = [
        Load(server.port, keepalive=True, paths=("/fast",) * 9 + ("/slow",), clients=6).start(),
        Load(server.port, keepalive=False, paths=("/fast",) * 4 + ("/slow",), clients=6).start(),
    ]
    pids = [server.first_pid]
    # What can be lost is in flight at a handover; 100 requests per load between two upgrades
    # only make sure each generation serves a while, keep-alive connections included.
    for _ in range(5):
        for load in loads:
            load.wait_requests(load.total + 100)
        pids.append(server.upgrade())
    for load in loads:
        load.wait_requests(load.total + 100)
        load.stop()
    total = sum(load.total for load in loads)
    failures = [f for load in loads for f in load.failures]
    assert failures == []
    assert total >= 1000
    assert len(set(pids)) == 6, pids
    served_by = {pid for load in loads for pid in load.pids}
    assert set(pids) <= served_by  # every generation really served


def test_successor_that_fails_at_import_is_rolled_back(procs, tmp_path):
    server = Server(procs, tmp_path)
    load = Load(server.port, keepalive=True, paths=MIX, clients=4).start()
    load.wait_requests(100)
    server.deploy("raise ImportError('broken deploy')\n")
    os.kill(server.first_pid, signal.SIGHUP)
    _expect_no_upgrade(server, load)
    server.deploy("")
    new = server.upgrade()
    load.wait_requests(load.total + 100)
    load.stop()
    assert load.failures == []
    assert new != server.first_pid


@pytest.mark.parametrize("broken", [
    "import sys\ndef before_ready():\n    sys.exit(1)\n",
    "import os\ndef before_ready():\n    os._exit(3)\n",
])
def test_successor_that_exits_before_ready_is_rolled_back(procs, tmp_path, broken):
    server = Server(procs, tmp_path)
    load = Load(server.port, keepalive=False, paths=MIX, clients=4).start()
    load.wait_requests(100)
    server.deploy(broken)
    os.kill(server.first_pid, signal.SIGHUP)
    _expect_no_upgrade(server, load)
    load.stop()
    assert load.failures == []


def test_successor_that_never_gets_ready_is_killed_at_ready_timeout(procs, tmp_path):
    server = Server(procs, tmp_path, "--ready-timeout", "2", "--graceful-timeout", "2")
    load = Load(server.port, keepalive=True, paths=MIX, clients=4).start()
    load.wait_requests(100)
    server.deploy("import threading\ndef before_ready():\n    threading.Event().wait()\n")
    os.kill(server.first_pid, signal.SIGHUP)
    hung = wait_for(lambda: [p for p in children_of(server.first_pid)
                             if process_state(p) not in (None, "Z")], what="the successor")[0]
    # At ready_timeout the successor is stopped (TERM, then KILL) and reaped by the old one.
    wait_for(lambda: process_state(hung) is None, 30, what="the hung successor to be reaped")
    _expect_no_upgrade(server, load)
    load.stop()
    assert load.failures == []


def test_sighup_storm_upgrades_one_at_a_time(procs, tmp_path):
    log_path = tmp_path / "storm.log"
    with open(log_path, "w") as log_file:
        server = Server(procs, tmp_path, stderr=log_file)
    first = server.first_pid
    load = Load(server.port, keepalive=True, paths=MIX, clients=4).start()
    load.wait_requests(100)
    for _ in range(20):
        os.kill(first, signal.SIGHUP)
    # The storm reaches the first generation before its successor took over (the pidfile
    # still names it). The triggers that find that upgrade under way are coalesced into one
    # more upgrade, which the successor makes once it serves: never one per trigger.
    assert server.pid() == first
    second = wait_for(lambda: server.pid() not in (None, first) and server.pid(), 30)
    wait_for(lambda: _gone(first), 30, what="the first generation to exit")
    log = log_path.read_text()
    assert log.count(f"[{first}] upgrade: started successor pid") == 1, log
    final = second
    if f"[{first}] SIGHUP: an upgrade is in progress; one more follows" in log:
        final = wait_for(lambda: server.pid() not in (None, first, second) and server.pid(), 30,
                         what="the one more upgrade, by the second generation")
        wait_for(lambda: _gone(second), 30, what="the second generation to exit")
    load.wait_requests(load.total + 200)
    load.stop()
    assert load.failures == []
    # The last generation is healthy and has started no successor of its own.
    assert process_state(final) not in (None, "Z")
    assert children_of(final) == []
    assert f"[{final}] upgrade: started successor pid" not in log_path.read_text()
    final_load = Load(server.port, keepalive=False, clients=1, max_requests=20).start()
    final_load.wait_requests(20)
    final_load.stop()
    assert final_load.failures == [] and final_load.pids == [final]


def test_twenty_upgrades_leak_no_fd_and_no_process(procs, tmp_path):
    # The fd kinds are compared exactly, so one fd leaked per upgrade shows after the first;
    # twenty generations show what accumulates across them (a process or child left behind).
    server = Server(procs, tmp_path)
    _one_request(server)  # steady state: serving, not starting
    first_fds = _fd_targets(server.first_pid)
    pid = server.first_pid
    for _ in range(20):
        pid = server.upgrade()
    _one_request(server)
    assert len(_fd_targets(pid)) == len(first_fds), (first_fds, _fd_targets(pid))
    pgid = os.getpgid(pid)
    reap_orphans()
    members = [p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
               if _pgid(p) == pgid and process_state(p) not in (None, "Z")]
    assert members == [pid]
    assert children_of(pid) == []
    load = Load(server.port, keepalive=False, clients=1, max_requests=10).start()
    load.wait_requests(10)
    load.stop()
    assert load.failures == [] and load.pids == [pid]


def _one_request(server: Server) -> None:
    load = Load(server.port, keepalive=False, clients=1, max_requests=1).start()
    load.wait_requests(1)
    load.stop()
    assert load.failures == []


def _fd_targets(pid: int) -> list:
    """What each open fd of ``pid`` is (socket:[…], pipe:[…], a path), kinds only."""
    kinds = []
    for fd in open_fds(pid):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kinds.append(target.split("[")[0] if "[" in target else target)
    return sorted(kinds)


def _pgid(pid: int):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_notify_socket_sees_reloading_mainpid_ready_and_pidfile_first(procs, tmp_path):
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    receiver.bind(path)
    receiver.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    try:
        server = Server(procs, tmp_path, env=env)
        assert receiver.recv(4096) == b"READY=1"
        pid = server.first_pid
        for _ in range(3):
            os.kill(pid, signal.SIGHUP)
            reloading = receiver.recv(4096).decode().split("\n")
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert reloading[0] == "RELOADING=1"
            assert reloading[1].startswith("MONOTONIC_USEC=")
            assert 0 < int(reloading[1].split("=")[1]) <= before
            mainpid = receiver.recv(4096).decode()
            assert mainpid.startswith("MAINPID=")
            new = int(mainpid.split("=")[1])
            assert new != pid
            assert read_pid(server.pidfile) == new  # the pidfile moved before MAINPID/READY
            assert receiver.recv(4096) == b"READY=1"
            wait_for(lambda: _gone(pid), 30)
            pid = new
    finally:
        receiver.close()


CHILD_API = """
import os, sys, signal
sys.path.insert(0, {root!r})
from graceful import Upgrader
from graceful.upgrader import UpgradeError
u = Upgrader(argv={argv!r})
s = u.listen("web", "127.0.0.1:0")
def attempt(label):
    try:
        u.upgrade()
        print(label, "upgraded")
    except UpgradeError as exc:
        print(label, "refused:", exc)
attempt("before-ready")
u.ready()
attempt("missing-command")
u.stop()
attempt("during-shutdown")
print("fds", len(os.listdir("/proc/self/fd")))
u.close()
"""


def test_upgrade_refusals_are_clear_and_change_nothing(procs, tmp_path):
    code = CHILD_API.format(root=ROOT, argv=[str(tmp_path / "no-such-program")])
    proc = procs.python("-c", code, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    lines = out.decode().splitlines()
    assert lines[0].startswith("before-ready refused: cannot upgrade before ready()")
    assert lines[1].startswith("missing-command refused: cannot start successor")
    assert "no-such-program" in lines[1]
    assert lines[2].startswith("during-shutdown refused: cannot upgrade while draining")
    assert proc.returncode == 0


GATED_APP = """
import os, time
def body(path):
    deadline = time.monotonic() + 60
    while path == "/slow" and not os.path.exists(GATE) and time.monotonic() < deadline:
        time.sleep(0.01)  # sleep-ok: the app's bounded poll for the test's gate
    return f"{os.getpid()}\\n".encode()
"""


def test_sigquit_drains_in_flight_requests_and_exits_zero(procs, tmp_path):
    # /slow answers only once the test opened the gate, which it does once the drain began:
    # in flight across the SIGQUIT however late it is handled (200 ms alone can end before it
    # on a loaded machine, and that response rightly carries no Connection: close).
    gate = tmp_path / "gate"
    server = Server(procs, tmp_path, app=GATED_APP.replace("GATE", repr(str(gate))))
    conns = []
    for _ in range(5):
        c = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        c.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        conns.append(c)
    # Only signal once the requests are in the server's hands (it has accepted them).
    wait_for(lambda: _established(server.first_pid) >= 5, what="5 accepted connections")
    os.kill(server.first_pid, signal.SIGQUIT)
    wait_for(lambda: _draining(server), 30, what="the drain to begin")
    gate.touch()
    for c in conns:
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data
        assert b"Connection: close" in data
        c.close()
    assert server.proc.wait(timeout=30) == 0
    assert not os.path.exists(server.pidfile)


def test_sigquit_before_ready_exits_cleanly_and_serves_what_was_queued(procs, tmp_path):
    # The app's start-up blocks until the test creates the file "go"; SIGQUIT arrives meanwhile.
    go = tmp_path / "go"
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(textwrap.dedent(f"""
        import os, sys, time
        def before_ready():
            print("STARTING", flush=True)
            deadline = time.monotonic() + 30
            while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
                time.sleep(0.01)  # sleep-ok: the app's bounded poll for the test's go file
    """))
    port = free_port()
    pidfile = tmp_path / "server.pid"
    proc = procs.python(*SERVER, "--port", str(port), "--pidfile", str(pidfile),
                        "--app-dir", str(app_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert read_line(proc.stdout, 30) == "STARTING\n"
    queued = socket.create_connection(("127.0.0.1", port), timeout=30)
    queued.sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
    wait_established(port, [queued])
    os.kill(proc.pid, signal.SIGQUIT)
    while "draining (SIGQUIT)" not in read_line(proc.stderr, 30):
        pass
    go.touch()
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
        chunk = queued.recv(4096)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"Connection: close" in data
    queued.close()
    assert proc.wait(timeout=30) == 0
    assert "not declaring ready: asked to stop before ready" in proc.stderr.read().decode()
    assert not pidfile.exists()


def _established(pid: int) -> int:
    """Connections ``pid`` has accepted (sockets it holds beyond its listener)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count - 1  # the listener


def test_sigterm_lame_duck_keeps_serving_for_shutdown_delay(procs, tmp_path):
    # A lame-duck window far longer than the requests sent in it (a loaded machine may take
    # seconds for one), ended by a second SIGTERM rather than waited out.
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = Server(procs, tmp_path, "--shutdown-delay", "60", stderr=log)
    os.kill(server.first_pid, signal.SIGTERM)
    wait_for(lambda: "lame duck for 60s" in log_path.read_text(), 30, what="the lame duck")
    for _ in range(10):
        load = Load(server.port, keepalive=False, clients=1, max_requests=1).start()
        load.wait_requests(1)
        load.stop()
        assert load.failures == []
    assert server.proc.poll() is None  # still serving
    os.kill(server.first_pid, signal.SIGTERM)  # the second: stop now
    assert server.proc.wait(timeout=30) == 0, log_path.read_text()[-2000:]


def test_second_sigint_exits_at_once(procs, tmp_path):
    server = Server(procs, tmp_path, "--graceful-timeout", "60")
    hanging = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    hanging.sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n")  # headers never finish: never idle
    wait_for(lambda: _established(server.first_pid) >= 1)
    os.kill(server.first_pid, signal.SIGINT)
    wait_for(lambda: not os.path.exists(f"/proc/{server.first_pid}") or
             server.proc.poll() is not None or _draining(server), 10)
    os.kill(server.first_pid, signal.SIGINT)
    server.proc.wait(timeout=10)  # far less than the 60 s graceful timeout
    hanging.close()


def _draining(server: Server) -> bool:
    # The listener is closed once the drain began: new connections are refused.
    try:
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True
