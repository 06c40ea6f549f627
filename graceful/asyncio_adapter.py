"""Make any asyncio server drain-aware under the Upgrader's lifecycle.

    drain = AsyncioDrain(upgrader)
    server = await asyncio.start_server(drain.wrap_handler(handle), sock=upgrader.listen("web=:8000"))
    await drain.serve(server)      # ready, serve until told to stop, drain, close

``wrap_handler`` (for ``start_server`` callbacks) and ``wrap_protocol`` (for ``create_server``
protocol factories) track every connection. When the generation must stop, ``serve`` closes the
servers' listening sockets (after accepting what is queued, when no successor holds them),
closes connections a handler marked ``idle`` once they stayed idle for the grace, waits for the
rest until the deadline, then aborts what is left. Handlers may read ``draining`` to answer
with ``Connection: close``.

Under a master that orders the drain of its workers (``serve --workers``), ``gate_with`` takes
this worker's end of the drain gate: ``serve`` says ``stopped`` on it once it no longer
accepts, and ``close_turn`` waits for the master's ``close CODE``, the moment from which a
client this worker closes can only reconnect to a worker that stays.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Awaitable, Callable, Dict, Optional

from .drain import accept_backlog
from .upgrader import Upgrader

__all__ = ["AsyncioDrain"]

log = logging.getLogger("graceful")

_POLL = 0.05

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _Connection:
    __slots__ = ("transport", "task", "idle_since")

    def __init__(self, transport: asyncio.BaseTransport, task: Optional["asyncio.Task[Any]"]):
        self.transport = transport
        self.task = task
        self.idle_since: Optional[float] = None


class AsyncioDrain:
    """Connection tracking and the drain sequence for asyncio servers."""

    def __init__(self, upgrader: Upgrader) -> None:
        self.upgrader = upgrader
        self.lifecycle = upgrader.lifecycle
        self._connections: Dict[asyncio.BaseTransport, _Connection] = {}
        self._gate: Optional[socket.socket] = None
        self._gate_buffer = b""
        self._turn: "Optional[asyncio.Future[Optional[int]]]" = None

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining

    # -- tracking -------------------------------------------------------------------------------

    def wrap_handler(self, handler: Handler) -> Handler:
        """Wrap an ``asyncio.start_server`` callback so its connections are tracked."""

        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            transport = writer.transport
            _no_delay(transport)
            self._connections[transport] = _Connection(transport, asyncio.current_task())
            try:
                await handler(reader, writer)
            finally:
                self._connections.pop(transport, None)

        return tracked

    def wrap_protocol(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """Wrap a ``create_server`` protocol factory so its connections are tracked."""
        return lambda: _TrackedProtocol(factory(), self)

    def track(self, transport: asyncio.BaseTransport) -> None:
        """Count a connection of a protocol of your own (``wrap_protocol`` does this for you)."""
        self._track(transport)

    def _track(self, transport: asyncio.BaseTransport) -> _Connection:
        """``track``, returning the connection's record: graceful's own servers mark it idle
        and busy directly (``idle_since``), as ``idle``/``busy`` would, once per request."""
        _no_delay(transport)
        record = self._connections[transport] = _Connection(transport, None)
        return record

    def untrack(self, transport: asyncio.BaseTransport) -> None:
        self._connections.pop(transport, None)

    def idle(self, conn: Any) -> None:
        """Mark a connection (writer or transport) idle: waiting for the client's next request."""
        tracked = self._connections.get(_transport(conn))
        if tracked is not None and tracked.idle_since is None:
            tracked.idle_since = time.monotonic()

    def busy(self, conn: Any) -> None:
        """Mark a connection busy again (a request arrived)."""
        tracked = self._connections.get(_transport(conn))
        if tracked is not None:
            tracked.idle_since = None

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # -- the drain gate (under a master) ---------------------------------------------------------

    def gate_with(self, gate: socket.socket) -> None:
        """Follow the master's drain gate ``gate`` (a connected stream socket); before
        ``serve``."""
        gate.setblocking(False)
        self._gate = gate

    async def close_turn(self) -> Optional[int]:
        """Once draining, wait until this generation may close its long-lived connections
        (WebSockets): the close code the master gave, or None at once without a master (then
        the caller picks the code). Bounded: past half the time left (the master's own bound,
        so it never comes first), or once the master is gone, it is our turn anyway."""
        turn = self._turn_future()
        if turn is None:
            return None
        left = self.lifecycle.time_left()
        if left == 0:
            return None  # forced: everything closes now
        try:
            return await asyncio.wait_for(asyncio.shield(turn),
                                          None if left is None else left / 2)
        except asyncio.TimeoutError:
            log.warning("the master did not say within %gs that the other workers stopped "
                        "accepting: closing WebSockets now", (left or 0) / 2)
            return None

    def _turn_future(self) -> "Optional[asyncio.Future[Optional[int]]]":
        if self._turn is None and self._gate is not None:
            self._turn = asyncio.get_running_loop().create_future()
        return self._turn

    def _open_gate(self) -> None:
        if self._turn_future() is not None and self._gate is not None:
            asyncio.get_running_loop().add_reader(self._gate.fileno(), self._on_gate)

    def _on_gate(self) -> None:
        try:
            data = self._gate.recv(4096)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._take_turn(None)  # the master is gone: nobody to wait for
            self._close_gate()
            return
        self._gate_buffer = (self._gate_buffer + data)[-256:]  # one short line is expected
        line, newline, _ = self._gate_buffer.partition(b"\n")
        words = line.split()
        if newline and len(words) == 2 and words[0] == b"close" and words[1].isdigit():
            self._take_turn(int(words[1]))

    def _take_turn(self, code: Optional[int]) -> None:
        if self._turn is not None and not self._turn.done():
            self._turn.set_result(code)

    def _report_stopped_accepting(self) -> None:
        if self._gate is not None:
            try:
                self._gate.send(b"stopped\n")  # a few bytes into an empty socket buffer
            except OSError:
                self._take_turn(None)

    def _close_gate(self) -> None:
        if self._gate is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._gate.fileno())
            except RuntimeError:
                pass
            self._gate.close()
            self._gate = None

    # -- the lifecycle --------------------------------------------------------------------------

    async def serve(self, *servers: asyncio.AbstractServer,
                    after_drain: Optional[Callable[[], Awaitable[None]]] = None) -> None:
        """Declare ready, serve until this generation must stop, then drain and close.

        ``after_drain`` (an ASGI lifespan shutdown, say) runs once the connections are done,
        before the upgrader closes.
        """
        try:
            self._open_gate()
            if self.lifecycle.state == "starting":
                self.upgrader.ready()
            await self.upgrader.wait_async()
            await self._stop_accepting(servers)
            self._report_stopped_accepting()
            await self._wait_for_connections(servers)
            if after_drain is not None:
                await after_drain()
        finally:
            for server in servers:
                server.close()
            self._close_gate()
            self.upgrader.close()

    async def _stop_accepting(self, servers: "tuple[asyncio.AbstractServer, ...]") -> None:
        loop = asyncio.get_running_loop()
        # asyncio accepts a connection in a reader callback and builds its transport in a task.
        # A transport built after Server.close() fails (the server is gone) and its socket is
        # dropped with the request unread: a reset. So stop accepting first, let the tasks
        # already scheduled build their transports, and only then close.
        for server in servers:
            for listener in server.sockets or ():
                loop.remove_reader(listener.fileno())
        for _ in range(3):
            await asyncio.sleep(0)
        adopted = []
        for server in servers:
            factory = getattr(server, "_protocol_factory", None)
            if self.lifecycle.last_holder and factory is not None:
                # Nobody else holds these listeners: what waits in their queues would be reset
                # by the close, so serve it first.
                for listener in server.sockets or ():
                    raw = socket.socket(fileno=listener.fileno())
                    try:
                        for conn, _ in accept_backlog(raw):
                            conn.setblocking(False)
                            adopted.append(loop.connect_accepted_socket(factory, conn))
                    finally:
                        raw.detach()
            server.close()  # closes only our fds; a successor keeps its own copies
        if adopted:
            await asyncio.gather(*adopted, return_exceptions=True)
        # asyncio accepts a connection in one callback and builds its transport in a task it
        # schedules: let those tasks (and the handler tasks they start) run, so every
        # connection accepted before the close is counted by the wait that follows.
        for _ in range(3):
            await asyncio.sleep(0)

    async def _wait_for_connections(self, servers: "tuple[asyncio.AbstractServer, ...]") -> None:
        lifecycle = self.lifecycle
        # A connection accepted just before the stop has a transport but its handler may not
        # have started yet (so it is not tracked): the servers' own count of live transports
        # covers that moment.
        while self._connections or any(_live_transports(s) for s in servers):
            left = lifecycle.time_left()
            if left is not None and left <= 0:
                break
            self._close_idle()
            await asyncio.sleep(_POLL if left is None else min(_POLL, left))
        if self._connections:
            log.warning("drain deadline reached: aborting %d connection(s)", len(self._connections))
            for tracked in list(self._connections.values()):
                tracked.transport.abort()  # type: ignore[attr-defined]
                if tracked.task is not None:
                    tracked.task.cancel()
            await asyncio.sleep(0)

    def _close_idle(self) -> None:
        started = self.lifecycle.drain_started
        grace = self.lifecycle.idle_grace
        now = time.monotonic()
        if started is None or now - started < grace:
            return
        for tracked in list(self._connections.values()):
            if tracked.idle_since is not None and now - tracked.idle_since >= grace:
                tracked.idle_since = None
                tracked.transport.close()


class _TrackedProtocol(asyncio.Protocol):
    """Delegates to the real protocol; records connection_made/connection_lost."""

    def __init__(self, inner: asyncio.Protocol, drain: AsyncioDrain) -> None:
        self._inner = inner
        self._drain = drain
        self._transport: Optional[asyncio.BaseTransport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        _no_delay(transport)
        self._drain._connections[transport] = _Connection(transport, None)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._transport is not None:
            self._drain._connections.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> Optional[bool]:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _live_transports(server: asyncio.AbstractServer) -> int:
    clients = getattr(server, "_clients", None)  # Python 3.13+
    if clients is not None:
        return len(clients)
    return getattr(server, "_active_count", 0)  # Python 3.9 - 3.12


def _transport(conn: Any) -> Any:
    return getattr(conn, "transport", conn)


def _no_delay(transport: asyncio.BaseTransport) -> None:
    # asyncio sets TCP_NODELAY only when the listener's proto is IPPROTO_TCP; ours is 0.
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def linger_close(loop: asyncio.AbstractEventLoop, transport: Any, linger: float) -> None:
    """Half-close ``transport``, then close it ``linger`` seconds later: a client still sending
    is read off meanwhile, so the close sends no RST over a response it has not read."""
    if not transport.can_write_eof():
        transport.close()
        return
    try:
        transport.write_eof()
    except OSError:  # the client is already gone (ENOTCONN): nothing to linger for
        transport.close()
        return
    loop.call_later(linger, transport.close)
