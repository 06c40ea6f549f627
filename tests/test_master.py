"""Master mode with real processes: a stable pid over worker generations, graceful run for any
command, pidproxy, --init, and bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from _serve import APPS, Client, Served
from _support import (ROOT, Load, children_of, free_port, http_get, process_state,
                      reap_orphans, wait_established, wait_for)
from graceful.pidfile import read_pid

SD_SERVER = os.path.join(ROOT, "examples", "systemd_style_server.py")


def _zombies_of(pid: int):
    return [c for c in children_of(pid) if process_state(c) == "Z"]


def _generation_serving(served: Served, n: int) -> bool:
    return f"generation {n} is serving" in served.log()


def _workers(pid: int):
    return sorted(c for c in children_of(pid) if process_state(c) not in (None, "Z"))


def test_master_keeps_its_pid_across_ten_reloads_under_load(procs, tmp_path):
    # Ten: every reload is the same handover, and a leaked worker, zombie or listener shows
    # after the first few as surely as after twenty (the fd and zombie checks are exact).
    pidfile = tmp_path / "master.pid"
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--workers", "2", "--pidfile", str(pidfile))
    master = served.proc.pid
    wait_for(lambda: read_pid(pidfile) == master and len(_workers(master)) == 2)
    loads = [Load(served.port, keepalive=True, paths=("/hello",) * 4 + ("/slow",), clients=4).start(),
             Load(served.port, keepalive=False, paths=("/hello",) * 4 + ("/slow",), clients=4).start()]
    seen_workers = set(_workers(master))
    for generation in range(2, 12):
        for load in loads:
            load.wait_requests(load.total + 20)
        os.kill(master, signal.SIGHUP)
        wait_for(lambda: _generation_serving(served, generation), 30,
                 what=f"generation {generation} to serve")
        seen_workers |= set(_workers(master))
    for load in loads:
        load.wait_requests(load.total + 50)
        load.stop()
    assert [f for load in loads for f in load.failures] == []
    assert read_pid(pidfile) == master and process_state(master) not in (None, "Z")
    served_by = {p for load in loads for p in load.pids}
    assert len(served_by) > 10  # many of the 22 workers of 11 generations really served
    wait_for(lambda: len(_workers(master)) == 2, 30, what="old generations to exit")
    assert _zombies_of(master) == []
    served.proc.send_signal(signal.SIGQUIT)
    assert served.proc.wait(30) == 0
    assert not pidfile.exists()
    assert all(process_state(p) in (None, "Z") for p in seen_workers)


def test_sigusr2_replaces_the_master_itself_without_losing_requests(procs, tmp_path):
    pidfile = tmp_path / "master.pid"
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--workers", "2", "--pidfile", str(pidfile))
    old = served.proc.pid
    wait_for(lambda: read_pid(pidfile) == old and len(_workers(old)) == 2)
    load = Load(served.port, keepalive=True, paths=("/hello",) * 4 + ("/slow",), clients=4).start()
    load.wait_requests(50)
    os.kill(old, signal.SIGUSR2)
    new = served.wait(lambda: (p := _safe_pid(pidfile)) not in (None, old) and p, 30,
                      what="a new master in the pidfile")
    assert served.proc.wait(30) == 0  # the old master drained its workers and exited
    wait_for(lambda: len(_workers(new)) == 2, 30)
    load.wait_requests(load.total + 100)
    load.stop()
    assert load.failures == []
    assert set(_workers(new)) & set(load.pids)  # the new master's workers serve
    os.kill(new, signal.SIGQUIT)
    wait_for(lambda: (reap_orphans(), process_state(new) in (None, "Z"))[1], 30)


def test_a_killed_worker_loses_only_its_own_requests_and_is_respawned(procs, tmp_path):
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--workers", "2")
    master = served.proc.pid
    wait_for(lambda: len(_workers(master)) == 2)
    load = Load(served.port, keepalive=False, paths=("/slow",), clients=4).start()
    load.wait_requests(20)
    victim = _workers(master)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in _workers(master) and len(_workers(master)) == 2, 30,
             what="the worker to be respawned")
    lost = len(load.failures)
    assert lost <= 4  # at most the requests in flight on the killed worker (4 clients)
    load.wait_requests(load.total + 40)
    load.stop()
    assert len(load.failures) == lost  # nothing lost after the respawn
    assert "restarting slot" in served.log()


def test_a_broken_reload_keeps_the_old_generation_serving(procs, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(f"import sys\nsys.path.insert(0, {APPS!r})\nfrom wsgi_app import app\n")
    served = Served(procs, tmp_path, str(app) + ":app", "--workers", "2", "--ready-timeout", "5")
    master = served.proc.pid
    wait_for(lambda: len(_workers(master)) == 2)
    old = _workers(master)
    load = Load(served.port, keepalive=True, paths=("/hello",) * 4 + ("/slow",), clients=4).start()
    load.wait_requests(50)
    app.write_text("raise ImportError('a broken deploy')\n")
    os.kill(master, signal.SIGHUP)
    wait_for(lambda: "reload failed" in served.log(), 30, what="the reload to fail")
    load.wait_requests(load.total + 100)
    load.stop()
    assert load.failures == []
    assert _workers(master) == old


def test_run_passes_systemd_style_fds_and_waits_for_notify(procs, tmp_path):
    port = free_port()
    log = open(tmp_path / "run.log", "w")
    proc = procs.python("-m", "graceful", "run", "--bind", f"web=127.0.0.1:{port}", "--ready",
                        "notify", "--workers", "2", "--", sys.executable, SD_SERVER, stderr=log)
    wait_for(lambda: f"ready: pid {proc.pid} " in (tmp_path / "run.log").read_text(), 30,
             what="the master to be ready")
    seen = {}
    workers = set(_workers(proc.pid))
    for _ in range(200):  # until both workers answered (the kernel picks who accepts)
        c = Client(socket_connect(port))
        report = json.loads(c.request("GET", "/").body)
        c.sock.close()
        seen[report["pid"]] = report
        if set(seen) == workers:
            break
    assert seen and set(seen) <= workers
    for pid, report in seen.items():
        assert report["LISTEN_PID"] == str(pid)  # set by the exec trampoline, for that process
        assert report["LISTEN_FDS"] == "1" and report["LISTEN_FDNAMES"] == "web"
        assert report["fd"] == 3
    load = Load(port, keepalive=False, paths=("/", "/slow"), clients=4).start()
    for generation in (2, 3):
        load.wait_requests(load.total + 30)
        os.kill(proc.pid, signal.SIGHUP)
        wait_for(lambda: f"generation {generation} is serving" in (tmp_path / "run.log").read_text(),
                 30)
    load.wait_requests(load.total + 30)
    load.stop()
    assert load.failures == []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def socket_connect(port):
    import socket
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_pidproxy_follows_a_server_that_reexecs_itself(procs, tmp_path):
    port = free_port()
    pidfile = tmp_path / "server.pid"
    proxy = procs.python("-m", "graceful", "pidproxy", str(pidfile), "--", sys.executable, "-m",
                         "graceful._demo_server", "--port", str(port), "--pidfile", str(pidfile),
                         "--log-level", "WARNING", stdout=subprocess.DEVNULL)
    pid = wait_for(lambda: read_pid(pidfile) if pidfile.exists() else None, 30)
    pids = [pid]
    for _ in range(5):
        # Signal only a generation that serves (one still starting refuses to upgrade).
        wait_for(lambda: _answer_from(port) == pids[-1], 30, what=f"pid {pids[-1]} to serve")
        proxy.send_signal(signal.SIGHUP)  # forwarded to whichever pid serves now
        new = wait_for(lambda: (p := _safe_pid(pidfile)) not in (None, *pids) and p, 30,
                       what="the server to re-exec")
        wait_for(lambda: process_state(pids[-1]) in (None, "Z"), 30)
        pids.append(new)
    assert proxy.poll() is None  # still in the foreground for the supervisor
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(30) == 0
    assert all(process_state(p) in (None, "Z") for p in pids)


def _answer_from(port):
    """The pid that answers a request now (the demo server's body is its pid)."""
    try:
        return int(http_get(port).split(b"\r\n\r\n", 1)[1])
    except (OSError, ValueError, IndexError):
        return None


def _safe_pid(pidfile):
    try:
        return read_pid(pidfile)
    except Exception:
        return None


def test_init_mode_forwards_signals_reaps_and_returns_the_status(procs, tmp_path):
    result = subprocess.run([sys.executable, "-m", "graceful", "run", "--init", "--", "sh", "-c",
                             "sleep 0.1 & exit 7"], env=dict(os.environ, PYTHONPATH=ROOT),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 7, result.stderr
    proc = procs.python("-m", "graceful", "run", "--init", "--", "sleep", "100",
                        stderr=subprocess.DEVNULL)
    wait_for(lambda: [c for c in children_of(proc.pid) if process_state(c) not in (None, "Z")])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM  # sleep died of the forwarded SIGTERM


def test_a_first_generation_that_cannot_start_exits_non_zero(procs, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "graceful", "run", "--ready", "fd", "--keep-trying", "--", "sh",
         "-c", "exit 3"],
        env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "giving up: the first generation did not start" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["run", "--bind", "web=127.0.0.1:0", "--", "echo", "{fd:nope}"],
     "{fd:nope} in the command names no listener"),
    (["run", "--", "no-such-program-xyz"], "cannot run 'no-such-program-xyz': not found on PATH"),
    (["run", "--workers", "0", "--", "true"], "'0' is not a positive whole number"),
    (["run", "--"], "no command to run"),
    (["serve", "x:app", "--workers", "0"], "'0' is not a positive whole number"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "graceful", *args], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
                            cwd=str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_pidfile_held_by_a_live_master_is_refused(procs, tmp_path):
    pidfile = tmp_path / "m.pid"
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--workers", "1", "--pidfile", str(pidfile))
    result = subprocess.run([sys.executable, "-m", "graceful", "run", "--pidfile", str(pidfile),
                             "--", "true"], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 2
    assert str(served.proc.pid) in result.stderr and "Traceback" not in result.stderr


def test_control_commands_and_worker_count_signals(procs, tmp_path):
    pidfile = tmp_path / "master.pid"
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--workers", "1", "--pidfile", str(pidfile))
    master = served.proc.pid
    wait_for(lambda: read_pid(pidfile) == master and len(_workers(master)) == 1)

    def graceful(*args):
        return subprocess.run([sys.executable, "-m", "graceful", *args, "--pidfile", str(pidfile)],
                              capture_output=True, text=True, timeout=90,
                              env=dict(os.environ, PYTHONPATH=ROOT))

    status = graceful("status")
    assert status.returncode == 0
    assert f"pid {master}:" in status.stdout and f"127.0.0.1:{served.port}" in status.stdout
    os.kill(master, signal.SIGTTIN)
    wait_for(lambda: len(_workers(master)) == 2, 30, what="a second worker")
    os.kill(master, signal.SIGTTOU)
    wait_for(lambda: len(_workers(master)) == 1, 30, what="back to one worker")
    before = _workers(master)
    reload = graceful("reload", "--wait")
    assert reload.returncode == 0, reload.stderr
    assert "serving with new workers" in reload.stdout
    assert not set(_workers(master)) & set(before)
    quit_ = graceful("quit", "--wait")
    assert quit_.returncode == 0 and f"pid {master} exited" in quit_.stdout
    served.proc.wait(30)
    missing = graceful("status")
    assert missing.returncode == 3 and "does not exist" in missing.stderr


def test_sigterm_lame_duck_reaches_the_workers_readiness(procs, tmp_path):
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--workers", "2", "--ready-path",
                    "/-/ready", "--shutdown-delay", "3")
    assert b" 200 " in http_get(served.port, "/-/ready")
    served.proc.send_signal(signal.SIGTERM)
    # Lame duck: a load balancer's probe sees not-ready while requests are still served.
    served.wait(lambda: b" 503 " in http_get(served.port, "/-/ready"), 10,
                what="the readiness path to answer 503")
    assert http_get(served.port, "/hello").endswith(b"hello\n")
    assert served.proc.wait(30) == 0


def test_init_mode_stops_a_server_behind_a_shell_wrapper_gracefully(procs, tmp_path):
    # The wrapper does not exec: the server is the shell's child. SIGTERM must still reach it
    # (the whole process group), and the init must wait until it has drained.
    port = free_port()
    serve = (f"{sys.executable} -m graceful serve {os.path.join(APPS, 'wsgi_app.py')}:app "
             f"--bind web=127.0.0.1:{port}")
    log_path = tmp_path / "init.log"
    with open(log_path, "w") as log_file:
        proc = procs.python("-m", "graceful", "run", "--init", "--bind",
                            f"web=127.0.0.1:{port}", "--", "sh", "-c",
                            f"{serve}; echo the wrapper goes on", stderr=log_file,
                            cwd=str(tmp_path))
    wait_for(lambda: _answers(port), 30, what="the server behind the wrapper")
    (wrapper,) = children_of(proc.pid)
    (server,) = children_of(wrapper)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        # Keep-alive, so the server side stays established after the answer until the drain
        # closes it: wait_established cannot miss it (an HTTP/1.0 answer ends it within 200 ms).
        conn.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_established(port, [conn])
        proc.send_signal(signal.SIGTERM)
        response = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"slow\n"), response
    assert proc.wait(30) == 128 + signal.SIGTERM  # the wrapper's status: it died of SIGTERM
    reap_orphans()
    assert process_state(server) in (None, "Z")  # it drained and exited before the init did
    log = log_path.read_text()
    assert f"[{server}] INFO draining (shutdown)" in log and "SIGKILL" not in log, log


def _answers(port):
    try:
        return http_get(port, "/hello").endswith(b"hello\n")
    except OSError:
        return False


def test_a_reload_before_the_first_generation_was_ready_makes_the_master_ready(procs, tmp_path):
    flag = tmp_path / "second-generation"
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import os, socket, threading\n"
        f"flag = {str(flag)!r}\n"
        "if os.path.exists(flag):  # the second generation says READY=1; the first never does\n"
        "    path = os.environ['NOTIFY_SOCKET']\n"
        "    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:\n"
        "        s.sendto(b'READY=1', '\\0' + path[1:] if path.startswith('@') else path)\n"
        "else:\n"
        "    open(flag, 'w').close()\n"
        "threading.Event().wait()\n")
    log_path = tmp_path / "master.log"
    with open(log_path, "w") as log_file:
        proc = procs.python("-m", "graceful", "run", "--ready", "notify", "--shutdown-delay", "5",
                            "--", sys.executable, str(worker), stderr=log_file)
    wait_for(flag.exists, 30, what="the first generation to start")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: f"ready: pid {proc.pid} " in log_path.read_text(), 30,
             what="the master to declare itself ready")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "lame duck" in log_path.read_text(), 30, what="the lame duck")
    proc.send_signal(signal.SIGQUIT)
    assert proc.wait(30) == 0


def test_a_command_that_names_its_fds_gets_no_listen_fds(procs, tmp_path):
    # A server that reads both would adopt fd 3 twice (gunicorn --bind fd://{fd:web} did).
    port = free_port()
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        proc = procs.python("-m", "graceful", "run", "--bind", f"web=127.0.0.1:{port}", "--ready",
                            "notify", "--", sys.executable, SD_SERVER, "--fd", "{fd:web}",
                            stderr=log)
    wait_for(lambda: f"ready: pid {proc.pid} " in log_path.read_text(), 30,
             what="the master to be ready")
    c = Client(socket_connect(port))
    report = json.loads(c.request("GET", "/").body)
    c.sock.close()
    assert report["fd"] == 3
    assert report["LISTEN_FDS"] is None and report["LISTEN_PID"] is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
