"""Fault tolerance of master mode with real processes: failed reloads, crashing, exiting and
hung workers, low fd limits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from _serve import APPS, Served
from _support import ROOT, children_of, free_port, process_state, wait_for

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _workers(pid: int):
    return sorted(c for c in children_of(pid) if process_state(c) not in (None, "Z"))


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    for _ in range(1000):  # bounded: the response is small and ends with the connection
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _second_generation_app(tmp_path, failing: str) -> str:
    """An app whose second generation has one failing worker (the first to import it).

    ``failing`` is the code the failing worker runs before it raises; the other worker of that
    generation answers /hold by writing to the fifo ``inflight`` and then waiting for a byte on
    the fifo ``release``: a request in flight on a worker of the generation being rolled back.
    """
    app = tmp_path / "app.py"
    app.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {APPS!r})\n"
        "from wsgi_app import app as inner\n"
        f"HERE = {str(tmp_path)!r}\n"
        "def path(name):\n"
        "    return os.path.join(HERE, name)\n"
        "SECOND = os.path.exists(path('second'))\n"
        "if SECOND:\n"
        "    try:\n"
        "        os.close(os.open(path('token'), os.O_CREAT | os.O_EXCL | os.O_WRONLY))\n"
        "    except FileExistsError:\n"
        "        pass  # the sibling took the token: this one serves\n"
        "    else:\n"
        f"{_indent(failing, 8)}"
        "        raise ImportError('a broken worker of the second generation')\n"
        "def app(environ, start_response):\n"
        "    if SECOND and environ['PATH_INFO'] == '/hold':\n"
        "        with open(path('inflight'), 'wb') as f:\n"
        "            f.write(b'x')\n"
        "        with open(path('release'), 'rb') as f:\n"
        "            f.read(1)\n"
        "        body = b'held\\n'\n"
        "        start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "        return [body]\n"
        "    if environ['PATH_INFO'] == '/hold':\n"
        "        environ['PATH_INFO'] = '/hello'\n"
        "    return inner(environ, start_response)\n")
    for fifo in ("inflight", "release"):
        os.mkfifo(tmp_path / fifo)
    return str(app)


def _release(fifo) -> None:
    """Write a byte to ``fifo`` if someone reads it (never block on a reader that is gone)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader
        return
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


def _indent(code: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in code.splitlines())


def test_a_failed_reload_drains_the_new_workers_that_already_serve(procs, tmp_path):
    # The failing worker waits until its sibling serves a request, then dies before it is
    # ready: the reload fails while that request is in flight. It must be answered.
    app = _second_generation_app(
        tmp_path, "with open(path('inflight'), 'rb') as f:\n    f.read(1)")
    served = Served(procs, tmp_path, app + ":app", "--workers", "2", "--ready-timeout", "60")
    master = served.proc.pid
    served.wait(lambda: len(_workers(master)) == 2, what="two workers")
    old = _workers(master)
    (tmp_path / "second").touch()
    os.kill(master, signal.SIGHUP)
    # Ready lines so far: the master and two workers; then the serving new worker's.
    served.wait(lambda: served.log().count("ready: pid ") == 4, what="a new worker to serve")
    # Only the new worker may accept the held request: the old ones are stopped meanwhile.
    for pid in old:
        os.kill(pid, signal.SIGSTOP)
    served.wait(lambda: all(process_state(pid) == "T" for pid in old), what="stopped workers")
    held = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    try:
        held.sendall(b"GET /hold HTTP/1.0\r\n\r\n")
        served.wait(lambda: "reload failed" in served.log(), what="the reload to fail")
    finally:
        for pid in old:
            os.kill(pid, signal.SIGCONT)
    with held:
        _release(tmp_path / "release")  # the held request may finish now
        response = _read_response(held)
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"held\n"), response
    served.wait(lambda: len(_workers(master)) == 2, what="the rolled-back worker to exit")
    log = served.log()
    assert "SIGKILL" not in log, log
    served.proc.send_signal(signal.SIGQUIT)
    assert served.proc.wait(60) == 0


def test_no_spin_after_a_rolled_back_reload_and_sigquit_still_exits(procs, tmp_path):
    # One new worker crashes at once (it is reaped), its sibling becomes ready; the reload is
    # rolled back. Past the ready timeout the master must still sleep, and SIGQUIT must end it.
    app = _second_generation_app(tmp_path, "pass")
    served = Served(procs, tmp_path, app + ":app", "--workers", "2", "--ready-timeout", "2")
    master = served.proc.pid
    served.wait(lambda: len(_workers(master)) == 2, what="two workers")
    old = _workers(master)
    (tmp_path / "second").touch()
    os.kill(master, signal.SIGHUP)
    served.wait(lambda: "reload failed" in served.log(), what="the reload to fail")
    served.wait(lambda: _workers(master) == old, what="the rolled-back worker to exit")
    cpu_before, wall_before = _cpu_seconds(master), time.monotonic()
    # A measuring window past the ready timeout of the rolled-back workers (2 s).
    wait_for(lambda: time.monotonic() - wall_before >= 5.0, 30, interval=0.2)
    cpu = _cpu_seconds(master) - cpu_before
    wall = time.monotonic() - wall_before
    # Idle, it uses next to nothing; a spinning master gets a core when it can (on this loaded
    # machine, a third of one at least).
    assert cpu < 0.2 * wall, f"the master used {cpu:.2f}s of CPU in {wall:.2f}s"
    served.proc.send_signal(signal.SIGQUIT)
    assert served.proc.wait(60) == 0, served.log()


def _under_fd_limit(limit: int, *args: str) -> list:
    return ["sh", "-c", f'ulimit -n {limit} && exec "$0" "$@"', sys.executable, "-m", "graceful",
            *args]


def test_master_mode_runs_and_reloads_under_a_soft_fd_limit_of_64(procs, tmp_path):
    port = free_port()
    log_path = tmp_path / "master.log"
    with open(log_path, "w") as log_file:
        proc = procs.spawn(_under_fd_limit(64, "serve", os.path.join(APPS, "wsgi_app.py") + ":app",
                                           "--bind", f"web=127.0.0.1:{port}", "--workers", "2"),
                           env=dict(os.environ, PYTHONPATH=ROOT), stderr=log_file)
    log = log_path.read_text
    wait_for(lambda: f"ready: pid {proc.pid} " in log() or proc.poll() is not None,
             what="the master to be ready", timeout=60)
    assert proc.poll() is None, log()
    os.kill(proc.pid, signal.SIGHUP)
    wait_for(lambda: "generation 2 is serving" in log(), what="the reload", timeout=60)
    proc.send_signal(signal.SIGQUIT)
    assert proc.wait(30) == 0, log()


def test_a_fd_limit_too_low_for_the_workers_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        _under_fd_limit(12, "run", "--bind", "a=127.0.0.1:0", "--bind", "b=127.0.0.1:0",
                        "--ready", "fd", "--", "sleep", "100"),
        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "the open-file limit (RLIMIT_NOFILE, ulimit -n) is 12" in result.stderr
    assert "Traceback" not in result.stderr


def _notify_listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(0)
    return sock, path


def _notifications(sock) -> list:
    found = []
    for _ in range(10_000):  # bounded: what is queued now
        try:
            found.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    return found


def _run_master(procs, tmp_path, *args, env=None):
    log_path = tmp_path / "master.log"
    with open(log_path, "w") as log_file:
        proc = procs.python("-m", "graceful", "run", *args, stderr=log_file, env=env)
    return proc, log_path.read_text


def _slot_pid(log, slot: int, first_generation: str) -> int:
    """The pid the log last names for ``slot``."""
    import re

    pids = re.findall(rf"slot {slot}: started worker (\d+)", log())
    return int(pids[-1]) if pids else int(first_generation.split()[slot])


def test_a_slot_that_served_is_restarted_however_often_it_crashes(procs, tmp_path):
    notify, notify_path = _notify_listener(tmp_path)
    pidfile = tmp_path / "m.pid"
    proc, log = _run_master(procs, tmp_path, "--workers", "2", "--ready", "delay:0",
                            "--max-failures", "2", "--pidfile", str(pidfile), "--", "sleep", "1000",
                            env=dict(os.environ, NOTIFY_SOCKET=notify_path))
    import re

    first = wait_for(lambda: re.search(r"generation 1: started 2 worker\(s\): (\d+ \d+)", log()),
                     30, what="the first generation").group(1)
    wait_for(lambda: f"ready: pid {proc.pid} " in log(), 30, what="the master to be ready")
    seen: list = []
    for kill in range(1, 5):  # more than --max-failures kills of the same slot
        victim = _slot_pid(log, 0, first)
        os.kill(victim, signal.SIGKILL)
        try:  # (reading the notifications meanwhile: a full queue would block the sender)
            wait_for(lambda: seen.extend(_notifications(notify)) or
                     _slot_pid(log, 0, first) != victim, 60,
                     what=f"slot 0 to be restarted after kill {kill}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; log:\n{log()[-3000:]}") from None
    assert "(failure 4 in a row)" in log()  # it backed off all along
    assert "not restarting" not in log()
    wait_for(lambda: seen.extend(_notifications(notify)) or len(_workers(proc.pid)) == 2, 30,
             what="two workers")
    statuses = [n for n in seen + _notifications(notify) if "STATUS=" in n]
    assert any("slot 0 restarting after 4 failure(s)" in n for n in statuses), statuses
    status = wait_for(lambda: _notifications(notify) is None or (r := subprocess.run(  # (drain)
        [sys.executable, "-m", "graceful", "status", "--pidfile", str(pidfile)],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT)))
        and "workers: 2 of 2 workers serving" in r.stdout and r, 30, interval=0.2)
    assert status.returncode == 0
    proc.send_signal(signal.SIGQUIT)
    assert proc.wait(30) == 0
    notify.close()


def test_a_worker_that_exits_0_by_itself_is_replaced_without_counting_a_crash(procs, tmp_path):
    proc, log = _run_master(procs, tmp_path, "--ready", "delay:0.2", "--max-failures", "1", "--",
                            "sh", "-c", "sleep 1; exit 0")
    wait_for(lambda: log().count("exited with status 0 by itself: replacing it") >= 4, 60,
             what="four clean exits replaced")
    assert "restarting slot" not in log() and "giving up" not in log(), log()
    assert proc.poll() is None
    proc.send_signal(signal.SIGQUIT)
    assert proc.wait(30) == 0


def test_a_slot_that_never_served_is_given_up_after_max_failures(procs, tmp_path):
    # The first worker serves; every later one exits before it is ready: the slot added by
    # SIGTTIN never serves and is given up, the master goes on with slot 0.
    worker = tmp_path / "worker.sh"
    worker.write_text(f'[ -e {tmp_path}/first ] && exit 3\ntouch {tmp_path}/first\n'
                      'exec sleep 1000\n')
    pidfile = tmp_path / "m.pid"
    proc, log = _run_master(procs, tmp_path, "--ready", "delay:1", "--max-failures", "2",
                            "--pidfile", str(pidfile), "--", "sh", str(worker))
    wait_for(lambda: f"ready: pid {proc.pid} " in log(), 30, what="the master to be ready")
    os.kill(proc.pid, signal.SIGTTIN)
    wait_for(lambda: "slot 1 never served and failed 3 times in a row: not restarting it" in log(),
             60, what="slot 1 to be given up")
    assert proc.poll() is None and len(_workers(proc.pid)) == 1
    wait_for(lambda: "slot 1 given up after 3 failures" in
             (tmp_path / "m.pid.status").read_text(), 30)
    proc.send_signal(signal.SIGQUIT)
    assert proc.wait(30) == 0


@pytest.mark.parametrize("app", ["wsgi_app.py:app", "asgi_app.py:app"])
def test_a_stopped_worker_is_replaced_then_killed(procs, tmp_path, app):
    served = Served(procs, tmp_path, app, "--workers", "2", "--timeout", "3")
    master = served.proc.pid
    served.wait(lambda: len(_workers(master)) == 2, what="two workers")
    hung, other = _workers(master)
    os.kill(hung, signal.SIGSTOP)  # its loop stops: no heartbeat
    killed = f"worker {hung} (generation 1) exited: was killed by SIGKILL"
    served.wait(lambda: killed in served.log() and len(_workers(master)) == 2, 60,
                what="the stopped worker to be replaced, then killed")
    import re

    slot, replacement = re.search(rf"worker {hung} \(slot (\d+)\) sent no heartbeat.*\n.*"
                                  rf"slot \d+: started worker (\d+)", served.log()).groups()
    # Once the replacement serves, the sibling's own deadline has long passed (beat or not).
    served.wait(lambda: f"ready: pid {replacement} " in served.log(), 60,
                what="the replacement to serve")
    log = served.log()
    assert log.count("sent no heartbeat") == 1, log  # a worker that beats is left alone
    assert other in _workers(master)
    assert served.connect().close() is None and b"hello" in _get(served.port, "/hello")
    served.proc.send_signal(signal.SIGQUIT)
    assert served.proc.wait(60) == 0


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        return _read_response(conn)


WATCHDOG_WORKER = r'''
import os, socket, sys, threading
path = os.environ["NOTIFY_SOCKET"]
address = "\0" + path[1:] if path.startswith("@") else path
ok = os.environ.get("WATCHDOG_PID") == str(os.getpid()) and os.environ.get("WATCHDOG_USEC")
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
print("watchdog env ok" if ok else "watchdog env wrong", os.environ.get("WATCHDOG_USEC"),
      file=sys.stderr, flush=True)  # (before READY=1: the test reads it once we are ready)
sock.sendto(b"READY=1", address)
stop = threading.Event()
while not stop.wait(0.2):
    sock.sendto(b"WATCHDOG=1", address)
'''


def test_run_watchdog_replaces_a_command_that_stops_sending_watchdog(procs, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WATCHDOG_WORKER)
    proc, log = _run_master(procs, tmp_path, "--ready", "notify", "--watchdog", "2", "--",
                            sys.executable, str(worker))
    wait_for(lambda: f"ready: pid {proc.pid} " in log(), 30, what="the master to be ready")
    assert "watchdog env ok 2000000" in log(), log()
    (first,) = _workers(proc.pid)
    os.kill(first, signal.SIGSTOP)
    killed = f"worker {first} (generation 1) exited: was killed by SIGKILL"
    wait_for(lambda: killed in log() and len(_workers(proc.pid)) == 1, 60,
             what="the silent worker to be replaced, then killed")
    assert f"worker {first} (slot 0) sent no heartbeat" in log(), log()
    proc.send_signal(signal.SIGQUIT)
    assert proc.wait(30) == 0


def test_the_master_sends_watchdog_when_systemd_asks(procs, tmp_path):
    notify, notify_path = _notify_listener(tmp_path)
    proc, log = _run_master(procs, tmp_path, "--ready", "delay:0", "--", "sleep", "1000",
                            env=dict(os.environ, NOTIFY_SOCKET=notify_path,
                                     WATCHDOG_USEC="400000"))
    seen = []
    wait_for(lambda: seen.extend(_notifications(notify)) or
             sum("WATCHDOG=1" in n for n in seen) >= 3, 30, interval=0.1,
             what="three WATCHDOG=1 from the master")
    proc.send_signal(signal.SIGQUIT)
    assert proc.wait(30) == 0
    notify.close()
