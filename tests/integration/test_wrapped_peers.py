"""``graceful run`` wrapping gunicorn and uvicorn with their natural commands: no request fails
across reloads.

Runs under a venv's python that has graceful (pip install -e .), pytest, gunicorn and uvicorn;
skips elsewhere. Waits and ports come from tests/_support.py like the rest of the suite.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from _support import free_port, wait_for

pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn")

BIN = os.path.dirname(sys.executable)
RELOADS = 3

WSGI_APP = '''\
import os, time

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(0.2)  # sleep-ok: the app's slow request, in flight across the reload
    body = b"%d\\n" % os.getpid()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
'''

ASGI_APP = '''\
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(0.2)  # a request in flight across the reload
    body = b"%d\\n" % os.getpid()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''


# Every wait here is for a process under load (a peer starting, a generation handing over).
WAIT = 60.0


class _Load:
    """Fresh-connection HTTP clients in threads, bounded in count and time; every request
    written that did not get a complete 200 is a failure."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.ok = 0
        self.failures: list = []
        self.pids: set = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self, index: int) -> None:
        deadline = time.monotonic() + 300
        paths = ("/", "/", "/slow")
        for i in range(100_000):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            path = paths[(i + index) % len(paths)]
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                conn.request("GET", path, headers={"Connection": "close"})
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise AssertionError(f"status {response.status}")
                with self._lock:
                    self.ok += 1
                    self.pids.add(int(body))
            except Exception as exc:
                with self._lock:
                    self.failures.append(f"{path}: {exc!r}")
            finally:
                conn.close()

    def wait_more(self, n: int) -> None:
        target = self.ok + n
        wait_for(lambda: self.ok >= target or self.failures, WAIT, what=f"{n} more requests")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


def _peer_command(peer: str, app_dir: str):
    if peer == "gunicorn fd://{fd:web}":
        return [os.path.join(BIN, "gunicorn"), "--bind", "fd://{fd:web}", "--workers", "2",
                "--chdir", app_dir, "wsgiapp:app"]
    if peer == "gunicorn LISTEN_FDS":
        return [os.path.join(BIN, "gunicorn"), "--workers", "2", "--chdir", app_dir,
                "wsgiapp:app"]
    return [os.path.join(BIN, "uvicorn"), "--fd", "{fd:web}", "--app-dir", app_dir,
            "asgiapp:app"]


@pytest.mark.parametrize("peer", ["gunicorn fd://{fd:web}", "gunicorn LISTEN_FDS",
                                  "uvicorn --fd {fd:web}"])
def test_a_wrapped_peer_loses_no_request_across_reloads(tmp_path, peer):
    (tmp_path / "wsgiapp.py").write_text(WSGI_APP)
    (tmp_path / "asgiapp.py").write_text(ASGI_APP)
    port = free_port()
    log_path = tmp_path / "master.log"
    with open(log_path, "w") as log_file:
        master = subprocess.Popen(
            [sys.executable, "-m", "graceful", "run", "--bind", f"web=127.0.0.1:{port}",
             "--ready", "delay:3", "--", *_peer_command(peer, str(tmp_path))],
            stderr=log_file, stdout=log_file, start_new_session=True)
    log = log_path.read_text
    try:
        wait_for(lambda: f"ready: pid {master.pid} " in log() or master.poll() is not None,
                 WAIT, what="the master to be ready")
        assert master.poll() is None, log()
        load = _Load(port)
        try:
            load.wait_more(20)
            for generation in range(2, 2 + RELOADS):
                os.kill(master.pid, signal.SIGHUP)
                wait_for(lambda: f"generation {generation} is serving" in log(), WAIT,
                         what=f"generation {generation} to serve")
                load.wait_more(20)
            wait_for(lambda: f"(generation {RELOADS}) exited" in log(), WAIT,
                     what="the previous generation to exit")
            load.wait_more(20)
        finally:
            load.stop()
        assert load.failures == [], (load.failures[:5], log()[-3000:])
        assert len(load.pids) > 2  # more than one generation served
        assert "Traceback" not in log() and "Bad file descriptor" not in log(), log()[-3000:]
        master.send_signal(signal.SIGTERM)
        assert master.wait(60) == 0, log()[-3000:]
    finally:
        try:
            os.killpg(master.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        master.wait(30)
