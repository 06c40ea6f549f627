"""One WebSocket connection of the ASGI server: the ``websocket`` scope (ASGI spec 2.4).

The HTTP protocol hands a connection over with ``upgrade(cycle)`` when its request asks for a
WebSocket. The handshake is checked by the sans-IO core (``graceful.http.websocket``); a bad one
is answered 400/426. The application then gets ``websocket.connect`` and answers with
``websocket.accept``, ``websocket.close`` (403) or a denial response
(``websocket.http.response.start``/``body``). Once open:

- frames are parsed as they arrive; pings are answered and close frames completed at once,
  whether or not the application is receiving;
- reading pauses while the application has not taken ``_INBOX_HIGH`` bytes of messages, and
  ``send`` waits while the transport's buffer is full: each connection's queues are bounded;
- a ping goes out every ``ws_ping_interval`` seconds; a peer that does not answer within
  ``ws_ping_timeout`` is sent 1011 and dropped (the application sees 1006);
- ``close(code)`` starts the close handshake from the server (1012 when the generation is
  replaced, 1001 on a final stop): messages the client sent before it saw our close frame are
  still delivered, and the connection ends when the client answers or after ``_CLOSE_TIMEOUT``.

``close_on_drain(server)`` closes the server's WebSockets once its drain begins, spread over
``ws_drain_time`` so that clients do not all reconnect in the same instant.

WSGI has no WebSockets: the WSGI server hands an upgrade request to the application as an
ordinary request and sends its answer as a plain HTTP response, on a connection that stays
HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Deque, Dict, List, Optional, Tuple

from .. import http11
from ..asyncio_adapter import linger_close
from ..drain import LAME_DUCK
from .websocket import (Close, HandshakeError, Message, Ping, Pong, ProtocolError, WebSocket,
                        accept_response, check_handshake)

__all__ = ["upgrade", "close_on_drain", "WebSocketSession", "ClientDisconnected"]

log = logging.getLogger("graceful")

_ASGI = {"version": "3.0", "spec_version": "2.4"}
_INBOX_HIGH = 1 << 20  # bytes of received messages waiting for the app before reading pauses
_CLOSE_TIMEOUT = 5.0  # how long the peer has to answer our close frame
_LINGER = 1.0

Message_ = Dict[str, Any]

_CONNECTING, _OPEN, _CLOSING, _CLOSED = "connecting", "open", "closing", "closed"


class ClientDisconnected(OSError):
    """``send`` on a WebSocket that is closed or closing (ASGI spec: an OSError)."""


def upgrade(cycle: Any) -> None:
    """Take over the connection of an HTTP ``cycle`` whose request asks for a WebSocket."""
    protocol = cycle.protocol
    options = protocol.options
    try:
        handshake = check_handshake(cycle.request, options.ws_per_message_deflate)
    except HandshakeError as exc:
        log.info("refused a WebSocket handshake from %s: %s", protocol.client, exc)
        protocol.transport.write(_plain_response(exc.status, exc.detail.encode() + b"\n",
                                                 exc.headers))
        protocol.close_gently()
        return
    # The bytes after the request head may already hold the client's first frames.
    leftover = bytes(protocol.parser._buf)
    protocol.parser._buf.clear()
    protocol.server.protocols.discard(protocol)  # its timeouts are for HTTP, not for us
    session = WebSocketSession(protocol.server, protocol.transport, cycle.scope(), handshake,
                               leftover)
    protocol.transport.set_protocol(session)
    session.start()


class _Registry:
    """The WebSockets of one server, and the close code once its drain began."""

    def __init__(self) -> None:
        self.sessions: "set[WebSocketSession]" = set()
        self.drain_code: Optional[int] = None


def _registry(server: Any) -> _Registry:
    registry = getattr(server, "_websockets", None)
    if registry is None:
        registry = server._websockets = _Registry()
    return registry


class WebSocketSession(asyncio.Protocol):
    """The ASGI application and the protocol core of one WebSocket connection."""

    def __init__(self, server: Any, transport: Any, http_scope: Dict[str, Any], handshake: Any,
                 leftover: bytes) -> None:
        self.server = server
        self.options = server.options
        self.loop: asyncio.AbstractEventLoop = server.loop
        self.transport = transport
        self.handshake = handshake
        self.scope = _websocket_scope(http_scope, handshake.subprotocols)
        self.pending = leftover
        self.ws: Optional[WebSocket] = None
        self.state = _CONNECTING
        self.connect_delivered = False
        self.inbox: Deque[Message_] = collections.deque()
        self.inbox_bytes = 0
        self.reading_paused = False
        self.write_paused = False
        self.waiters: List["asyncio.Future[None]"] = []  # app calls waiting for the socket
        self.disconnect: Optional[Tuple[int, str]] = None  # what the app's last receive says
        self.close_code: Optional[int] = None  # the code of the close we started
        self.drain_code: Optional[int] = None  # a close asked for before the app accepted
        self.denial: Optional[Dict[str, Any]] = None  # websocket.http.response.start
        self.denial_body: List[bytes] = []
        self.ping_due: Optional[float] = None  # loop time: a ping was sent and not answered
        self.timers: Dict[str, asyncio.TimerHandle] = {}  # ping, pong, close: one each
        self.task: Optional["asyncio.Task[None]"] = None
        self.lost = False

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> None:
        _registry(self.server).sessions.add(self)
        self.task = self.loop.create_task(self._run_app())
        self.task.add_done_callback(lambda _: self._maybe_untrack())

    async def _run_app(self) -> None:
        try:
            await self.server.app(self.scope, self.receive, self.send)
        except Exception:
            log.exception("application error in WebSocket %s", self.scope["path"])
            self._app_finished(1011)
            return
        self._app_finished(1000)

    def _app_finished(self, code: int) -> None:
        if self.state == _CONNECTING:
            if self.denial is not None:
                self._finish_denial()
            else:
                # The application returned (or raised) without accepting: 403 (ASGI spec).
                self._http_close(_plain_response(403 if code == 1000 else 500, b""))
        elif self.state == _OPEN:
            self.close(code)

    def _maybe_untrack(self) -> None:
        # Tracked until the socket is gone *and* the application is done with what it received,
        # so that the drain waits for the application to see its disconnect.
        if self.lost and self.task is not None and self.task.done():
            self.server.drain.untrack(self.transport)
            _registry(self.server).sessions.discard(self)

    # -- transport events -----------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # pragma: no cover - set_protocol
        self.transport = transport

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.lost = True
        if self.state != _CLOSED:
            self.state = _CLOSED
            if self.disconnect is None:
                self.disconnect = (self.close_code or 1006, "")
        for timer in self.timers.values():
            timer.cancel()
        self._wake()
        self._maybe_untrack()

    def data_received(self, data: bytes) -> None:
        if self.ws is None:
            self.pending += data  # before the accept: kept for the core (bounded)
            if len(self.pending) > _INBOX_HIGH and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()
            return
        if self.state == _CLOSED:
            return
        for event in self.ws.feed(data):
            self._event(event)
        if self.inbox_bytes > _INBOX_HIGH and not self.reading_paused and not self.lost:
            log.debug("WebSocket %s: the application is not receiving; reading paused",
                      self.scope["client"])
            self.reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> Optional[bool]:
        return None  # the transport closes; connection_lost reports 1006 if no close came

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    # -- protocol events ------------------------------------------------------------------------

    def _event(self, event: Any) -> None:
        ws = self.ws
        assert ws is not None
        if isinstance(event, Message):
            kind = "text" if isinstance(event.data, str) else "bytes"
            self.inbox.append({"type": "websocket.receive", kind: event.data})
            self.inbox_bytes += len(event.data)
            self._wake()
        elif isinstance(event, Ping):
            if not ws.close_sent:
                self.transport.write(ws.pong(event.payload))
        elif isinstance(event, Pong):
            self.ping_due = None
        elif isinstance(event, Close):
            self._peer_closed(event)
        elif isinstance(event, ProtocolError):
            log.info("WebSocket protocol error from %s: %s", self.scope["client"], event.detail)
            self.transport.write(ws.close(event.code))
            self._end(event.code, "")

    def _peer_closed(self, close: Close) -> None:
        ws = self.ws
        assert ws is not None
        if self.close_code is not None:
            self._end(self.close_code, "")  # the answer to our close: the handshake is done
            return
        self.transport.write(ws.close(close.code))  # the same code back (none for 1005)
        self._end(close.code, close.reason)

    def _end(self, code: int, reason: str) -> None:
        """The close handshake is over (or failed): the server closes the TCP connection."""
        self.state = _CLOSED
        if self.disconnect is None:
            self.disconnect = (code, reason)
        self._wake()
        transport = self.transport
        if self.reading_paused:
            transport.resume_reading()  # read off what is left, so the close sends no RST
        linger_close(self.loop, transport, _LINGER)

    # -- the ASGI side --------------------------------------------------------------------------

    def _wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    async def _wait(self) -> None:
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        await waiter

    async def receive(self) -> Message_:
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        while not self.inbox and self.disconnect is None:
            await self._wait()
        if self.inbox:
            message = self.inbox.popleft()
            self.inbox_bytes -= len(message.get("text") or message.get("bytes") or "")
            if self.reading_paused and self.inbox_bytes <= _INBOX_HIGH // 2 and not self.lost:
                self.reading_paused = False
                self.transport.resume_reading()
            return message
        assert self.disconnect is not None
        code, reason = self.disconnect
        return {"type": "websocket.disconnect", "code": code, "reason": reason}

    async def send(self, message: Message_) -> None:
        kind = message["type"]
        if self.state == _CONNECTING:
            await self._send_connecting(kind, message)
        elif kind == "websocket.send":
            self._send_data(message)
            if self.write_paused:
                log.debug("WebSocket %s: the transport buffer is full; send waits",
                          self.scope["client"])
            while self.write_paused and not self.lost:
                await self._wait()
        elif kind == "websocket.close":
            if self.state != _OPEN:
                return  # already closing: one close frame
            self.close(message.get("code") or 1000, message.get("reason") or "")
        elif kind in ("websocket.accept", "websocket.http.response.start",
                      "websocket.http.response.body"):
            raise RuntimeError(f"{kind} after the WebSocket handshake was answered")
        else:
            raise RuntimeError(f"unexpected ASGI message type {kind!r} for a WebSocket scope")

    def _send_data(self, message: Message_) -> None:
        if self.state != _OPEN or self.ws is None:
            raise ClientDisconnected("the WebSocket is closed")
        text, data = message.get("text"), message.get("bytes")
        if (text is None) == (data is None):
            raise RuntimeError("websocket.send needs exactly one of 'text' and 'bytes'")
        self.transport.write(self.ws.send(text if text is not None else data))

    async def _send_connecting(self, kind: str, message: Message_) -> None:
        if kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.close":
            self._http_close(_plain_response(403, b""))  # a close before accept denies
        elif kind == "websocket.http.response.start":
            if self.denial is not None:
                raise RuntimeError("websocket.http.response.start sent twice")
            self.denial = message
        elif kind == "websocket.http.response.body":
            if self.denial is None:
                raise RuntimeError("websocket.http.response.body before its start")
            self.denial_body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self._finish_denial()
        else:
            raise RuntimeError(f"{kind} before websocket.accept")

    def _accept(self, message: Message_) -> None:
        if self.lost:
            raise ClientDisconnected("the client left before the WebSocket was accepted")
        headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", ())]
        for name, value in headers:
            if not http11.is_valid_header(name, value):
                raise RuntimeError(f"invalid WebSocket accept header {name!r}: {value!r}")
        subprotocol = message.get("subprotocol")
        self.transport.write(accept_response(self.handshake, subprotocol, headers))
        self.ws = WebSocket(max_size=self.options.ws_max_size, deflate=self.handshake.deflate)
        self.state = _OPEN
        self._schedule_ping()
        drain_code = self.drain_code or _registry(self.server).drain_code
        if drain_code is not None:
            self.close(drain_code)  # accepted while this generation drains: close at once
        pending, self.pending = self.pending, b""
        if pending:
            self.data_received(pending)
        if self.reading_paused and self.inbox_bytes <= _INBOX_HIGH // 2 and not self.lost:
            self.reading_paused = False
            self.transport.resume_reading()

    def _finish_denial(self) -> None:
        start = self.denial or {}
        status = int(start.get("status", 403))
        body = b"".join(self.denial_body)
        headers = [(bytes(n), bytes(v)) for n, v in start.get("headers", ())
                   if bytes(n).lower() not in (b"content-length", b"connection",
                                                b"transfer-encoding")]
        self._http_close(_plain_response(status, body, headers, content_type=None))

    def _http_close(self, response: bytes) -> None:
        """Answer the handshake with plain HTTP and close: no WebSocket after all."""
        self.state = _CLOSED
        if self.disconnect is None:
            self.disconnect = (1006, "")
        self._wake()
        if self.lost:
            return
        self.transport.write(response)
        self._end(1006, "")

    # -- closing and keepalive ------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """Start the close handshake with ``code`` (the drain calls this with 1012 or 1001)."""
        if self.state == _CONNECTING:
            self.drain_code = code  # closed right after the application accepts
            return
        if self.state != _OPEN or self.ws is None:
            return
        self.state = _CLOSING
        self.close_code = code
        self.transport.write(self.ws.close(code, reason))
        self._wake()
        self._timer("close", _CLOSE_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self) -> None:
        if self.state == _CLOSING:
            log.info("WebSocket peer %s did not answer our close frame", self.scope["client"])
            self.transport.abort()

    def _timer(self, name: str, delay: float, callback: Any) -> None:
        old = self.timers.pop(name, None)
        if old is not None:
            old.cancel()
        self.timers[name] = self.loop.call_later(delay, callback)

    def _schedule_ping(self) -> None:
        interval = self.options.ws_ping_interval
        if interval:
            self._timer("ping", interval, self._ping)

    def _ping(self) -> None:
        if self.state != _OPEN or self.ws is None:
            return
        timeout = self.options.ws_ping_timeout
        if self.ping_due is None:  # else the last one is still unanswered: its check is set
            self.transport.write(self.ws.ping(b"graceful"))
            if timeout:  # 0: pings keep the path alive, but an unanswered one closes nothing
                self.ping_due = self.loop.time() + timeout
                self._timer("pong", timeout, self._ping_check)
        self._schedule_ping()

    def _ping_check(self) -> None:
        due = self.ping_due
        if self.state == _OPEN and due is not None and self.loop.time() >= due:
            log.info("WebSocket peer %s did not answer a ping in %gs: closing", self.scope["client"],
                     self.options.ws_ping_timeout)
            assert self.ws is not None
            self.transport.write(self.ws.close(1011, "ping timeout"))
            self.state = _CLOSED
            self.disconnect = (1006, "")
            self._wake()
            self.transport.abort()


def _websocket_scope(http_scope: Dict[str, Any], subprotocols: List[str]) -> Dict[str, Any]:
    scope = dict(http_scope)
    scope.pop("method", None)
    scope.update(type="websocket", asgi=dict(_ASGI),
                 scheme="wss" if http_scope.get("scheme") == "https" else "ws",
                 subprotocols=subprotocols,
                 extensions={**http_scope.get("extensions", {}), "websocket.http.response": {}})
    return scope


def _plain_response(status: int, body: bytes, headers: Any = (),
                    content_type: Optional[bytes] = b"text/plain; charset=utf-8") -> bytes:
    fields = list(headers)
    if content_type is not None:
        fields.append((b"content-type", content_type))
    fields += [(b"content-length", b"%d" % len(body)), (b"connection", b"close")]
    return http11.response_head(http11.status_line(status), fields) + body


# -- the drain ----------------------------------------------------------------------------------


async def close_on_drain(server: Any) -> None:
    """Once the drain begins, close every WebSocket, spread over ``ws_drain_time``.

    1012 (Service Restart) when a successor takes over, 1001 (Going Away) on a final stop: a
    stop that went through a lame duck, or a plain shutdown. Under a master the first close
    waits for its word (``AsyncioDrain.close_turn``), which also names the code.
    """
    lifecycle = server.upgrader.lifecycle
    went_lame = []
    lifecycle.watch(lambda state: state == LAME_DUCK and went_lame.append(True))
    await server.upgrader.wait_async()
    # Under a master (serve --workers), first wait until no old worker accepts any more: a
    # client closed now could reconnect to a sibling that still does. The master says the code.
    told = await server.drain.close_turn()
    final = bool(went_lame) or lifecycle.reason in ("shutdown", "forced", "shutdown before ready")
    code = told if told is not None else 1001 if final else 1012
    registry = _registry(server)
    registry.drain_code = code  # handshakes still arriving on keep-alive connections
    sessions = sorted(registry.sessions, key=id)
    left = lifecycle.time_left()
    window = server.options.ws_drain_time
    if left is not None:
        window = max(0.0, min(window, left - _CLOSE_TIMEOUT))  # the handshakes fit in the timeout
    if sessions:
        log.info("closing %d WebSocket(s) with %d over %gs", len(sessions), code, window)
    start = server.loop.time()
    for index, session in enumerate(sessions):
        delay = start + window * index / len(sessions) - server.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        session.close(code)
