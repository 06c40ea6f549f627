"""A drain-aware HTTP/1.1 server for ASGI 3 applications (HTTP and lifespan), on asyncio.

    upgrader = Upgrader(pidfile="app.pid")
    server = ASGIServer(app, upgrader, ["web=:8000"])
    sys.exit(server.serve())    # lifespan startup, ready(), serve, drain, lifespan shutdown

Lifespan startup completes *before* ``ready()``: a generation whose startup fails exits with
status 3 and, as a successor, is rolled back by its predecessor. Each connection is an asyncio
Protocol (not streams) with the sans-IO parser of ``graceful.http11``; request bodies are
flow-controlled (reading pauses while the application has not taken what is buffered) and so
are responses (``send`` waits while the transport's buffer is full).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import unquote_to_bytes

from . import heartbeat, http11
from ._options import OUT_OF_RESOURCES, AcceptPause, ServerOptions, access_log_line, unsent_bytes
from .asyncio_adapter import AsyncioDrain, linger_close
from .drain import accept_backlog
from .http import asgi_websocket
from .http.forwarded import Origin, resolve, split_root_path
from .http.preamble import Preamble, PreambleError, client_used_tls
from .http.proxy_protocol import ProxyHeader, effective_peer
from .http11 import NEED_DATA, Body, EndOfMessage, HTTPError, Request, RequestParser
from .tls import asgi_extension, client_certificate
from .upgrader import Upgrader

__all__ = ["ASGIServer", "LIFESPAN_FAILED"]

log = logging.getLogger("graceful")

LIFESPAN_FAILED = 3  # exit status when the application's lifespan startup fails
_HIGH_WATER = 1 << 16  # request body bytes buffered before reading pauses
_LINGER = 1.0
_MAX_DISCARD = 1 << 20  # unread request body we read off to keep a connection alive
_SWEEP = 0.25  # how often timeouts are checked
_ASGI = {"version": "3.0", "spec_version": "2.3"}

Scope = Dict[str, Any]
Message = Dict[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
               Awaitable[None]]


class ASGIServer:
    """Serve an ASGI ``app`` on the upgrader's listeners, with lifespan and a drain."""

    def __init__(self, app: App, upgrader: Upgrader, binds: Sequence[str], *,
                 options: Optional[ServerOptions] = None, lifespan: str = "auto",
                 **listen_options: Any) -> None:
        if lifespan not in ("auto", "on", "off"):
            raise ValueError(f"lifespan={lifespan!r}: choose auto, on or off")
        self.app = app
        self.upgrader = upgrader
        self.options = options or ServerOptions()
        self.lifespan_mode = lifespan
        self.listeners = [upgrader.listen(bind, **listen_options) for bind in binds]
        self.drain = AsyncioDrain(upgrader)
        self.state: Dict[str, Any] = {}  # lifespan state, copied into each request's scope
        self.protocols: "set[_HttpProtocol]" = set()
        self.loop: Any = None

    def serve(self) -> int:
        """Run the whole lifecycle in a new event loop; returns the exit status."""
        return asyncio.run(self.serve_async())

    async def serve_async(self) -> int:
        lifespan = _Lifespan(self.app, self.state, self.lifespan_mode)
        if not await lifespan.startup():
            self.upgrader.close()
            return LIFESPAN_FAILED
        self.loop = asyncio.get_running_loop()
        accept_pause = AcceptPause()  # one for all listeners: they share the fd limit
        servers: List[_Acceptor] = []
        for listener in self.listeners:
            servers.append(_Acceptor(self.loop, listener, lambda: _HttpProtocol(self),
                                     self.upgrader, accept_pause, servers, self.options))
        for server in servers:
            server.start()
        sweeper = self.loop.create_task(self._sweep())
        websockets = self.loop.create_task(asgi_websocket.close_on_drain(self))

        async def after_drain() -> None:
            sweeper.cancel()
            websockets.cancel()
            await lifespan.shutdown()

        await self.drain.serve(*servers, after_drain=after_drain)  # type: ignore[arg-type]
        return 0

    async def _sweep(self) -> None:
        """Time out slow request heads and idle keep-alive connections (one timer for all)."""
        while True:
            heartbeat.beat()  # from the event loop: a blocked loop goes silent (--timeout)
            await asyncio.sleep(_SWEEP)
            now = self.loop.time()
            for protocol in list(self.protocols):
                protocol.check_timeouts(now)


class _Acceptor:
    """Accepts the connections of one listener, in place of asyncio's own accept loop.

    asyncio meets EMFILE by logging a traceback and scheduling a retry for every accept left in
    its batch, and its retry timer may start accepting again after a drain stopped it. This one
    pauses all listeners (``AcceptPause``) and resumes only while the generation accepts.

    It is what ``AsyncioDrain`` expects of an ``asyncio.Server``: ``sockets``, ``close()``, and
    the two names the drain reads, ``_protocol_factory`` (to serve what is still queued) and
    ``_active_count`` (connections accepted whose transport is not built yet).

    Behind a PROXY-protocol load balancer or with TLS, each connection first goes through its
    preamble (``graceful.http.preamble``, under the header timeout) and then gets a TLS
    transport; the drain cannot do that, so the acceptor serves its own queue on close.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, listener: socket.socket,
                 factory: Callable[[], asyncio.Protocol], upgrader: Upgrader,
                 pause: AcceptPause, siblings: "List[_Acceptor]",
                 options: Optional[ServerOptions] = None) -> None:
        self.loop = loop
        self.listener = listener
        self.lifecycle = upgrader.lifecycle
        self.pause = pause
        self.options = options or ServerOptions()
        self._edge = self.options.proxy_protocol or self.options.ssl_context is not None
        self._factory = factory
        self._protocol_factory = None if self._edge else factory
        self._active_count = 0
        self._closed = False
        listener.setblocking(False)  # it may already be: O_NONBLOCK is shared, never cleared
        self._siblings = siblings  # the acceptors of the other listeners, paused together

    @property
    def sockets(self) -> List[socket.socket]:
        return [] if self._closed else [self.listener]

    def start(self) -> None:
        self.loop.add_reader(self.listener.fileno(), self._accept)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self.listener.fileno())
        if self._edge and self.lifecycle.last_holder:
            for sock, _ in accept_backlog(self.listener):  # else the close would reset them
                self._spawn(sock)
        self.listener.close()  # our fd only: a successor holds its own

    def _accept(self) -> None:
        for _ in range(64):  # bounded, so one busy listener cannot starve the loop
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return  # the other generation took it, or the queue is empty
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self._pause_all(exc)
                else:
                    log.warning("accept failed: %s", exc)
                return
            self._spawn(sock)

    def _spawn(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._active_count += 1
        self.loop.create_task(self._build(sock))

    async def _build(self, sock: socket.socket) -> None:
        options = self.options
        try:
            protocol = self._factory()
            if self._edge:
                header = await self._preamble(sock)
                if header is False:
                    return
                protocol.proxy_header = header  # type: ignore[attr-defined]
            context = options.ssl_context
            await self.loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=context,
                ssl_handshake_timeout=(options.header_timeout or None) if context else None)
        except (ssl.SSLError, ConnectionError, asyncio.TimeoutError) as exc:
            log.info("TLS handshake failed: %s", exc or type(exc).__name__)
            sock.close()
        except Exception as exc:
            log.warning("could not set up an accepted connection: %s", exc)
            sock.close()
        finally:
            self._active_count -= 1

    async def _preamble(self, sock: socket.socket) -> Any:
        """The PROXY header (None if not asked for) once the preamble is read; False if the
        connection was closed instead."""
        options = self.options
        unix = sock.family == socket.AF_UNIX
        try:
            peer = None if unix else sock.getpeername()
        except OSError:  # the client is gone already
            sock.close()
            return False
        who = "a Unix socket client" if unix else f"{peer[0]}:{peer[1]}"
        if options.proxy_protocol and not options.proxy_trust.trusts(None if unix else peer[0]):
            log.info("closed a connection from %s: not allowed to send a PROXY header "
                     "(--proxy-allow-from)", who)
            await _close_raw(self.loop, sock)
            return False
        preamble = Preamble(options.proxy_protocol, options.ssl_context is not None)
        try:
            # Usually the client's first bytes are in by the accept: no task and timer for it.
            if not preamble.step(sock):
                await asyncio.wait_for(_read_preamble(self.loop, sock, preamble),
                                       options.header_timeout)
        except asyncio.TimeoutError:
            log.info("closed a connection from %s: no %s in time", who,
                     "PROXY header" if options.proxy_protocol else "TLS handshake")
            sock.close()
            return False
        except PreambleError as exc:
            log.info("closed a connection from %s: %s", who, exc)
            await _close_raw(self.loop, sock, exc.response)
            return False
        except OSError:
            sock.close()
            return False
        return preamble.header

    def _pause_all(self, exc: OSError) -> None:
        """Out of fds: stop watching every listener for a moment (each would fail the same)."""
        if self.pause.until is None:
            for acceptor in self._siblings:
                if not acceptor._closed:
                    acceptor.loop.remove_reader(acceptor.listener.fileno())
            self.loop.call_later(self.pause.start(exc), self._resume_all)
        else:
            self.pause.start(exc)

    def _resume_all(self) -> None:
        self.pause.end()
        if not self.lifecycle.accepting:
            return  # the drain stopped accepting meanwhile
        for acceptor in self._siblings:
            if not acceptor._closed:
                acceptor.start()


async def _read_preamble(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                         preamble: Preamble) -> None:
    fd = sock.fileno()
    while not preamble.step(sock):
        readable = loop.create_future()
        loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            await readable
        finally:
            loop.remove_reader(fd)


async def _close_raw(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                     response: bytes = b"") -> None:
    """Send ``response``, half-close, read off what the client still sends, close: no RST."""
    try:
        if response:
            sock.send(response)
        sock.shutdown(socket.SHUT_WR)
        deadline = loop.time() + _LINGER
        received = 0
        while received < _MAX_DISCARD and loop.time() < deadline:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), deadline - loop.time())
            if not data:
                break
            received += len(data)
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        sock.close()


class _Lifespan:
    """Runs the application's lifespan protocol beside the server."""

    def __init__(self, app: App, state: Dict[str, Any], mode: str) -> None:
        self.app = app
        self.state = state
        self.mode = mode
        self.task: Optional["asyncio.Task[None]"] = None
        self.inbox: "asyncio.Queue[Message]" = asyncio.Queue()
        self.replies: "asyncio.Queue[Message]" = asyncio.Queue()
        self.supported = False
        self.took_startup = False  # the app received lifespan.startup

    async def startup(self) -> bool:
        if self.mode == "off":
            return True
        scope = {"type": "lifespan", "asgi": dict(_ASGI), "state": self.state}
        self.task = asyncio.ensure_future(self._run(scope))
        await self.inbox.put({"type": "lifespan.startup"})
        reply = await self._reply()
        if reply is None and self.took_startup:
            # It read lifespan.startup, then raised: it speaks lifespan and its startup failed.
            log.error("lifespan startup failed: the application raised (see above)")
            return False
        if reply is None:
            if self.mode == "on":
                log.error("lifespan startup failed: the application does not support lifespan")
                return False
            log.info("the application does not support lifespan; going on without it")
            return True
        self.supported = True
        if reply["type"] == "lifespan.startup.complete":
            return True
        log.error("lifespan startup failed: %s", reply.get("message", ""))
        return False

    async def shutdown(self) -> None:
        if not self.supported or self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        reply = await self._reply()
        if reply is not None and reply["type"] == "lifespan.shutdown.failed":
            log.error("lifespan shutdown failed: %s", reply.get("message", ""))

    async def _reply(self) -> Optional[Message]:
        """The application's next lifespan message; None if it returned or raised instead."""
        assert self.task is not None
        getter = asyncio.ensure_future(self.replies.get())
        await asyncio.wait([getter, self.task], return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        return None

    async def _receive(self) -> Message:
        message = await self.inbox.get()
        if message["type"] == "lifespan.startup":
            self.took_startup = True
        return message

    async def _run(self, scope: Scope) -> None:
        try:
            await self.app(scope, self._receive, self.replies.put)
        except Exception as exc:
            if self.supported or self.took_startup:
                log.exception("lifespan error")
            else:
                log.debug("lifespan not supported by the application: %r", exc)


class _HttpProtocol(asyncio.Protocol):
    """One client connection: parse requests, run one ASGI cycle at a time."""

    def __init__(self, server: ASGIServer) -> None:
        self.server = server
        self.drain = server.drain
        # Set once the generation drains (drain.draining, without two property calls per
        # response): responses then say Connection: close.
        self.stopping = server.drain.lifecycle.stop_event
        self.options = server.options
        self.loop = server.loop
        self.parser = RequestParser(self.options.limits)
        self.transport: Any = None
        self.cycle: Optional[_Cycle] = None
        self.closing = False
        self.idle_since: Optional[float] = None  # loop time: waiting for the next request
        self.head_since: Optional[float] = None  # loop time: part of a request head is in
        self.write_paused = False
        self.drain_waiters: List["asyncio.Future[None]"] = []
        self.client: Optional[Tuple[str, int]] = None
        self.server_addr: Optional[Tuple[str, int]] = None
        self.proxy_header: Optional[ProxyHeader] = None  # set by the acceptor, if one was read
        self.tls: Optional[Dict[str, Any]] = None  # the ASGI tls extension, over TLS
        self.scheme = self.options.url_scheme  # https too if a PROXY header says TLS
        self.written = 0  # bytes given to the transport
        self.delivered = 0  # of those, bytes the client has taken (acknowledged)
        self.delivered_at = 0.0  # loop time the client last took some
        self.plain_origin: Optional[Origin] = None  # for requests without forwarded headers
        self.tracked: Any = None  # the drain's record of this connection

    # -- connection events ----------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.client = _host_port(transport.get_extra_info("peername"))
        self.server_addr = _host_port(transport.get_extra_info("sockname"))
        if self.proxy_header is not None:
            self.client = effective_peer(self.proxy_header, self.client)
            if client_used_tls(self.proxy_header):
                self.scheme = "https"
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.tls = asgi_extension(client_certificate(sslobj))
        self.tracked = self.drain._track(transport)  # the drain's record: idle or busy
        self.server.protocols.add(self)
        # Not idle for the drain yet: until its first request arrives, a connection is one whose
        # client is about to send (the keep-alive timeout still bounds it).
        self.idle_since = self.loop.time()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closing = True
        self.drain.untrack(self.transport)
        self.server.protocols.discard(self)
        if self.cycle is not None:
            self.cycle.disconnected()
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # read off while we close: keeps the close free of an RST
        self.parser.feed(data)
        if self.cycle is None:
            self.idle_since = None
            self.tracked.idle_since = None  # busy, for the drain
        self._advance()

    def eof_received(self) -> Optional[bool]:
        if self.cycle is not None:
            self.cycle.disconnected()
        return None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.drain_waiters.clear()

    # -- parsing --------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Feed parser events to the current cycle, or start the next one."""
        parser = self.parser
        while not self.closing:
            try:
                event = parser.next_event()
            except HTTPError as exc:
                self._refuse(exc)
                return
            if event is NEED_DATA:
                if self.cycle is None:
                    if parser.buffered and self.head_since is None:
                        self.head_since = self.loop.time()
                elif self.cycle.buffered > _HIGH_WATER:
                    self.transport.pause_reading()
                return
            if isinstance(event, Request):
                self.head_since = None
                cycle = self.cycle = _Cycle(self, event)
                if not event.has_body:
                    # Its EndOfMessage, at once: the cycle knows the body is complete.
                    parser.next_event()
                    cycle.start()
                    return  # the next request waits until this response is done
                cycle.start()
            elif isinstance(event, Body):
                self.cycle.body(event.data)  # type: ignore[union-attr]
            elif isinstance(event, EndOfMessage):
                self.cycle.end_of_body()  # type: ignore[union-attr]
                return  # the next request waits until this response is done

    def _refuse(self, exc: HTTPError) -> None:
        log.info("refused a request from %s: %s", self.client, exc)
        if self.cycle is None or not self.cycle.response_started:
            self.write(http11.error_response(exc.status))
        self.close_gently()

    def cycle_done(self, keep_alive: bool) -> None:
        """The response is complete: next request, idle, or close."""
        cycle = self.cycle
        if keep_alive and not self.closing and cycle is not None and not cycle.body_complete:
            cycle.read_off()  # the head promised keep-alive: its end_of_body comes back here
            return
        self.cycle = None
        if not keep_alive or self.closing or cycle is None or not cycle.body_complete:
            self.close_gently()  # the close reads off what the client still sends
            return
        self.parser.start_next()
        if cycle.paused_reading:
            self.transport.resume_reading()
        if self.parser.buffered:
            self._advance()
        if self.cycle is None and not self.closing:
            self._idle()

    def origin(self, request: Request) -> Origin:
        """Who ``request`` is from: the connection's own origin unless it carries forwarded
        headers (that one is worked out once per connection)."""
        if request.forwarded:
            return resolve(self.client, request.headers, scheme=self.scheme,
                           server=self.server_addr, trust=self.options.forwarded_trust)
        if self.plain_origin is None:
            self.plain_origin = resolve(self.client, [], scheme=self.scheme,
                                        server=self.server_addr,
                                        trust=self.options.forwarded_trust)
        return self.plain_origin

    def _idle(self) -> None:
        self.idle_since = self.loop.time()
        tracked = self.tracked
        if tracked.idle_since is None:  # idle for the drain (its clock is time.monotonic)
            tracked.idle_since = time.monotonic()

    def write(self, data: bytes) -> None:
        if self.delivered == self.written:
            self.delivered_at = self.loop.time()  # the no-progress clock starts now
        self.written += len(data)
        self.transport.write(data)

    def check_timeouts(self, now: float) -> None:
        """Called by the server's sweep: stalled sends, slow-loris heads and idle keep-alive
        connections."""
        if self._send_stalled(now):
            return
        cycle = self.cycle
        if cycle is not None and cycle.reading_off and not self.closing:
            if now - cycle.body_at > self.options.body_timeout:
                self.close_gently()  # the client stopped sending the body we read off
            return
        if self.closing or cycle is not None:
            return
        if self.delivered != self.written:
            self.idle_since = now  # still delivering the last response: not idle yet
            return
        if self.head_since is not None:
            if now - self.head_since > self.options.header_timeout:
                self.write(http11.error_response(408))
                self.close_gently()
        elif self.idle_since is not None and now - self.idle_since > self.options.keepalive_timeout:
            self.close_gently()

    def _send_stalled(self, now: float) -> bool:
        """Abort a connection whose client took nothing for ``body_timeout`` seconds.

        The timeout bounds a wait for progress, never the whole delivery: a slow client that
        keeps reading gets a response of any size. Progress is what the client acknowledged
        (the kernel's send queue counts too), measured only while something is undelivered.
        """
        if self.delivered == self.written:
            return False
        sock = self.transport.get_extra_info("socket")
        unsent = self.transport.get_write_buffer_size()
        if sock is not None:
            unsent += unsent_bytes(sock.fileno())
        delivered = self.written - unsent
        if delivered != self.delivered:
            self.delivered = delivered
            self.delivered_at = now
            return False
        if now - self.delivered_at <= self.options.body_timeout:
            return False
        log.info("closing the connection of %s: it took no response data for %gs",
                 self.client, self.options.body_timeout)
        self.closing = True
        self.transport.abort()
        return True

    def close_gently(self) -> None:
        """Half-close, give the client a moment to finish, then close (no RST)."""
        if self.closing:
            return
        self.closing = True
        self.transport.resume_reading()
        linger_close(self.loop, self.transport, _LINGER)

    async def wait_writable(self) -> None:
        if self.write_paused and not self.closing:
            waiter = self.loop.create_future()
            self.drain_waiters.append(waiter)
            await waiter


class _Cycle:
    """One request/response exchange with the application."""

    __slots__ = ("protocol", "request", "chunks", "buffered", "paused_reading", "body_complete",
                 "received", "body_at", "reading_off", "final_sent", "gone", "waiters",
                 "continue_pending", "response_started", "response_complete", "headers", "head",
                 "status", "no_body", "chunked", "length", "sent", "keep_alive", "started",
                 "origin")

    def __init__(self, protocol: _HttpProtocol, request: Request) -> None:
        self.protocol = protocol
        self.request = request
        self.chunks: List[bytes] = []
        self.buffered = 0
        self.paused_reading = False
        self.body_complete = not request.has_body
        self.received = 0  # body bytes from the client so far
        self.body_at = 0.0  # loop time the last piece of body arrived (or read_off began)
        self.reading_off = False  # the response is done; the rest of the body is dropped
        self.final_sent = False  # the last http.request message was delivered
        self.gone = False  # the client disconnected, or the response is complete
        # Every pending receive() waits here: an app may call it from several tasks at once
        # (Starlette's listen_for_disconnect beside the app's own), and each must be woken.
        self.waiters: List["asyncio.Future[None]"] = []
        self.continue_pending = request.expect_continue
        self.response_started = False
        self.response_complete = False
        self.headers: List[Tuple[bytes, bytes]] = []
        self.head: Optional[bytes] = None  # built with the first body, to send both at once
        self.status = 0
        self.no_body = False  # HEAD, 1xx, 204, 304: no body whatever the headers say
        self.chunked = False
        self.length: Optional[int] = None
        self.sent = 0
        self.keep_alive = request.keep_alive
        self.started = time.time() if protocol.options.access_log else 0.0
        self.origin: Optional[Origin] = None  # who the request is from, behind any proxy

    def start(self) -> None:
        request = self.request
        ready_path = self.protocol.options.ready_path
        loop = self.protocol.loop
        # Answered from the loop, not from inside the parser's event loop in _advance.
        if ready_path is not None and request.path == ready_path:
            loop.call_soon(self._answer_readiness)
        elif request.upgrade == b"websocket":  # a WebSocket handshake
            loop.call_soon(asgi_websocket.upgrade, self)
        else:
            loop.create_task(self._run())

    # -- the body, from the protocol ------------------------------------------------------------

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def body(self, data: bytes) -> None:
        self.received += len(data)
        self.body_at = self.protocol.loop.time()
        if self.reading_off:
            return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _HIGH_WATER:
            self.paused_reading = True
        self._wake()

    def end_of_body(self) -> None:
        self.body_complete = True
        self._wake()
        if self.reading_off:
            self.protocol.cycle_done(True)

    def can_read_off(self) -> bool:
        """Whether what the app has not read of the body can be read off after the response
        (its size is known and small, and the client is not waiting for 100 Continue)."""
        length = self.request.content_length
        return self.body_complete or (not self.continue_pending and length is not None
                                      and length - self.received <= _MAX_DISCARD)

    def read_off(self) -> None:
        """Drop the rest of the request body as it arrives, then go on to the next request."""
        self.reading_off = True
        self.chunks = []
        self.buffered = 0
        self.body_at = self.protocol.loop.time()
        if self.paused_reading:
            self.paused_reading = False
            self.protocol.transport.resume_reading()

    def disconnected(self) -> None:
        self.gone = True
        self._wake()

    # -- the ASGI side --------------------------------------------------------------------------

    def scope(self) -> Scope:
        request = self.request
        protocol = self.protocol
        options = protocol.options
        # The WebSocket scope is made from this one and maps the scheme to ws/wss itself.
        origin = self.origin = protocol.origin(request)
        raw_path = request.path
        # Invalid UTF-8 becomes U+FFFD: a surrogate escape is a str no app can encode.
        path = (unquote_to_bytes(raw_path) if b"%" in raw_path else raw_path).decode(
            "utf-8", "replace")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},  # the app's own, per request
            "http_version": "1.1" if request.version == b"1.1" else "1.0",
            "method": _METHODS.get(request.method) or request.method.decode("latin-1"),
            "scheme": origin.scheme,
            "path": path,  # the root path included, per the ASGI spec
            "raw_path": request.path,
            "query_string": request.query,
            "root_path": split_root_path(path, options.root_path)[0] if options.root_path else "",
            "headers": request.headers,
            "client": origin.client,
            "server": origin.server,
            "state": protocol.server.state.copy(),
        }
        if protocol.tls is not None:
            scope["extensions"] = {"tls": dict(protocol.tls)}
        return scope

    async def _run(self) -> None:
        try:
            await self.protocol.server.app(self.scope(), self.receive, self.send)
        except Exception:
            log.exception("application error for %s %s", self.request.method.decode(),
                          self.request.target.decode("latin-1"))
            if not self.response_started:
                self._simple(500, b"Internal Server Error\n")
            else:
                self.keep_alive = False
                self._finish()
            return
        if not self.response_started:
            log.error("the application returned without starting a response")
            self._simple(500, b"Internal Server Error\n")
        elif not self.response_complete:
            self.keep_alive = False
            self._finish()

    async def _wait(self) -> None:
        waiter = self.protocol.loop.create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self.waiters:  # cancelled while waiting
                self.waiters.remove(waiter)

    async def receive(self) -> Message:
        if self.continue_pending and not self.body_complete:
            self.continue_pending = False
            self.protocol.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self.chunks and not self.body_complete and not self.gone:
            await self._wait()
        if self.chunks or (self.body_complete and not self.final_sent and not self.gone):
            data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
            self.chunks = []
            self.buffered = 0
            if self.paused_reading and not self.protocol.closing:
                self.paused_reading = False
                self.protocol.transport.resume_reading()
            more = not self.body_complete
            if not more:
                self.final_sent = True
            return {"type": "http.request", "body": data, "more_body": more}
        # The body was delivered (or the client left): wait for the disconnect.
        while not self.gone:
            await self._wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.response_started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.response_complete:
                return
            more = message.get("more_body", False)
            self._body(message.get("body", b""), more)
            if more:
                await self.protocol.wait_writable()
        elif kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("http.response.start sent twice")
            self._start(message)
        else:
            raise RuntimeError(f"unexpected ASGI message type {kind!r} for an HTTP scope")

    def _start(self, message: Message) -> None:
        headers: List[Tuple[bytes, bytes]] = []
        for field in message.get("headers", ()):
            try:
                lower = _checked_fields.get(field)  # type: ignore[call-overload]
            except TypeError:  # a list, or a bytearray inside: not hashable, checked below
                lower = None
            if lower is None:
                lower = _checked_field(field)
            elif lower is _PLAIN:
                headers.append(field)  # seen before: a valid name and value, not framing
                continue
            if lower == b"content-length":
                self.length = int(field[1])  # checked to be digits; sent once, by the head
            elif lower not in _HOP_BY_HOP:  # the server decides framing and persistence
                headers.append((field[0], field[1]))
        self.status = int(message["status"])
        self.no_body = http11.no_body_expected(self.request.method, self.status)
        self.headers = headers
        self.response_started = True

    def _build_head(self, first_body: Optional[int]) -> bytes:
        if not self.body_complete and not self.can_read_off():
            self.keep_alive = False  # say so in the head: never close a promised keep-alive
        head, self.length, self.chunked, self.keep_alive = http11.frame_response(
            self.request, self.status, http11.status_line(self.status), self.headers,
            self.length, first_body, self.keep_alive, self.protocol.stopping.is_set())
        return head

    def _body(self, data: bytes, more: bool) -> None:
        out = b""
        if not self.sent and self.head is None:
            self.head = self._build_head(None if more else len(data))
            out = self.head
        if self.no_body:
            data = b""
        elif self.length is not None and self.sent + len(data) > self.length:
            data = data[:self.length - self.sent]
            self.keep_alive = False
        self.sent += len(data)
        if self.chunked:
            if data:
                out += b"%x\r\n%s\r\n" % (len(data), data)
            if not more:
                out += b"0\r\n\r\n"
        else:
            out += data
        if out and not self.protocol.closing:
            self.protocol.write(out)
        if not more:
            self._finish()

    def _finish(self) -> None:
        if self.response_complete:
            return
        if self.head is None:
            self._body(b"", more=False)  # nothing was sent yet: a complete empty response
            return
        self.response_complete = True
        self.gone = True  # a receive() after the response reports the disconnect
        if self.waiters:
            self._wake()
        if self.protocol.options.access_log is not None:
            self._log()
        keep = self.keep_alive and (self.length is None or self.sent == self.length or
                                    self.no_body)
        self.protocol.cycle_done(keep)

    def _simple(self, status: int, body: bytes, close: bool = False) -> None:
        self.response_started = True
        self.status = status
        self.no_body = http11.no_body_expected(self.request.method, status)
        self.headers = [(b"content-type", b"text/plain; charset=utf-8")]
        self.head = None
        if close:
            self.keep_alive = False
        self._body(body, more=False)

    def _answer_readiness(self) -> None:
        ready = self.protocol.drain.lifecycle.ready_for_traffic
        self._simple(200 if ready else 503, b"ready\n" if ready else b"not ready\n")

    def _log(self) -> None:
        access_log = self.protocol.options.access_log
        if access_log is None:
            return
        client = self.origin.client if self.origin is not None else self.protocol.client
        remote = client[0] if client else "-"
        access_log(access_log_line(remote, self.started, self.request, self.status, self.sent))


_METHODS = {method.encode(): method for method in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")}  # bytes -> str, shared
_HOP_BY_HOP = frozenset((b"connection", b"transfer-encoding", b"keep-alive"))
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
_valid_names: Dict[bytes, bytes] = {}
_checked_fields: Dict[Tuple[bytes, bytes], bytes] = {}  # (name, value) -> lower-case name


_PLAIN = b""  # in _checked_fields: a field sent as it is (neither framing nor hop-by-hop)


def _checked_field(field: Any) -> bytes:
    """The lower-cased name of a response header (name, value), once both are checked;
    remembered (``_PLAIN`` for most) when the field is a tuple of bytes: apps send the same
    few fields again and again."""
    name, value = field
    lower = _checked_name(name)
    if _BAD_VALUE(value):
        raise RuntimeError(f"invalid response header value {value!r} for {name!r}")
    if lower == b"content-length" and not value.strip().isdigit():
        raise RuntimeError(f"invalid content-length {value!r}")
    if len(_checked_fields) < 1024 and type(field) is tuple and type(value) is bytes:
        plain = lower != b"content-length" and lower not in _HOP_BY_HOP
        _checked_fields[field] = _PLAIN if plain else lower
    return lower


def _checked_name(name: bytes) -> bytes:
    """The lower-cased header name, if it is a valid token (remembered: names repeat)."""
    if type(name) is not bytes:
        name = bytes(name)
    lower = _valid_names.get(name)
    if lower is None:
        if not http11.is_valid_header(name, b""):
            raise RuntimeError(f"invalid response header name {name!r}")
        lower = name.lower()
        if len(_valid_names) < 1024:
            _valid_names[name] = lower
    return lower


def _host_port(address: Any) -> Optional[Tuple[str, int]]:
    if isinstance(address, tuple) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return None
