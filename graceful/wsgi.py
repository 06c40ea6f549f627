"""A drain-aware threaded HTTP/1.1 server for WSGI applications (PEP 3333).

Between requests every connection waits in one epoll set that all the worker threads wait on;
the kernel hands each connection that becomes readable to exactly one idle worker, which reads
the request, runs the application, answers, and puts the connection back itself. A connection
costs a thread only while a request is in progress, so thousands of idle keep-alive clients
cost almost nothing, and a request costs no hand-off between threads (under the GIL every
hand-off is a wake-up and a wait for the lock). One more thread runs a selector loop that owns
the listeners and the clock: it accepts, expires idle and slow connections, and drains.

    upgrader = Upgrader(pidfile="app.pid")
    server = WSGIServer(app, upgrader, ["web=:8000"])
    server.serve()          # ready(), serve until upgraded or stopped, drain, return
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import select
import selectors
import socket
import ssl
import struct
import sys
import termios
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import unquote_to_bytes

from . import heartbeat, http11
from .drain import accept_backlog, close_gently
from .http.forwarded import Origin, resolve, split_root_path
from .http.preamble import Preamble, PreambleError, client_used_tls
from .http.proxy_protocol import effective_peer
from .http11 import NEED_DATA, Body, EndOfMessage, HTTPError, Limits, Request, RequestParser
from .tls import client_certificate, wsgi_environ
from .upgrader import Upgrader
from ._options import OUT_OF_RESOURCES, AcceptPause, ServerOptions, access_log_line, unsent_bytes

__all__ = ["WSGIServer", "FileWrapper", "ServerOptions"]

log = logging.getLogger("graceful")

_RECV = 65536
_TICK = 0.25  # how often the loop checks timeouts while nothing happens
_MAX_DISCARD = 1 << 20  # unread request body we read off to keep a connection alive
_LINGER = 1.0  # a connection we close waits this long for the client's last bytes
_MAX_LINGER_READ = 64 << 20  # and reads off at most this much of them (an unread upload)


class _Conn:
    """A client connection and its parser."""

    __slots__ = ("sock", "parser", "peer", "server_addr", "unix", "since", "head_started",
                 "lingering", "unsent", "served", "preamble", "handshaking", "tls", "scheme",
                 "timeout", "plain_origin")

    def __init__(self, sock: socket.socket, peer: Any, server_addr: Tuple[str, str], unix: bool,
                 limits: Limits, timeout: float) -> None:
        self.sock = sock  # non-blocking all its life: a worker waits itself (_wait_until)
        self.parser = RequestParser(limits)
        self.peer = peer
        self.server_addr = server_addr
        self.unix = unix
        self.since = time.monotonic()  # last activity
        self.head_started: Optional[float] = None  # first byte of a request head not yet whole
        self.lingering: Optional[float] = None  # closing: deadline for the client's last bytes
        self.unsent = 0  # the kernel still held this much of the last response at the last look
        self.served = False  # a request came on it: between requests it is idle keep-alive
        self.preamble: Optional[Preamble] = None  # PROXY header / TLS sniff not read yet
        self.handshaking = False  # the TLS handshake runs (a step per readiness, no waiting)
        self.tls: Optional[Dict[str, str]] = None  # environ keys of the TLS connection
        self.scheme: Optional[str] = None  # https if a PROXY header says the client used TLS
        self.timeout = timeout  # a worker's longest wait for the client to make progress
        self.plain_origin: Optional[Origin] = None  # for its requests without forwarded headers

    def origin(self, request: Request, options: ServerOptions) -> Origin:
        """Who ``request`` is from: the connection's own origin unless it carries forwarded
        headers (worked out once per connection; its Host is the request's own field)."""
        if self.plain_origin is not None and not request.forwarded:
            return self.plain_origin
        port = self.server_addr[1]
        origin = resolve(None if self.unix else self.peer,
                         request.headers if request.forwarded else [],
                         scheme=self.scheme or options.url_scheme,
                         server=(self.server_addr[0], int(port) if port else None),
                         trust=options.forwarded_trust)
        if not request.forwarded:
            self.plain_origin = origin
        return origin


class _Parked:
    """The connections between requests, in one epoll set that every worker waits on.

    Each is armed ``EPOLLONESHOT``: the kernel gives its readiness to one waiting worker and
    stops watching it, so no two threads ever hold one connection. A parked connection belongs
    to nobody; whoever takes it (a worker woken for it, or the loop expiring it) owns it until
    it parks it again or closes it. A worker may be woken for a connection that is no longer
    parked (the loop took it first, or closed it and its fd number came back): it finds
    nothing to take, or takes a connection with nothing to read, which it parks again.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._conns: Dict[int, _Conn] = {}  # fd → parked connection
        self._lock = threading.Lock()  # a take is a compare-and-remove
        self._stop_r, self._stop_w = os.pipe()
        self._epoll.register(self._stop_r, select.EPOLLIN)  # level-triggered: all workers see it

    def park(self, conn: _Conn, writable: bool = False) -> bool:
        """Watch ``conn`` until it is readable (or writable); False if the set is closed."""
        fd = conn.sock.fileno()
        events = (select.EPOLLOUT if writable else select.EPOLLIN) | select.EPOLLONESHOT
        self._conns[fd] = conn  # before arming it: a worker may be woken at once
        try:
            try:
                self._epoll.modify(fd, events)
            except FileNotFoundError:  # parked for the first time
                self._epoll.register(fd, events)
        except (OSError, ValueError):  # the server is closing (or the socket broke)
            self.take(fd, conn)
            return False
        return True

    def next_ready(self) -> Optional[_Conn]:
        """Wait for a parked connection to be ready and take it; None when the workers stop."""
        while True:
            try:
                events = self._epoll.poll(-1, 1)  # one: the rest stay for other idle workers
            except ValueError:
                return None  # closed
            for fd, _ in events:
                if fd == self._stop_r:
                    os.write(self._stop_w, b"x")  # wake the next worker asleep in poll()
                    return None
                with self._lock:
                    conn = self._conns.pop(fd, None)
                if conn is not None:
                    return conn

    def take(self, fd: int, conn: _Conn) -> bool:
        """Take ``conn`` if it is still parked under ``fd``."""
        with self._lock:
            if self._conns.get(fd) is not conn:
                return False
            del self._conns[fd]
            return True

    def items(self) -> List[Tuple[int, _Conn]]:
        return list(self._conns.items())

    def __len__(self) -> int:
        return len(self._conns)

    def stop_workers(self) -> None:
        os.write(self._stop_w, b"x")

    def close(self) -> None:
        """By the last worker out: nobody waits on the set any more."""
        self._epoll.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


class WSGIServer:
    """Serve a WSGI ``app`` on the upgrader's listeners, with a drain at the end."""

    def __init__(self, app: Callable[..., Iterable[bytes]], upgrader: Upgrader,
                 binds: Sequence[str], *, threads: int = 8,
                 options: Optional[ServerOptions] = None, **listen_options: Any) -> None:
        if threads < 1:
            raise ValueError(f"threads={threads}: need at least 1 worker thread")
        self.app = app
        self.upgrader = upgrader
        self.lifecycle = upgrader.lifecycle
        self.options = options or ServerOptions()
        self.threads = threads
        self.listeners = [upgrader.listen(bind, **listen_options) for bind in binds]
        self._selector = selectors.DefaultSelector()  # the listeners and the wake-up pipe
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._parked = _Parked()
        self._open: Dict[int, _Conn] = {}  # id → every connection not closed yet
        self._next_expiry = 0.0
        self._closed = False
        self._accept_pause = AcceptPause()  # while set, the listeners are out of the selector
        self._lock = threading.Lock()
        self._workers: List[threading.Thread] = []
        self._workers_running = 0

    # -- the lifecycle --------------------------------------------------------------------------

    def serve(self) -> int:
        """Declare ready, serve until this generation must stop, drain; returns 0."""
        self.lifecycle.watch(lambda state: self._wake())
        for listener in self.listeners:
            self._selector.register(listener, selectors.EVENT_READ, listener)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._workers_running = self.threads
        for i in range(self.threads):
            worker = threading.Thread(target=self._worker, name=f"graceful-wsgi-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)
        try:
            if self.lifecycle.state == "starting":
                self.upgrader.ready()
            self._loop_until_stopped()
            self._stop_accepting()
            self._drain()
        finally:
            self._close_everything()
        return 0

    def _loop_until_stopped(self) -> None:
        while not self.lifecycle.stop_event.is_set():
            self._poll(_TICK)

    def _stop_accepting(self) -> None:
        paused = self._accept_pause.until is not None  # then the listeners are not registered
        self._accept_pause.end()
        for listener in self.listeners:
            if not paused:
                self._selector.unregister(listener)
            if self.lifecycle.last_holder:
                for sock, peer in accept_backlog(listener):
                    self._add_connection(listener, sock, peer)
            listener.close()  # our fd only: a successor holds its own
        self.listeners = []

    def _drain(self) -> None:
        lifecycle = self.lifecycle
        while self._open:  # workers close connections and wake the loop (_close)
            left = lifecycle.time_left()
            if left is not None and left <= 0:
                log.warning("drain deadline reached: closing %d connection(s)", len(self._open))
                return
            self._poll(_TICK if left is None else min(_TICK, left))

    def _close_everything(self) -> None:
        for fd, conn in self._parked.items():
            if self._parked.take(fd, conn):
                self._close(conn)
        for conn in list(self._open.values()):  # past the deadline: break the workers' I/O
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._parked.stop_workers()
        for listener in self.listeners:
            listener.close()
        self._selector.close()
        self._closed = True
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.upgrader.close()

    # -- the selector loop: listeners and the clock ---------------------------------------------

    def _poll(self, timeout: float) -> None:
        heartbeat.beat()  # from the loop itself: a blocked loop goes silent (master --timeout)
        for key, _ in self._selector.select(timeout):
            data = key.data
            if data is None:
                self._drain_wake_pipe()
            elif self.lifecycle.accepting:
                self._accept(data)
        if self._accept_pause.due() and self.lifecycle.accepting:
            self._accept_pause.end()
            for listener in self.listeners:
                self._selector.register(listener, selectors.EVENT_READ, listener)
        now = time.monotonic()
        if now >= self._next_expiry:  # not on every wake-up: this walks every idle connection
            self._next_expiry = now + _TICK / 2
            self._expire(now)

    def _wake(self) -> None:
        if self._closed:
            return  # the pipe is gone (and its fd number may be reused)
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):  # bounded, so one busy listener cannot starve the rest of the loop
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return  # the other generation took it, or the queue is empty
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self._pause_accepting(exc)
                else:
                    log.warning("accept failed: %s", exc)
                return
            self._add_connection(listener, sock, peer)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of fds: stop watching every listener for a moment (each would fail the same)."""
        if self._accept_pause.until is None:
            for listener in self.listeners:
                self._selector.unregister(listener)
        self._accept_pause.start(exc)

    def _add_connection(self, listener: socket.socket, sock: socket.socket, peer: Any) -> None:
        sock.setblocking(False)
        unix = sock.family == socket.AF_UNIX
        if not unix:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, peer, _server_address(listener), unix, self.options.limits,
                     self.options.body_timeout)
        self._open[id(conn)] = conn
        options = self.options
        if options.proxy_protocol and not options.proxy_trust.trusts(None if unix else peer[0]):
            log.info("closed a connection from %s: not allowed to send a PROXY header "
                     "(--proxy-allow-from)", _peer_text(conn))
            self._linger(conn)
            return
        if options.proxy_protocol or options.ssl_context is not None:
            conn.preamble = Preamble(options.proxy_protocol, options.ssl_context is not None)
            conn.head_started = conn.since  # the header timeout covers preamble and handshake
        self._park(conn)

    def _expire(self, now: float) -> None:
        lifecycle = self.lifecycle
        draining_since = lifecycle.drain_started if lifecycle.draining else None
        for fd, conn in self._parked.items():
            # Read unowned first (a cheap filter), then again once taken: a worker may have
            # served a request on it in between.
            if not self._overdue(conn, now, draining_since):
                continue
            if not self._parked.take(fd, conn):
                continue  # a worker has it now
            if not self._overdue(conn, now, draining_since) or not self._expire_one(conn, now):
                self._park(conn)

    def _overdue(self, conn: _Conn, now: float, draining_since: Optional[float]) -> bool:
        options = self.options
        if conn.lingering is not None:
            return now >= conn.lingering
        if conn.head_started is not None:
            return now - conn.head_started > options.header_timeout
        if now - conn.since > options.keepalive_timeout:
            return True
        # Idle between requests through the grace after the drain began. A connection whose
        # first request has not come yet is not idle: its client is about to send it (a slow
        # client can take longer than the grace), so it is served.
        return (conn.served and draining_since is not None
                and now - max(conn.since, draining_since) >= self.lifecycle.idle_grace)

    def _expire_one(self, conn: _Conn, now: float) -> bool:
        """Close an overdue connection we took; False if it is not idle after all."""
        if conn.lingering is not None:
            self._close(conn)
        elif _unread_bytes(conn.sock.fileno()):
            # What it sent waits for a worker (they were all busy): it is not idle, and
            # closing it now would lose a request the client already sent.
            return False
        elif conn.head_started is not None:
            if conn.preamble is not None or conn.handshaking:
                log.info("closed a connection from %s: no %s in time", _peer_text(conn),
                         "PROXY header" if conn.preamble is not None else "TLS handshake")
                self._close(conn)
            else:
                self._refuse(conn, HTTPError(408, "request head not received in time"))
        elif now - conn.since > self.options.keepalive_timeout and self._still_delivering(conn):
            return False
        else:
            self._linger(conn)
        return True

    @staticmethod
    def _still_delivering(conn: _Conn) -> bool:
        """Whether the client is still taking the last response from the kernel's queue:
        keep-alive idleness starts when it has it all (a client that took nothing since the
        last look is idle)."""
        unsent = unsent_bytes(conn.sock.fileno())
        progressed = 0 < unsent != conn.unsent
        conn.unsent = unsent
        if progressed:
            conn.since = time.monotonic()
        return progressed

    # -- connections, by whichever thread owns one ----------------------------------------------

    def _park(self, conn: _Conn, writable: bool = False) -> None:
        """Give the connection back to the epoll set until the client sends more."""
        if not self._parked.park(conn, writable):
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        conn.sock.close()  # which takes it out of the epoll set too
        self._closed_one(conn)

    def _closed_one(self, conn: _Conn) -> None:
        self._open.pop(id(conn), None)
        if self.lifecycle.draining:
            self._wake()  # the drain waits for the last one

    def _refuse(self, conn: _Conn, exc: HTTPError) -> None:
        log.info("refused a request from %s: %s", _peer_text(conn), exc)
        try:
            conn.sock.send(http11.error_response(exc.status))
        except OSError:
            pass
        self._linger(conn)

    def _linger(self, conn: _Conn) -> None:
        """Half-close and wait (parked) for the client's last bytes, then close."""
        _say_tls_goodbye(conn.sock, 0.0)  # the loop's thread: no waiting at all
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.lingering = time.monotonic() + _LINGER
        self._park(conn)

    # -- workers --------------------------------------------------------------------------------

    def _worker(self) -> None:
        try:
            while True:
                conn = self._parked.next_ready()
                if conn is None:
                    return
                self._on_ready(conn)
        finally:
            with self._lock:
                self._workers_running -= 1
                last = self._workers_running == 0
            if last:
                self._parked.close()

    def _on_ready(self, conn: _Conn) -> None:
        """Serve what a connection that became ready has for us, then park or close it."""
        while True:
            request = self._read_request(conn)
            if request is None:
                return  # parked again, lingering, or closed
            keep = False
            try:
                keep = self._serve_connection(conn, request)
            except Exception:  # a bug of ours must not kill the worker
                log.exception("error while serving %s", _peer_text(conn))
            if not keep:
                _say_tls_goodbye(conn.sock, _LINGER)
                close_gently(conn.sock, _LINGER, _MAX_LINGER_READ)
                self._closed_one(conn)
                return
            conn.since = time.monotonic()
            if not _tls_pending(conn.sock):
                self._park(conn)
                return
            # else a pipelined request, decrypted already, where epoll cannot see it

    def _read_request(self, conn: _Conn) -> Optional[Request]:
        """Read what has arrived: the next request once its head is whole, else None (and
        the connection is parked again, lingers or is closed)."""
        if conn.lingering is not None:
            self._read_off(conn)
            return None
        if conn.preamble is not None and not self._advance_preamble(conn):
            return None
        if conn.handshaking and not self._handshake(conn):
            return None
        try:
            data = conn.sock.recv(_RECV)
            while _tls_pending(conn.sock) and len(data) < _RECV:
                data += conn.sock.recv(_RECV)  # decrypted already: epoll cannot see it
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self._park(conn)  # nothing yet (or woken for a connection no longer there)
            return None
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return None
        conn.since = time.monotonic()
        conn.parser.feed(data)
        try:
            event = conn.parser.next_event()
        except HTTPError as exc:
            self._refuse(conn, exc)
            return None
        if event is NEED_DATA:
            if conn.head_started is None:
                conn.head_started = conn.since
            self._park(conn)
            return None
        conn.head_started = None
        conn.served = True
        return event  # type: ignore[return-value]

    def _read_off(self, conn: _Conn) -> None:
        """A closing connection: read off and ignore what the client still sends."""
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            data = None
        except OSError:
            data = b""
        if data == b"":
            self._close(conn)
        else:
            self._park(conn)

    def _advance_preamble(self, conn: _Conn) -> bool:
        """The PROXY header and the TLS sniff, as bytes arrive; True once they are over."""
        assert conn.preamble is not None
        try:
            done = conn.preamble.step(conn.sock)
        except PreambleError as exc:
            log.info("closed a connection from %s: %s", _peer_text(conn), exc)
            if exc.response:
                try:
                    conn.sock.send(exc.response)
                except OSError:
                    pass
            self._linger(conn)
            return False
        except OSError:
            self._close(conn)
            return False
        if not done:
            self._park(conn)
            return False
        header, conn.preamble = conn.preamble.header, None
        if header is not None:
            conn.peer = effective_peer(header, None if conn.unix else conn.peer)
            conn.unix = conn.peer is None
            if client_used_tls(header):
                conn.scheme = "https"
        context = self.options.ssl_context
        if context is not None:  # the SSLSocket takes the fd over (the same fd number)
            conn.sock = context.wrap_socket(conn.sock, server_side=True,
                                            do_handshake_on_connect=False)
            conn.handshaking = True
        return True

    def _handshake(self, conn: _Conn) -> bool:
        """One step of the TLS handshake, without blocking; True once it is done."""
        sock: ssl.SSLSocket = conn.sock  # type: ignore[assignment]
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._park(conn)
            return False
        except ssl.SSLWantWriteError:
            self._park(conn, writable=True)
            return False
        except OSError as exc:  # ssl.SSLError included: a bad client, or not TLS after all
            log.info("TLS handshake with %s failed: %s", _peer_text(conn), exc)
            self._close(conn)
            return False
        conn.handshaking = False
        conn.tls = wsgi_environ(client_certificate(sock))
        return True

    def _serve_connection(self, conn: _Conn, request: Request) -> bool:
        """Serve requests on ``conn`` while whole ones are already buffered (pipelining)."""
        while True:
            if not _Exchange(self, conn, request).run():
                return False
            conn.parser.start_next()
            try:
                event = conn.parser.next_event()
            except HTTPError as exc:
                _send_all(conn, http11.error_response(exc.status))
                return False
            if event is NEED_DATA:
                conn.head_started = time.monotonic() if conn.parser.buffered else None
                return True
            request = event  # type: ignore[assignment]


class _Exchange:
    """One request and its response."""

    def __init__(self, server: WSGIServer, conn: _Conn, request: Request) -> None:
        self.server = server
        self.conn = conn
        self.request = request
        self.status: Optional[str] = None
        self.code = 0  # the status as a number
        self.headers: List[Tuple[bytes, bytes]] = []  # checked, encoded, without the framing
        self.head_sent = False
        self.chunked = False
        self.length: Optional[int] = None  # Content-Length the app declared
        self.sent = 0
        self.keep_alive = request.keep_alive
        self.body: Optional[_Input] = None
        if request.has_body:
            self.body = _Input(conn, request)
        else:
            _end_of_message(conn.parser)
        self.started = time.time()
        self.origin: Optional[Origin] = None  # who the request is from, behind any proxy

    def run(self) -> bool:
        """Serve the request; True if the connection may carry another one."""
        request = self.request
        if self.server.lifecycle.draining:
            self.keep_alive = False
        ready_path = self.server.options.ready_path
        if ready_path is not None and request.path == ready_path:
            self._answer_readiness()
        else:
            try:
                self._run_app()
            except _ClientGone:
                return False
        self._log()
        if not (self.keep_alive and self.head_sent and self._complete()):
            return False  # the close reads off what the client still sends
        return self.body is None or self.body.finish()

    def _complete(self) -> bool:
        """Whether the client got the whole body the head announced."""
        if self.length is None or self.sent == self.length:
            return True
        return http11.no_body_expected(self.request.method, self.code)

    def _answer_readiness(self) -> None:
        ready = self.server.lifecycle.ready_for_traffic
        body = b"ready\n" if ready else b"not ready\n"
        self.status = "200 OK" if ready else "503 Service Unavailable"
        self.code = 200 if ready else 503
        self.headers = [(b"Content-Type", b"text/plain")]
        self.length = len(body)
        self._send(body, final=True)

    def _run_app(self) -> None:
        environ = self._environ()
        try:
            result = self.server.app(environ, self._start_response)
        except _ClientGone:
            raise
        except HTTPError as exc:  # a malformed body, met while the app read it
            self._fail(exc.status)
            return
        except Exception:
            log.exception("application error for %s %s", self.request.method.decode(),
                          self.request.target.decode("latin-1"))
            self._fail()
            return
        try:
            if isinstance(result, FileWrapper) and self._sendfile(result):
                return
            if isinstance(result, (list, tuple)) and len(result) == 1 and not self.head_sent:
                self._send(result[0], final=True)  # the common case: one write, Content-Length
                return
            for data in result:
                if data:
                    self._send(data, final=False)
            self._send(b"", final=True)
        except _ClientGone:
            raise
        except Exception:
            log.exception("application error while streaming %s", self.request.target.decode("latin-1"))
            self._fail()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("error in the application's close()")

    def _fail(self, status: int = 500) -> None:
        if self.head_sent or status != 500:
            self.keep_alive = False  # cut short, or the request's framing is broken
        if self.head_sent:
            return  # the client sees the close
        reason = http11.REASONS.get(status, "Error")
        self.status = f"{status} {reason}"
        self.code = status
        body = reason.encode() + b"\n"
        self.headers = [(b"Content-Type", b"text/plain")]
        self.length = len(body)
        self._send(body, final=True)

    # -- the WSGI environ and start_response ----------------------------------------------------

    def _environ(self) -> Dict[str, Any]:
        request, conn = self.request, self.conn
        options = self.server.options
        origin = self.origin = conn.origin(request, options)
        server = origin.server
        environ: Dict[str, Any] = {
            "REQUEST_METHOD": _METHODS.get(request.method) or request.method.decode("latin-1"),
            "SCRIPT_NAME": "",
            "PATH_INFO": _path_info(request.path),
            "QUERY_STRING": request.query.decode("latin-1"),
            "RAW_URI": request.target.decode("latin-1"),
            "SERVER_NAME": server[0] if server else conn.server_addr[0],
            "SERVER_PORT": str(server[1] or "") if server else "",
            "SERVER_PROTOCOL": _PROTOCOLS.get(request.version) or "HTTP/" + request.version.decode(),
            "REMOTE_ADDR": origin.client[0] if origin.client else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": origin.scheme,
            "wsgi.input": self.body if self.body is not None else io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
        }
        if origin.client and origin.client[1]:
            environ["REMOTE_PORT"] = str(origin.client[1])
        if options.root_path:
            environ["SCRIPT_NAME"], environ["PATH_INFO"] = split_root_path(
                environ["PATH_INFO"], options.root_path)
        if conn.tls is not None:
            environ.update(conn.tls)
        for name, value in request.headers:
            key = _CGI_KEYS.get(name) or _cgi_key(name)
            if key is _DROPPED:
                continue
            text = value.decode("latin-1")
            if key in environ and key != "CONTENT_TYPE" and key != "CONTENT_LENGTH":
                environ[key] += "," + text
            else:
                environ[key] = text
        if request.chunked:
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        if origin.host is not None:
            environ["HTTP_HOST"] = origin.host
        return environ

    def _start_response(self, status: str, headers: List[Tuple[str, str]],
                        exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        if not isinstance(status, str) or len(status) < 4 or not status[:3].isdigit() or status[3] != " ":
            raise ValueError(f"WSGI status must look like '200 OK', got {status!r}")
        checked = []
        length: Optional[int] = None
        for header in headers:
            try:
                kind = _CHECKED_HEADERS.get(header)
            except TypeError:  # a list, not a tuple
                kind = None
            if kind is None:
                kind = _check_header(header)
            if kind.__class__ is tuple:
                checked.append(kind)
            elif kind is not _DROPPED:
                length = kind  # type: ignore[assignment]  # sent once, by frame_response
        self.status = status
        self.code = int(status[:3])
        self.headers = checked
        self.length = length
        return self._write

    def _write(self, data: bytes) -> None:
        if self.status is None:
            raise AssertionError("write() before start_response()")
        self._send(data, final=False)

    # -- sending --------------------------------------------------------------------------------

    def _head(self, body_length: Optional[int]) -> bytes:
        assert self.status is not None, "the application returned without calling start_response"
        if self.body is not None and not self.body.can_read_off():
            self.keep_alive = False  # say so in the head: never close a promised keep-alive
        head, self.length, self.chunked, self.keep_alive = http11.frame_response(
            self.request, self.code, self.status.encode("latin-1"), self.headers,
            self.length, body_length, self.keep_alive, self.server.lifecycle.draining)
        return head

    def _send(self, data: bytes, final: bool) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"WSGI applications must produce bytes, got {type(data).__name__}")
        out = b""
        if not self.head_sent:
            if not final and not data:
                return  # nothing to send yet: keep the chance of a Content-Length
            out = self._head(len(data) if final else None)
            self.head_sent = True
        no_body = http11.no_body_expected(self.request.method, self.code)
        if no_body:
            data = b""
        elif self.length is not None and self.sent + len(data) > self.length:
            data = data[:self.length - self.sent]  # the app wrote more than it declared
            self.keep_alive = False
        self.sent += len(data)
        if self.chunked:
            if data:
                out += b"%x\r\n%s\r\n" % (len(data), data)
            if final:
                out += b"0\r\n\r\n"
        else:
            out += data
        if out:
            _send_all(self.conn, out)

    def _sendfile(self, wrapper: "FileWrapper") -> bool:
        filelike = wrapper.filelike
        try:
            fd = filelike.fileno()
            size = os.fstat(fd).st_size
            offset = filelike.tell()
        except (AttributeError, OSError, io.UnsupportedOperation):
            return False
        if not isinstance(filelike, io.BufferedIOBase) and not isinstance(filelike, io.RawIOBase):
            return False
        count = max(0, size - offset)
        if self.length is not None:
            count = min(count, self.length)
        _send_all(self.conn, self._head(count))
        self.head_sent = True
        # count 0 would be refused by socket.sendfile (an empty file is a complete response).
        if count and not http11.no_body_expected(self.request.method, self.code):
            sock = self.conn.sock
            try:
                sock.settimeout(self.conn.timeout)  # sendfile refuses a non-blocking socket
                sent = sock.sendfile(filelike, offset, count)
                sock.setblocking(False)
            except OSError:
                raise _ClientGone() from None
            self.sent += sent
        wrapper.close()
        return True

    def _log(self) -> None:
        access_log = self.server.options.access_log
        if access_log is None:
            return
        if self.origin is not None:
            remote = self.origin.client[0] if self.origin.client else "-"
        else:
            remote = "-" if self.conn.unix else self.conn.peer[0]
        status = self.status[:3] if self.status else "-"
        access_log(access_log_line(remote, self.started, self.request, status, self.sent))


class _ClientGone(Exception):
    """The client closed or reset the connection, or stopped reading in time."""


def _send_all(conn: _Conn, data: bytes) -> None:
    """Send everything; ``conn.timeout`` bounds each wait for progress, not the total.

    ``sendall`` applies a timeout to the whole call, which cuts off a large response to a
    slow but steady client; each ``send`` waits for room anew. The socket stays non-blocking:
    a response that fits the kernel's buffer (the usual case) costs one system call, where a
    socket with a timeout polls before every send and costs two more to switch modes.
    """
    sock = conn.sock
    view = memoryview(data)
    unsent = -1  # the kernel's send queue when it was last full
    try:
        while view:
            try:
                sent = sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError) as exc:
                if _wait_until(sock, exc, True, conn.timeout):
                    continue
                # The kernel wakes a sender only once much of its queue is free: a client
                # that reads slowly made progress if the queue shrank at all.
                before, unsent = unsent, unsent_bytes(sock.fileno())
                if 0 <= unsent < before:
                    continue
                raise _ClientGone() from None
            view = view[sent:]
            if view:  # the queue is full: measure progress from here
                unsent = unsent_bytes(sock.fileno())
    except OSError:
        raise _ClientGone() from None


def _say_tls_goodbye(sock: socket.socket, wait: float) -> None:
    """Send TLS close_notify on an established TLS connection, waiting at most ``wait``
    seconds for room in the send queue; the caller then half-closes and closes as usual.

    Without it the TCP close is a truncation to a client that checks (Python's ssl with
    ``suppress_ragged_eofs=False``, Go, strict curl): it cannot tell the end of a response
    framed by the close from an attacker's cut. The client's own close_notify is not waited
    for (TLS allows closing once ours is sent): a client that never answers holds nothing.
    """
    if not isinstance(sock, ssl.SSLSocket) or sock.version() is None:
        return  # plain, its handshake not done, or TLS shut down already
    deadline = time.monotonic() + wait
    while True:
        try:
            sock.unwrap()  # the client's close_notify had come already: both are done
            return
        except ssl.SSLWantReadError:
            return  # ours is out; the reply is what unwrap would wait for
        except ssl.SSLWantWriteError as exc:
            left = deadline - time.monotonic()
            if left <= 0 or not _wait_until(sock, exc, True, left):
                return  # a client that does not read would not see it anyway
        except (OSError, ValueError):  # reset, or the handshake never finished
            return


def _recv(conn: _Conn) -> bytes:
    """The next bytes from the client, waiting at most ``conn.timeout`` for them."""
    sock = conn.sock
    while True:
        try:
            return sock.recv(_RECV)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
            if not _wait_until(sock, exc, False, conn.timeout):
                raise _ClientGone() from None
        except OSError:
            raise _ClientGone() from None


def _wait_until(sock: socket.socket, blocked: Exception, writing: bool, timeout: float) -> bool:
    """Wait until ``sock`` can go on after ``blocked``; False if ``timeout`` passed first.

    TLS may have to read to write, or the reverse: its error says which it waits for.
    """
    if isinstance(blocked, ssl.SSLWantReadError):
        writing = False
    elif isinstance(blocked, ssl.SSLWantWriteError):
        writing = True
    poller = select.poll()
    poller.register(sock, select.POLLOUT if writing else select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _end_of_message(parser: RequestParser) -> None:
    """Take the end of a request without a body from the parser."""
    event = parser.next_event()
    assert isinstance(event, EndOfMessage), event


# The WSGI environ key of each request header name seen, or _DROPPED: CGI would turn "-" and
# "_" alike into "_", a spoofing vector, so names with "_" are left out. Bounded: emptied when
# full, so a client that sends new names all the time only costs the work it saves.
_DROPPED = ""
_CGI_KEYS: Dict[bytes, str] = {}


def _cgi_key(name: bytes) -> str:
    if b"_" in name:
        key = _DROPPED
    else:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key != "CONTENT_TYPE" and key != "CONTENT_LENGTH":
            key = "HTTP_" + key
    if len(_CGI_KEYS) >= 512:
        _CGI_KEYS.clear()
    _CGI_KEYS[name] = key
    return key


_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_PROTOCOLS = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}


def _path_info(path: bytes) -> str:
    return (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")


# Response headers the application sent before (most are the same on every response), as
# checked: the (name, value) pair encoded, the Content-Length as an int, or _DROPPED for a
# hop-by-hop header (the server decides framing and persistence). Bounded like _CGI_KEYS.
_CHECKED_HEADERS: Dict[Tuple[str, str], Any] = {}
_HOP_BY_HOP = frozenset(("connection", "transfer-encoding", "keep-alive"))


def _check_header(header: Tuple[str, str]) -> Any:
    name, value = header
    encoded = (name.encode("latin-1"), value.encode("latin-1"))
    if not http11.is_valid_header(*encoded):
        raise ValueError(f"invalid response header {name!r}: {value!r}")
    lower = name.lower()
    kind: Any = encoded
    if lower == "content-length":
        if not value.isascii() or not value.strip().isdigit():
            raise ValueError(f"invalid Content-Length {value!r}")
        kind = int(value)
    elif lower in _HOP_BY_HOP:
        kind = _DROPPED
    if header.__class__ is tuple and name.__class__ is str and value.__class__ is str:
        if len(_CHECKED_HEADERS) >= 512:
            _CHECKED_HEADERS.clear()
        _CHECKED_HEADERS[header] = kind
    return kind


class _Input(io.RawIOBase):
    """``wsgi.input``: the request body, read on demand; safe to under-read."""

    def __init__(self, conn: _Conn, request: Request) -> None:
        super().__init__()
        self._conn = conn
        self._request = request
        self._buffer = bytearray()
        self._received = 0  # body bytes taken from the parser
        self._done = False
        self._continue_pending = request.expect_continue

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Get the next piece of body into the buffer; False at its end."""
        if self._done:
            return False
        if self._continue_pending:
            self._continue_pending = False
            _send_all(self._conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        parser = self._conn.parser
        while True:
            event = parser.next_event()
            if isinstance(event, Body):
                self._buffer += event.data
                self._received += len(event.data)
                return True
            if isinstance(event, EndOfMessage):
                self._done = True
                return False
            data = _recv(self._conn)
            if not data:
                raise _ClientGone()
            parser.feed(data)

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        if size is None or size < 0:
            while self._fill():
                pass
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        while len(self._buffer) < size and self._fill():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readline(self, size: int = -1) -> bytes:  # type: ignore[override]
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 and (size is None or size < 0 or end < size):
                return self.read(end + 1)
            if size is not None and 0 <= size <= len(self._buffer):
                return self.read(size)
            if not self._fill():
                return self.read(len(self._buffer))

    def readlines(self, hint: int = -1) -> List[bytes]:  # type: ignore[override]
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self):  # type: ignore[override]
        return iter(self.readline, b"")

    def can_read_off(self) -> bool:
        """Whether what the app has not read of the body can be read off after the response
        (its size is known and small, and the client is not waiting for 100 Continue)."""
        if self._done:
            return True
        length = self._request.content_length
        return (not self._continue_pending and length is not None
                and length - self._received <= _MAX_DISCARD)

    def finish(self) -> bool:
        """After the response: read off what the app left unread; False to close instead."""
        if self._done:
            return True
        if self._continue_pending:
            return False  # the client waits for 100 Continue: it never sent the body
        self._buffer.clear()  # read from the client already; can_read_off counted the rest
        discarded = 0
        try:
            while self._fill():
                discarded += len(self._buffer)
                self._buffer.clear()
                if discarded > _MAX_DISCARD:
                    return False
        except (_ClientGone, HTTPError):
            return False
        return True


class FileWrapper:
    """``wsgi.file_wrapper``: a real file is sent with ``os.sendfile``; others are iterated."""

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data

    def close(self) -> None:
        pass


def _server_address(listener: socket.socket) -> Tuple[str, str]:
    name = listener.getsockname()
    if isinstance(name, tuple):
        return str(name[0]), str(name[1])
    if isinstance(name, bytes):
        name = "@" + name[1:].decode("utf-8", "replace") if name[:1] == b"\0" else name.decode()
    return str(name) or "localhost", ""


def _unread_bytes(fd: int) -> int:
    """Bytes received on a socket that nobody has read yet (FIONREAD); 0 if it cannot be told."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0


def _tls_pending(sock: socket.socket) -> int:
    """Decrypted bytes waiting inside a TLS socket, where no selector sees them."""
    return sock.pending() if isinstance(sock, ssl.SSLSocket) else 0


def _peer_text(conn: _Conn) -> str:
    return "a Unix socket client" if conn.unix else f"{conn.peer[0]}:{conn.peer[1]}"
