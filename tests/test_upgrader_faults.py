"""Self re-exec under faults, with real processes: a successor killed at each step of its
hand-over, a failure whose reason must reach the log, a full or read-only disk, and a trigger
that reaches a generation which has just handed over."""

from __future__ import annotations

import os
import errno
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from _serve import Served
from _support import (PYTHON, ROOT, free_port, process_state, read_line, reap_orphans,
                      wait_established, wait_for)
from graceful.pidfile import owner_pid, read_pid

PAUSED_CHILD = os.path.join(ROOT, "tests", "children", "paused_successor.py")


def _gone(pid: int) -> bool:
    reap_orphans()
    return process_state(pid) in (None, "Z")


def _served_by(port: int) -> int:
    """The pid that answers one request on a fresh connection (X-Pid)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET /hello HTTP/1.0\r\nHost: t\r\n\r\n")
        data = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.startswith("HTTP/1.") and " 200 " in head.split("\r\n")[0], data[:200]
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-pid":
            return int(value)
    raise AssertionError(f"no X-Pid in {head!r}")


def _graceful(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([PYTHON, "-m", "graceful", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _rollback_line(log: str) -> str:
    lines = [line for line in log.splitlines() if "upgrade rolled back" in line]
    assert lines, log[-4000:]
    return lines[-1]


# -- item 1: the pidfile names a live serving process whenever a successor dies --------------


class PausedServer:
    """The demo server whose first successor stops at ``step``
    (tests/children/paused_successor.py)."""

    def __init__(self, procs, tmp_path, step: str) -> None:
        self.port = free_port()
        self.run_dir = tmp_path / "run"
        self.run_dir.mkdir()
        self.pidfile = str(self.run_dir / "server.pid")
        self.log_path = tmp_path / "server.log"
        with open(self.log_path, "w") as log:
            self.proc = procs.python(
                PAUSED_CHILD, step, str(tmp_path / "paused"), "--port", str(self.port),
                "--pidfile", self.pidfile, "--ready-timeout", "120", "--graceful-timeout", "20",
                stdout=subprocess.PIPE, stderr=log)
        assert read_line(self.proc.stdout, 30) == f"READY {self.proc.pid}\n"
        self.first = self.proc.pid
        wait_for(lambda: owner_pid(self.pidfile) == self.first, 30, what="the first pidfile")

    def log(self) -> str:
        return self.log_path.read_text()

    def upgrade_until_paused(self, step: str) -> int:
        os.kill(self.first, signal.SIGHUP)
        words = read_line(self.proc.stdout, 60).split()
        while words[0] == "READY":  # the demo server says READY once it serves
            words = read_line(self.proc.stdout, 60).split()
        assert words[:2] == ["PAUSED", step], words
        return int(words[2])


@pytest.mark.parametrize("step", ["before-ready", "before-pidfile", "after-pidfile"])
def test_successor_killed_before_it_is_ready_gives_the_pidfile_back(procs, tmp_path, step):
    server = PausedServer(procs, tmp_path, step)
    successor = server.upgrade_until_paused(step)
    if step == "after-pidfile":
        assert read_pid(server.pidfile) == successor  # the moment of the report
    os.kill(successor, signal.SIGKILL)
    wait_for(lambda: "upgrade rolled back" in server.log(), 60, what="the rollback")
    # The pidfile names the old generation, which holds it and serves; nothing is left behind.
    assert read_pid(server.pidfile) == server.first
    assert owner_pid(server.pidfile) == server.first
    assert _served_by(server.port) == server.first
    assert sorted(os.listdir(server.run_dir)) == ["server.pid"]
    assert "killed by SIGKILL" in _rollback_line(server.log())
    # And the operator's next reload reaches it and upgrades (this successor does not pause).
    reload = _graceful("reload", "--pidfile", server.pidfile, "--wait", "--timeout", "60")
    assert reload.returncode == 0, (reload.stdout, reload.stderr, server.log()[-3000:])
    assert f"(was {server.first})" in reload.stdout
    new = read_pid(server.pidfile)
    assert new not in (server.first, successor)
    wait_for(lambda: _served_by(server.port) == new, 30, what=f"pid {new} to serve")
    wait_for(lambda: _gone(server.first), 60, what="the old generation to exit")
    assert owner_pid(server.pidfile) == new


def test_successor_killed_after_ready_leaves_a_stale_pidfile_and_says_so(procs, tmp_path):
    """Documented: the predecessor has stopped accepting, so nothing serves. The pidfile keeps
    naming the dead successor (stale: its lock is free), so status says "not running" and a new
    first generation can start at once; the draining predecessor logs the death."""
    server = PausedServer(procs, tmp_path, "after-ready")
    # A request head that never ends keeps the old generation draining (up to 20 s).
    hanging = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    hanging.sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n")
    wait_established(server.port, [hanging])
    successor = server.upgrade_until_paused("after-ready")
    wait_for(lambda: "draining (handed over" in server.log(), 30, what="the old one to drain")
    assert process_state(server.first) not in (None, "Z")
    os.kill(successor, signal.SIGKILL)
    wait_for(lambda: f"successor pid {successor} killed by SIGKILL after it took over"
             in server.log(), 30, what="the predecessor to log the death")
    assert read_pid(server.pidfile) == successor
    assert owner_pid(server.pidfile) is None
    status = _graceful("status", "--pidfile", server.pidfile)
    assert status.returncode == 3 and "not running (stale)" in status.stderr, status
    hanging.close()
    wait_for(lambda: _gone(server.first), 60, what="the old generation to finish its drain")
    with open(tmp_path / "restart.log", "w") as log:
        restarted = procs.python("-m", "graceful._demo_server", "--port", str(server.port),
                                 "--pidfile", server.pidfile, stdout=subprocess.PIPE, stderr=log)
    assert read_line(restarted.stdout, 30) == f"READY {restarted.pid}\n"
    assert owner_pid(server.pidfile) == restarted.pid


# -- item 10: a trigger that reaches a generation which has handed over ----------------------


def test_sighup_to_a_generation_that_handed_over_upgrades_the_one_serving(procs, tmp_path):
    pidfile = str(tmp_path / "server.pid")
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--pidfile", pidfile,
                    "--graceful-timeout", "60", "--header-timeout", "60")
    first = served.proc.pid
    hanging = served.connect(30)
    hanging.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n")  # keeps the first one draining
    wait_established(served.port, [hanging])
    os.kill(first, signal.SIGHUP)
    second = served.wait(lambda: read_pid(pidfile) not in (None, first) and read_pid(pidfile),
                         what="the second generation in the pidfile")
    served.wait(lambda: f"draining (handed over to pid {second})" in served.log(),
                what="the first generation to drain")
    assert process_state(first) not in (None, "Z")
    os.kill(first, signal.SIGHUP)  # as if the pidfile had been read a moment early
    third = served.wait(
        lambda: read_pid(pidfile) not in (None, first, second) and read_pid(pidfile), 60,
        what="a third generation, started by the second")
    assert f"passed the trigger on to pid {second}" in served.log()
    assert "cannot upgrade while draining" not in served.log()
    served.wait(lambda: _served_by(served.port) == third, what=f"pid {third} to serve")
    hanging.close()


# -- item 8: the rollback line says why the successor failed ----------------------------------

GOOD_WSGI = """
import os
def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "3"), ("X-Pid", str(os.getpid()))])
    return [b"ok\\n"]
"""

GOOD_ASGI = """
import os
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"3"), (b"x-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": b"ok\\n"})
"""

FAILING_LIFESPAN = """
async def app(scope, receive, send):
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
"""


def _serve_deployed(procs, tmp_path, source: str, *extra: str):
    """``graceful serve`` on an app file the test rewrites (deploys) between generations."""
    app_file = tmp_path / "deployed.py"
    app_file.write_text(textwrap.dedent(source))
    served = Served(procs, tmp_path, str(app_file) + ":app", "--ready-timeout", "60", *extra)
    return served, app_file


def _deploy_and_reload(served, app_file, source: str) -> str:
    app_file.write_text(textwrap.dedent(source))
    for cached in (app_file.parent / "__pycache__").glob("deployed*"):
        cached.unlink()
    os.kill(served.proc.pid, signal.SIGHUP)
    served.wait(lambda: "upgrade rolled back" in served.log(), 60, what="the rollback")
    assert _served_by(served.port) == served.proc.pid
    return _rollback_line(served.log())


def test_rollback_says_which_exception_a_broken_deploy_raised(procs, tmp_path):
    served, app_file = _serve_deployed(procs, tmp_path, GOOD_WSGI)
    line = _deploy_and_reload(served, app_file, "x = 1\nraise RuntimeError('broken deploy')\n")
    assert "RuntimeError: broken deploy" in line, line
    assert "deployed.py:2" in line, line
    assert "exited with status 1" in line, line  # it exited by itself: not stopped by us
    # Its own traceback still reached the shared stderr in full.
    assert "Traceback (most recent call last)" in served.log()


def test_rollback_says_that_lifespan_startup_failed(procs, tmp_path):
    served, app_file = _serve_deployed(procs, tmp_path, GOOD_ASGI)
    line = _deploy_and_reload(served, app_file, FAILING_LIFESPAN)
    assert "lifespan startup failed: database unreachable" in line, line
    assert "exited with status 3" in line, line


def test_rollback_gives_the_exit_status_of_a_successor_that_just_exits(procs, tmp_path):
    served, app_file = _serve_deployed(procs, tmp_path, GOOD_WSGI)
    line = _deploy_and_reload(served, app_file, "import os\nos._exit(5)\n")
    assert "exited with status 5" in line, line


def test_rollback_says_not_ready_in_time(procs, tmp_path):
    served, app_file = _serve_deployed(procs, tmp_path, GOOD_WSGI)
    served.proc.kill()  # restart with a short ready timeout
    served.proc.wait(30)
    served = Served(procs, tmp_path, str(app_file) + ":app", "--ready-timeout", "2",
                    "--graceful-timeout", "2")
    line = _deploy_and_reload(served, app_file, "import threading\nthreading.Event().wait()\n")
    assert "was not ready within 2s" in line, line


# -- item 7: a full disk or a read-only directory -------------------------------------------


def _mount_tmpfs(path, *options: str) -> None:
    path.mkdir(exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=64k",) + options),
                             "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path):
    """A 64 KiB tmpfs at tmp_path/fs, unmounted (lazily, if still busy) at teardown."""
    path = tmp_path / "fs"
    _mount_tmpfs(path)
    try:
        yield path
    finally:
        for _ in range(2):  # a read-only bind mount over it, then the tmpfs itself
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(directory) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def _remount_read_only(directory) -> None:
    result = subprocess.run(["mount", "-o", "remount,ro", str(directory)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def _bind_read_only(directory) -> None:
    """Make ``directory`` read-only for every new lookup, even while a process keeps a file in
    it open for writing (which makes a plain ``remount,ro`` fail with "busy"): a read-only
    bind mount of it over itself (unmounted by ``small_fs``'s lazy umount)."""
    for args in (["--bind", str(directory), str(directory)],
                 ["-o", "remount,bind,ro", str(directory)]):
        result = subprocess.run(["mount", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


ENTRIES = {
    "serve": ["serve", os.path.join(ROOT, "tests", "apps", "wsgi_app.py") + ":app"],
    "serve --workers": ["serve", os.path.join(ROOT, "tests", "apps", "wsgi_app.py") + ":app",
                        "--workers", "1"],
    "run": ["run", "--pidfile", "{pidfile}", "--", sys.executable, "-c", "pass"],
}


def _start_entry(entry: str, pidfile: str) -> subprocess.CompletedProcess:
    args = [a.replace("{pidfile}", pidfile) for a in ENTRIES[entry]]
    if "{pidfile}" not in " ".join(ENTRIES[entry]):
        args += ["--pidfile", pidfile, "--bind", f"web=127.0.0.1:{free_port()}"]
    else:
        args[1:1] = ["--bind", f"web=127.0.0.1:{free_port()}"]
    return _graceful(*args, timeout=60)


def _assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_full_disk_at_start_is_a_one_line_error(small_fs, entry):
    _fill(small_fs)
    result = _start_entry(entry, str(small_fs / "server.pid"))
    _assert_one_line_error(result, str(small_fs / "server.pid"), "No space left on device")
    assert os.listdir(small_fs) == ["filler"]  # nothing half-written


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_read_only_pidfile_directory_at_start_is_a_one_line_error(small_fs, entry):
    _remount_read_only(small_fs)
    result = _start_entry(entry, str(small_fs / "server.pid"))
    _assert_one_line_error(result, str(small_fs / "server.pid"), "Read-only file system")
    assert os.listdir(small_fs) == []


CANNOT_MOUNT = 97


def test_demo_without_a_writable_temp_directory_is_a_one_line_error():
    # The demo's pidfile lives in a temp directory, and tempfile falls back from a full or
    # read-only TMPDIR to /tmp, /var/tmp and the cwd: so all of them are made read-only (bound
    # read-only over themselves, so the interpreter stays reachable wherever it lives), in a
    # mount namespace of the demo's own: nobody else sees those mounts.
    script = ("for d in /tmp /var/tmp; do mount --bind $d $d && mount -o remount,bind,ro $d "
              f"|| exit {CANNOT_MOUNT}; done; cd /tmp && exec \"$@\"")
    env = dict(os.environ, TMPDIR="/tmp",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
               PYTHON, "-m", "graceful", "demo", "--duration", "1", "--upgrades", "1"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    except FileNotFoundError:
        pytest.skip("no unshare(1) here to make a private mount namespace")
    if result.returncode == CANNOT_MOUNT or result.stderr.startswith("unshare:"):
        pytest.skip(f"cannot make read-only mounts in a private namespace: {result.stderr}")
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("graceful demo: ") and "TMPDIR" in last, result.stderr


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_pidfile_write_failure_during_upgrade_is_a_logged_rollback(procs, tmp_path, small_fs,
                                                                   fault):
    pidfile = str(small_fs / "server.pid")
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--pidfile", pidfile,
                    "--ready-timeout", "60")
    first = served.proc.pid
    if fault == "full":
        _fill(small_fs)
    else:
        _bind_read_only(small_fs)
    os.kill(first, signal.SIGHUP)
    served.wait(lambda: "upgrade rolled back" in served.log(), 60, what="the rollback")
    line = _rollback_line(served.log())
    why = "No space left on device" if fault == "full" else "Read-only file system"
    assert why in line and pidfile in line, line
    assert read_pid(pidfile) == first and owner_pid(pidfile) == first
    assert _served_by(served.port) == first
    assert sorted(os.listdir(small_fs)) == sorted(["server.pid"] + (["filler"] if fault == "full"
                                                                     else []))
