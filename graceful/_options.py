"""Timeouts, limits and extras shared by the built-in HTTP servers."""

from __future__ import annotations

import errno
import fcntl
import logging
import ssl
import struct
import termios
import time
from typing import Callable, Optional

from .http.trust import DEFAULT_ALLOW, Trust, parse_trust
from .http11 import Limits, Request

log = logging.getLogger("graceful")

# accept() failed for want of a resource, not because of the client: the connection stays in
# the queue and the listener stays readable, so retrying at once only spins.
OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


class ServerOptions:
    """Timeouts, limits and extras shared by the WSGI and ASGI servers."""

    def __init__(self, *, header_timeout: float = 10.0, keepalive_timeout: float = 5.0,
                 body_timeout: float = 30.0, limits: Optional[Limits] = None,
                 ready_path: Optional[str] = None,
                 access_log: Optional[Callable[[str], None]] = None,
                 url_scheme: str = "http", ws_max_size: int = 16 << 20,
                 ws_per_message_deflate: bool = True, ws_ping_interval: float = 20.0,
                 ws_ping_timeout: float = 20.0, ws_drain_time: float = 3.0,
                 forwarded_trust: Optional[Trust] = None, proxy_protocol: bool = False,
                 proxy_trust: Optional[Trust] = None, root_path: str = "",
                 ssl_context: Optional[ssl.SSLContext] = None) -> None:
        self.header_timeout = header_timeout  # a request head must arrive within this (slow-loris)
        self.keepalive_timeout = keepalive_timeout  # an idle keep-alive connection is closed after
        # Longest wait for progress either way: the next piece of a request body, or the
        # client taking any of the response (never a cap on the whole transfer).
        self.body_timeout = body_timeout
        self.limits = limits or Limits()
        self.ready_path = ready_path.encode() if ready_path else None
        self.access_log = access_log
        self.url_scheme = url_scheme
        self.ws_max_size = ws_max_size  # largest WebSocket message (inflated), else close 1009
        self.ws_per_message_deflate = ws_per_message_deflate  # accept permessage-deflate offers
        self.ws_ping_interval = ws_ping_interval  # seconds between keepalive pings (0: none)
        self.ws_ping_timeout = ws_ping_timeout  # an unanswered ping closes the WebSocket (0: no)
        self.ws_drain_time = ws_drain_time  # the drain's WebSocket closes spread over this
        # Peers whose forwarded headers are believed (graceful.http.forwarded).
        self.forwarded_trust = forwarded_trust or parse_trust(DEFAULT_ALLOW)
        self.proxy_protocol = proxy_protocol  # every connection starts with a PROXY header
        self.proxy_trust = proxy_trust or parse_trust(DEFAULT_ALLOW)  # who may send one
        self.root_path = root_path  # from parse_root_path: "" or "/a/b"
        self.ssl_context = ssl_context  # HTTPS on every listener when set
        if ssl_context is not None and url_scheme == "http":
            self.url_scheme = "https"


def access_log_line(remote: str, started: float, request: Request, status: object,
                    sent: int) -> str:
    """One Common Log Format line."""
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(started))
    return (f'{remote} - - [{when}] "{request.method.decode("latin-1")} '
            f'{request.target.decode("latin-1")} HTTP/{request.version.decode()}" '
            f'{status} {sent}')


def unsent_bytes(fd: int) -> int:
    """Bytes of a connected socket's send queue the peer has not acknowledged yet (Linux
    SIOCOUTQ); 0 if it cannot be told. A response is delivered when this reaches 0, not when
    the last send returns: the kernel may still hold megabytes of it for a slow client."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0


class AcceptPause:
    """The back-off of a server whose ``accept()`` ran out of file descriptors or memory.

    The server stops watching its listeners for ``delay`` seconds (connections wait in the
    kernel's queue meanwhile), then tries again, until an accept succeeds. One warning per
    ``log_every`` seconds says how often it happened, instead of one per attempt.
    """

    def __init__(self, delay: float = 0.5, log_every: float = 30.0) -> None:
        self.delay = delay
        self.log_every = log_every
        self.until: Optional[float] = None  # monotonic time to try again; None: not paused
        self._logged_at: Optional[float] = None
        self._unlogged = 0  # failures since the last warning

    def start(self, exc: OSError) -> float:
        """Pause after ``exc``; returns the delay."""
        now = time.monotonic()
        self.until = now + self.delay
        self._unlogged += 1
        if self._logged_at is None or now - self._logged_at >= self.log_every:
            log.warning("accept failed: %s (%d time(s)); not accepting for %gs at a time "
                        "until it succeeds: raise the open files limit (ulimit -n) or lower "
                        "the load", exc.strerror or exc, self._unlogged, self.delay)
            self._logged_at = now
            self._unlogged = 0
        return self.delay

    def due(self) -> bool:
        """Whether a pause is over (the caller resumes accepting and calls ``end``)."""
        return self.until is not None and time.monotonic() >= self.until

    def end(self) -> None:
        self.until = None
