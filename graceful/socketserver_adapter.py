"""Serve any stdlib ``socketserver`` server from graceful listeners, and drain it properly.

``serve_socketserver(upgrader, ThreadingHTTPServer, Handler, "web=:8000")`` builds the server
around the listener ``upgrader.listen`` returns (inherited from the predecessor, or bound),
declares the generation ready, serves until it must stop, then drains:

1. stop accepting; when no successor holds the listener, first serve what is queued in it;
2. let every accepted connection finish; an ``http.server`` keep-alive connection gets
   ``Connection: close`` on its next response, and one that stays idle is closed after
   ``idle_grace`` (its handler would otherwise wait for the client until its timeout);
3. at ``graceful_timeout``, close whatever is left.

The accept loop waits in a selector on the listener and a wake-up pipe, never in ``accept()``:
the listener is shared with the other generation and non-blocking (DESIGN.md, "Listeners").
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import socketserver
import threading
import time
from typing import Any, Dict, Optional, Type

from .drain import Lifecycle, accept_backlog
from .upgrader import Upgrader

__all__ = ["serve_socketserver", "make_socketserver"]

log = logging.getLogger("graceful")

_POLL = 0.05  # how often the drain re-checks idle connections and the deadline


def make_socketserver(upgrader: Upgrader, server_class: Type[socketserver.BaseServer],
                      handler_class: type, bind: str, **listen_options: Any) -> socketserver.BaseServer:
    """Build ``server_class`` around the graceful listener ``bind`` (a ``[NAME=]ADDRESS`` spec)."""
    listener = upgrader.listen(bind, **listen_options)
    tracker = _Tracker(upgrader.lifecycle)
    server_cls = _tracked_server_class(server_class, tracker)
    handler_cls = _drain_aware_handler_class(handler_class, tracker)
    server = server_cls(listener.getsockname(), handler_cls, bind_and_activate=False)
    server.socket.close()  # the unbound socket socketserver made for itself
    server.socket = listener
    server.server_address = listener.getsockname()
    if isinstance(server.server_address, tuple):  # HTTPServer.server_bind would have set these
        server.server_name = server.server_address[0]  # type: ignore[attr-defined]
        server.server_port = server.server_address[1]  # type: ignore[attr-defined]
    server._graceful_tracker = tracker  # type: ignore[attr-defined]
    return server


def serve_socketserver(upgrader: Upgrader, server_class: Type[socketserver.BaseServer],
                       handler_class: type, bind: str, **listen_options: Any) -> int:
    """Serve until this generation must stop, drain, close the upgrader; returns 0."""
    server = make_socketserver(upgrader, server_class, handler_class, bind, **listen_options)
    run_socketserver(upgrader, server)
    return 0


def run_socketserver(upgrader: Upgrader, server: socketserver.BaseServer) -> None:
    """Serve an already built server (see ``make_socketserver``) through its whole lifecycle."""
    tracker: _Tracker = server._graceful_tracker  # type: ignore[attr-defined]
    lifecycle = upgrader.lifecycle
    wake_r, wake_w = os.pipe()
    lifecycle.watch(lambda state: _wake(wake_w))
    # The drain runs beside the accept loop: a non-threaded server may be stuck in a handler
    # that waits on an idle keep-alive client, which only the drain can close.
    drainer = threading.Thread(target=tracker.drain, name="graceful-drain", daemon=True)
    try:
        drainer.start()
        upgrader.ready()
        _accept_until_stopped(server, lifecycle, wake_r)
        if lifecycle.last_holder:
            for conn, peer in accept_backlog(server.socket):
                _process(server, conn, peer)
        server.socket.close()
        tracker.accepting_done.set()
        drainer.join()
    finally:
        tracker.accepting_done.set()
        server.server_close()
        upgrader.close()
        os.close(wake_r)
        os.close(wake_w)


def _wake(fd: int) -> None:
    try:
        os.write(fd, b"x")
    except OSError:
        pass


def _accept_until_stopped(server: socketserver.BaseServer, lifecycle: Lifecycle, wake_fd: int) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(server.socket, selectors.EVENT_READ)
        selector.register(wake_fd, selectors.EVENT_READ)
        while not lifecycle.stop_event.is_set():
            for key, _ in selector.select():
                if key.fd == wake_fd:
                    os.read(wake_fd, 512)
                elif not lifecycle.stop_event.is_set():
                    _accept_one(server)


def _accept_one(server: socketserver.BaseServer) -> None:
    try:
        conn, peer = server.socket.accept()
    except (BlockingIOError, InterruptedError):
        return  # the other generation took it
    except OSError as exc:
        log.warning("accept failed: %s", exc)
        return
    _process(server, conn, peer)


def _process(server: socketserver.BaseServer, conn: socket.socket, peer: Any) -> None:
    if conn.family in (socket.AF_INET, socket.AF_INET6):
        # Without it a small keep-alive response waits for the client's delayed ACK (~40 ms).
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if server.verify_request(conn, peer):
        try:
            server.process_request(conn, peer)
        except Exception:
            server.handle_error(conn, peer)
            server.shutdown_request(conn)
    else:
        server.shutdown_request(conn)


class _Tracker:
    """Connections being served: idle since when (keep-alive, waiting for a request) or busy."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self._idle_since: Dict[socket.socket, Optional[float]] = {}
        self._cond = threading.Condition()
        self.accepting_done = threading.Event()

    def add(self, conn: socket.socket) -> None:
        with self._cond:
            self._idle_since[conn] = None

    def discard(self, conn: socket.socket) -> None:
        with self._cond:
            self._idle_since.pop(conn, None)
            self._cond.notify_all()

    def idle(self, conn: socket.socket) -> None:
        with self._cond:
            if conn in self._idle_since:
                self._idle_since[conn] = time.monotonic()

    def busy(self, conn: socket.socket) -> None:
        with self._cond:
            if conn in self._idle_since:
                self._idle_since[conn] = None

    def drain(self) -> None:
        """Once stopping: wait for every connection to end, closing idle ones after the grace
        and the rest at the deadline."""
        lifecycle = self.lifecycle
        lifecycle.stop_event.wait()
        with self._cond:
            while self._idle_since or not self.accepting_done.is_set():
                left = lifecycle.time_left()
                if left is not None and left <= 0:
                    break
                if _idle_grace_passed(lifecycle):
                    self._close_idle(time.monotonic() - lifecycle.idle_grace)
                self._cond.wait(_POLL if left is None else min(_POLL, left))
            leftover = list(self._idle_since)
        if leftover:
            log.warning("drain deadline reached: closing %d connection(s) still open", len(leftover))
            for conn in leftover:
                _shutdown(conn)

    def _close_idle(self, idle_before: float) -> None:
        for conn, since in list(self._idle_since.items()):
            if since is not None and since <= idle_before and not _has_input(conn):
                self._idle_since[conn] = None  # its handler now wakes up and ends the connection
                _shutdown(conn)


def _has_input(conn: socket.socket) -> bool:
    """Whether a client already sent something (its next request): then it is not idle."""
    try:
        return bool(conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False


def _shutdown(conn: socket.socket) -> None:
    # Wakes the handler thread blocked in recv(); it then ends and the server closes the socket.
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _tracked_server_class(server_class: Type[socketserver.BaseServer], tracker: _Tracker) -> type:
    class TrackedServer(server_class):  # type: ignore[valid-type, misc]
        def process_request(self, request: Any, client_address: Any) -> None:
            tracker.add(request)
            super().process_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            try:
                super().shutdown_request(request)
            finally:
                tracker.discard(request)

    TrackedServer.__name__ = TrackedServer.__qualname__ = f"Graceful{server_class.__name__}"
    return TrackedServer


def _drain_aware_handler_class(handler_class: type, tracker: _Tracker) -> type:
    from http.server import BaseHTTPRequestHandler

    if not issubclass(handler_class, BaseHTTPRequestHandler):
        return handler_class  # unknown protocol: its connections count as busy until they end

    class DrainAwareHandler(handler_class):  # type: ignore[valid-type, misc]
        def setup(self) -> None:
            super().setup()
            self.rfile = _ActivityReader(self.rfile, lambda: tracker.busy(self.connection))

        def handle_one_request(self) -> None:
            if tracker.lifecycle.draining and _idle_grace_passed(tracker.lifecycle) \
                    and not _has_input(self.connection):
                self.close_connection = True
                return
            tracker.idle(self.connection)
            super().handle_one_request()

        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() == "connection":
                self._graceful_connection_sent = True
            super().send_header(keyword, value)

        def end_headers(self) -> None:
            if tracker.lifecycle.draining and not getattr(self, "_graceful_connection_sent", False):
                self.send_header("Connection", "close")  # the client learns it from a response
            self._graceful_connection_sent = False
            super().end_headers()

    DrainAwareHandler.__name__ = DrainAwareHandler.__qualname__ = handler_class.__name__
    return DrainAwareHandler


def _idle_grace_passed(lifecycle: Lifecycle) -> bool:
    started = lifecycle.drain_started
    return started is not None and time.monotonic() - started >= lifecycle.idle_grace


class _ActivityReader:
    """Wraps a handler's rfile: the first bytes of a request mark its connection busy."""

    def __init__(self, raw: Any, on_data: Any) -> None:
        self._raw = raw
        self._on_data = on_data

    def readline(self, *args: Any) -> bytes:
        line = self._raw.readline(*args)
        if line:
            self._on_data()
        return line

    def read(self, *args: Any) -> bytes:
        data = self._raw.read(*args)
        if data:
            self._on_data()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)
