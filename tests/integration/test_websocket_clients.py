"""WebSockets of a FastAPI app under `graceful serve`, driven by real client libraries.

`websockets` and aiohttp's client, against tests/integration/apps/ws_fastapi_app.py: text,
binary, fragmented, 1 MB and compressed messages, subprotocols, a denial response, broadcast,
the keepalive ping timeout; then the drain: 50 clients exchanging numbered messages across 10
SIGHUP upgrades (and reloads of `serve --workers 2`) while plain HTTP clients load the same
server. Per connection, every echo arrives exactly once and in order, the app receives every
message the client sent before it saw the server's close frame (RFC 6455 7.1.2: data sent
before a peer's Close is still data), every connection of a replaced generation ends with 1012
and its client reconnects to the new generation, and the HTTP load sees no failure.

Needs the integration venv (websockets, aiohttp, fastapi); skipped unless
GRACEFUL_INTEGRATION=1, like the rest of tests/integration.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
from typing import List, Optional

import pytest

if os.environ.get("GRACEFUL_INTEGRATION") != "1":
    pytest.skip("integration suite: set GRACEFUL_INTEGRATION=1", allow_module_level=True)

import aiohttp  # noqa: E402
import websockets  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402

from _serve import Served  # noqa: E402
from _support import Load, process_state, reap_orphans, wait_for  # noqa: E402

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps", "ws_fastapi_app.py:app")
TIMEOUT = 60  # seconds any single network step may take on the loaded CI machine


def _serve(procs, tmp_path, *extra: str) -> Served:
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    env = dict(os.environ, INTEGRATION_MARKERS=str(markers))
    return Served(procs, tmp_path, APP, "--interface", "asgi", *extra, env=env)


def _url(server: Served, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT * 2))


# --- messages, with each client library ---------------------------------------------------

def test_websockets_client_messages(procs, tmp_path):
    server = _serve(procs, tmp_path)

    async def exchange():
        async with ws_connect(_url(server, "/ws/echo"), subprotocols=["chat.v9", "chat.v2"],
                              max_size=2 ** 21, open_timeout=TIMEOUT) as ws:
            assert ws.subprotocol == "chat.v2"
            # websockets offers permessage-deflate by default: the server must take it.
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" in extensions, ws.response.headers
            assert (await ws.recv()).startswith("hello ")
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\xff" * 10)
            assert await ws.recv() == b"\x00\xff" * 10
            await ws.send([b"frag", b"men", b"ted"])  # one message in three frames
            assert await ws.recv() == b"fragmented"
            await ws.send(["fr", "ag", "ment", "ed ✓"])
            assert await ws.recv() == "fragmented ✓"
            large = os.urandom(1_000_000)  # incompressible: the deflate path with no gain
            await ws.send(large)
            assert await ws.recv() == large
            text = "".join(f"line {i}\n" for i in range(120_000))  # ~1.3 MB, compresses well
            await ws.send(text)
            assert await ws.recv() == text
        assert ws.close_code == 1000

    _run(exchange())


def test_websockets_client_without_compression_or_subprotocol(procs, tmp_path):
    server = _serve(procs, tmp_path)

    async def exchange():
        async with ws_connect(_url(server, "/ws/echo"), compression=None,
                              subprotocols=["unknown"], open_timeout=TIMEOUT) as ws:
            assert ws.subprotocol is None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.recv()
            await ws.send("plain")
            assert await ws.recv() == "plain"

    _run(exchange())


def test_aiohttp_client_messages(procs, tmp_path):
    server = _serve(procs, tmp_path)

    async def exchange():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(_url(server, "/ws/echo"), protocols=("chat.v1",),
                                          compress=15, max_msg_size=2 ** 22,
                                          timeout=aiohttp.ClientWSTimeout(ws_receive=TIMEOUT)
                                          ) as ws:
                assert ws.protocol == "chat.v1"
                assert ws.compress == 15, "permessage-deflate was not negotiated"
                assert (await ws.receive_str()).startswith("hello ")
                await ws.send_str("text ✓")
                assert await ws.receive_str() == "text ✓"
                await ws.send_bytes(b"\x01\x02")
                assert await ws.receive_bytes() == b"\x01\x02"
                large = os.urandom(1_000_000)
                await ws.send_bytes(large)
                assert await ws.receive_bytes() == large
                text = "abc" * 400_000
                await ws.send_str(text)
                assert await ws.receive_str() == text
                await ws.close()
                assert ws.close_code == 1000

    _run(exchange())


def test_denial_response_reaches_both_clients(procs, tmp_path):
    server = _serve(procs, tmp_path)

    async def handshakes():
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with ws_connect(_url(server, "/ws/deny"), open_timeout=TIMEOUT):
                pass
        assert refused.value.response.status_code == 403
        assert refused.value.response.body == b"go away\n"
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as denied:
                await session.ws_connect(_url(server, "/ws/deny"))
            assert denied.value.status == 403

    _run(handshakes())


def test_broadcast_reaches_every_client(procs, tmp_path):
    server = _serve(procs, tmp_path)

    async def chat():
        clients = [await ws_connect(_url(server, "/ws/broadcast"), open_timeout=TIMEOUT)
                   for _ in range(5)]
        async with aiohttp.ClientSession() as session:
            other = await session.ws_connect(_url(server, "/ws/broadcast"))
            # Joined clients are registered once accepted; a round trip per client proves it.
            for i, client in enumerate(clients):
                await client.send(f"join {i}")
            for i in range(len(clients)):
                for client in clients:
                    assert await client.recv() == f"join {i}"
                assert (await other.receive_str()) == f"join {i}"
            await other.send_str("from aiohttp")
            for client in clients:
                assert await client.recv() == "from aiohttp"
            assert await other.receive_str() == "from aiohttp"
            await other.close()
        for client in clients:
            await client.close()

    _run(chat())


def test_ping_timeout_drops_a_client_that_never_answers(procs, tmp_path):
    server = _serve(procs, tmp_path, "--ws-ping-interval", "0.5", "--ws-ping-timeout", "1")

    async def clients():
        async with aiohttp.ClientSession() as session:
            silent = await session.ws_connect(_url(server, "/ws/echo"), autoping=False)
            answering = await ws_connect(_url(server, "/ws/echo"), ping_interval=None,
                                         open_timeout=TIMEOUT)
            await answering.recv()
            assert (await silent.receive_str()).startswith("hello ")
            pings = 0
            while True:  # bounded: the server gives up within interval + timeout
                message = await silent.receive(timeout=TIMEOUT)
                if message.type != aiohttp.WSMsgType.PING:
                    break
                pings += 1
            assert pings >= 1
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
            assert silent.close_code == 1011, (message, silent.close_code)
            # The client whose library answers pings outlived the silent one's deadline.
            await answering.send("still here")
            assert await answering.recv() == "still here"
            await answering.close()

    _run(clients())


# --- the drain -----------------------------------------------------------------------------

class _Connection:
    def __init__(self, conn_id: str) -> None:
        self.id = conn_id
        self.pid = 0
        self.sent: List[str] = []
        self.echoed: List[str] = []
        self.close_code: Optional[int] = None


_MAX_CONNECTIONS = 100  # per client: ~2 per reload is expected; a reconnect loop ends here


class _Client:
    """Lock-step numbered messages on one connection after another: a message, its echo, the
    next. A close from the server ends the connection and the client reconnects at once."""

    def __init__(self, index: int, port: int, library: str) -> None:
        self.index, self.port, self.library = index, port, library
        self.connections: List[_Connection] = []
        self.errors: List[str] = []

    @property
    def current(self) -> Optional[_Connection]:
        return self.connections[-1] if self.connections else None

    async def run(self, stop: asyncio.Event, session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            if len(self.connections) >= _MAX_CONNECTIONS:
                self.errors.append(f"client {self.index}: {_MAX_CONNECTIONS} connections")
                return
            conn = _Connection(f"{self.index}-{len(self.connections)}")
            url = f"ws://127.0.0.1:{self.port}/ws/echo?conn={conn.id}"
            try:
                if self.library == "websockets":
                    await self._websockets(url, conn, stop)
                else:
                    await self._aiohttp(url, conn, stop, session)
            except Exception as exc:  # every failure is reported by the test
                self.errors.append(f"{conn.id} ({self.library}): {exc!r}")
                return

    async def _websockets(self, url: str, conn: _Connection, stop: asyncio.Event) -> None:
        async with ws_connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
            self.connections.append(conn)
            try:
                conn.pid = int((await ws.recv()).split()[1])
                while not stop.is_set():
                    text = f"{conn.id}:{len(conn.sent)}"
                    # Counted once written: send raises, writing nothing, once the library
                    # has seen the server's close frame.
                    await ws.send(text)
                    conn.sent.append(text)
                    conn.echoed.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
                    await asyncio.sleep(0.02)  # pacing (a message rate), not synchronisation
            except websockets.exceptions.ConnectionClosed:
                pass
        conn.close_code = ws.close_code

    async def _aiohttp(self, url: str, conn: _Connection, stop: asyncio.Event,
                       session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=TIMEOUT)
                                      ) as ws:
            self.connections.append(conn)
            hello = await ws.receive(timeout=TIMEOUT)
            if hello.type == aiohttp.WSMsgType.TEXT:
                conn.pid = int(hello.data.split()[1])
            while conn.pid and not stop.is_set():
                text = f"{conn.id}:{len(conn.sent)}"
                try:
                    await ws.send_str(text)
                except ConnectionError:  # the close frame was read in the meantime
                    break
                conn.sent.append(text)
                message = await ws.receive(timeout=TIMEOUT)
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                conn.echoed.append(message.data)
                await asyncio.sleep(0.02)
        conn.close_code = ws.close_code


class _Fleet:
    """``count`` clients (half `websockets`, half aiohttp) on an event loop in a thread."""

    def __init__(self, port: int, count: int) -> None:
        self.clients = [_Client(i, port, "websockets" if i % 2 else "aiohttp")
                        for i in range(count)]
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(c.run(self._stop, session) for c in self.clients))

    def start(self) -> "_Fleet":
        self._thread.start()
        wait_for(lambda: self._stop is not None, TIMEOUT, what="the client loop")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(TIMEOUT * 2)
        assert not self._thread.is_alive(), "clients did not finish"

    def errors(self) -> List[str]:
        return [e for c in self.clients for e in c.errors]

    def serving_pids(self) -> List[int]:
        return [c.current.pid if c.current and c.current.close_code is None else 0
                for c in self.clients]

    def wait_all_on(self, fresh, what: str, server: Served) -> None:
        """Until every client has a live connection to a pid that ``fresh(pid)`` accepts and
        has exchanged a message on it."""
        def done() -> bool:
            assert not self.errors(), self.errors()
            return all(c.current is not None and c.current.close_code is None
                       and fresh(c.current.pid) and c.current.echoed for c in self.clients)
        server.wait(done, 120, what=what)


def _reload(server: Served, workers: bool, generation: int) -> None:
    """SIGHUP; wait until the next generation serves and (one process) the old one is gone."""
    if workers:
        os.kill(server.proc.pid, signal.SIGHUP)
        server.wait(lambda: f"generation {generation} is serving" in server.log(), 120,
                    what=f"generation {generation} to serve")
        return
    old = server.pid
    seen = {int(p) for p in re.findall(r"ready: pid (\d+) ", server.log())}
    os.kill(old, signal.SIGHUP)
    server.pid = server.wait(lambda: [int(p) for p in re.findall(r"ready: pid (\d+) ",
                                                                 server.log())
                                      if int(p) not in seen], 120, what=f"a successor of {old}")[0]
    server.wait(lambda: (reap_orphans(), process_state(old) in (None, "Z"))[1], 120,
                what=f"generation {old} to exit")


@pytest.mark.parametrize("mode,reloads", [("one-process", 10), ("workers-2", 3)])
def test_drain_closes_with_1012_and_loses_no_message(procs, tmp_path, mode, reloads):
    workers = mode == "workers-2"
    server = _serve(procs, tmp_path, "--ws-drain-time", "1", "--graceful-timeout", "60",
                    *(("--workers", "2") if workers else ()))
    server.pid = server.proc.pid
    markers = tmp_path / "markers"
    loads = [Load(server.port, keepalive=True, paths=["/fast"], clients=2, max_seconds=600),
             Load(server.port, keepalive=False, paths=["/fast"], clients=2, max_seconds=600)]
    fleet = _Fleet(server.port, 50).start()
    try:
        for load in loads:
            load.start()
        seen: set = set()
        fleet.wait_all_on(lambda pid: True, "50 clients connected", server)
        for generation in range(2, reloads + 2):
            seen.update(fleet.serving_pids())
            _reload(server, workers, generation)
            fleet.wait_all_on(lambda pid: pid not in seen,
                              f"every client on generation {generation}", server)
            for load in loads:
                load.wait_requests(load.total + 10, timeout=120)
    finally:
        for load in loads:
            load.stop()
        fleet.stop()
    assert not fleet.errors(), fleet.errors()
    connections = [conn for c in fleet.clients for conn in c.connections]
    replaced = [conn for c in fleet.clients for conn in c.connections[:-1]]
    assert len(replaced) >= 50 * reloads
    # A connection closed before the app's greeting reached the client (pid 0): never, since
    # every old process stops accepting before any of them closes a WebSocket (with workers
    # the master holds their closes back until each old worker confirmed it).
    early = [conn.id for conn in connections if not conn.pid]
    assert early == [], early
    print(f"{len(connections)} connections, {len(early)} closed before their greeting")
    for client in fleet.clients:
        for before, after in zip(client.connections, client.connections[1:]):
            assert before.close_code == 1012, (before.id, before.close_code)
            assert after.pid != before.pid or not after.pid, (before.id, after.id, before.pid)
    for conn in connections:
        # Echoes: exactly once, in order; only the message in flight at the close may lack one.
        assert conn.echoed == conn.sent[:len(conn.echoed)], conn.id
        assert len(conn.sent) - len(conn.echoed) <= 1, (conn.id, conn.sent[-3:], conn.echoed[-3:])
    # The app got every message sent before the client saw the close frame, exactly once.
    wait_for(lambda: all((markers / f"recv-{conn.id}").exists() for conn in connections
                         if conn.pid), 120,
             what="every connection's record of what the app received")
    for conn in connections:
        if not conn.pid:
            assert conn.sent == [], conn.id
            continue
        received = (markers / f"recv-{conn.id}").read_text().splitlines()
        assert received == conn.sent, (conn.id, received[-3:], conn.sent[-3:])
    failures = [f for load in loads for f in load.failures]
    assert failures == [], failures[:10]
    assert sum(load.ok for load in loads) > 0
