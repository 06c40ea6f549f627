"""WebSocket drain order under ``serve --workers``: a reload closes the old workers' WebSockets
with 1012 only once every old worker stopped accepting, so each client that reconnects lands
on the new generation; a final stop closes them with 1001."""

from __future__ import annotations

import os
import signal
import threading
from typing import Dict, List, Optional

import pytest

from _serve import APPS, Served
from test_asgi_websocket import WSClient

# An application that is ws_app, except that the first worker to load it (per test) handles
# SIGQUIT late: its drain starts seconds after its sibling's. It writes its pid to the flag file. (The Upgrader installed its
# handler before the application was loaded; this one passes the signal on to it later.)
_LATE_QUIT_APP = '''
import os, signal, sys, threading
sys.path.insert(0, {apps!r})
from ws_app import app

def _late(previous, delay):
    def handler(signum, frame):
        threading.Timer(delay, previous, (signum, None)).start()
    return handler

try:
    _flag = os.open({flag!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
except FileExistsError:
    pass
else:
    os.write(_flag, str(os.getpid()).encode())  # which worker is late
    os.close(_flag)
    signal.signal(signal.SIGQUIT, _late(signal.getsignal(signal.SIGQUIT), {delay!r}))
'''


class Reconnector:
    """One WebSocket; when the server closes it, answer the close and connect again at once."""

    def __init__(self, port: int, reconnect: bool = True) -> None:
        self.port = port
        self.reconnect = reconnect
        self.client = WSClient(port, timeout=60)
        self.pid = int(self.client.headers["x-pid"])
        self.close: Optional[tuple] = None
        self.new_pid: Optional[int] = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.close = self.client.recv()
            self.client.send_close(self.close[1])
            self.client.close()
            if not self.reconnect:
                return
            again = WSClient(self.port, timeout=60)
            self.new_pid = int(again.headers["x-pid"])
            again.send_close(1000)
            again.close()
        except BaseException as exc:  # noqa: B902 - reported by the test
            self.error = exc


def _connect_to_each(port: int, pids: int, each: int, reconnect: bool = True,
                     limit: int = 400) -> List[Reconnector]:
    """Connect until each of ``pids`` workers holds at least ``each`` of the clients."""
    clients: List[Reconnector] = []
    per_pid: Dict[int, int] = {}
    while len(per_pid) < pids or min(per_pid.values()) < each:
        assert len(clients) < limit, f"{limit} clients and still {per_pid}"
        client = Reconnector(port, reconnect)
        clients.append(client)
        per_pid[client.pid] = per_pid.get(client.pid, 0) + 1
    return clients


def _late_quit_app(tmp_path, delay: float) -> str:
    path = tmp_path / "late_quit_app.py"
    path.write_text(_LATE_QUIT_APP.format(apps=APPS, flag=str(tmp_path / "late-quit"),
                                          delay=delay))
    return f"{path}:app"


def test_a_reload_reconnects_every_client_to_the_new_generation(procs, tmp_path):
    served = Served(procs, tmp_path, _late_quit_app(tmp_path, 3.0), "--workers", "2",
                    "--ws-drain-time", "1", "--ws-ping-interval", "0",
                    "--graceful-timeout", "60")
    clients = _connect_to_each(served.port, pids=2, each=8)
    old = {c.pid for c in clients}
    os.kill(served.proc.pid, signal.SIGHUP)
    for client in clients:
        client.thread.join(90)
        assert not client.thread.is_alive(), "a client was never closed"
        assert client.error is None, client.error
    assert {c.close for c in clients} == {("close", 1012, "")}
    back_on_old = [c.new_pid for c in clients if c.new_pid in old]
    assert not back_on_old, (f"{len(back_on_old)} of {len(clients)} clients reconnected to an "
                             f"old worker; log:\n{served.log()[-3000:]}")
    assert "generation 2 is serving" in served.log()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_final_stop_of_the_master_closes_with_1001(procs, tmp_path, signum):
    served = Served(procs, tmp_path, "ws_app.py:app", "--workers", "2",
                    "--ws-drain-time", "0.5", "--ws-ping-interval", "0",
                    "--graceful-timeout", "60")
    clients = _connect_to_each(served.port, pids=2, each=2, reconnect=False)
    served.proc.send_signal(signum)
    for client in clients:
        client.thread.join(90)
        assert not client.thread.is_alive(), "a client was never closed"
    assert {c.close for c in clients} == {("close", 1001, "")}, served.log()[-3000:]
    assert served.proc.wait(60) == 0
