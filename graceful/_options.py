"""Timeouts, limits and extras shared by the built-in HTTP servers."""

from __future__ import annotations

import fcntl
import struct
import termios
import time
from typing import Callable, Optional

from .http11 import Limits, Request


class ServerOptions:
    """Timeouts, limits and extras shared by the WSGI and ASGI servers."""

    def __init__(self, *, header_timeout: float = 10.0, keepalive_timeout: float = 5.0,
                 body_timeout: float = 30.0, limits: Optional[Limits] = None,
                 ready_path: Optional[str] = None,
                 access_log: Optional[Callable[[str], None]] = None,
                 url_scheme: str = "http") -> None:
        self.header_timeout = header_timeout  # a request head must arrive within this (slow-loris)
        self.keepalive_timeout = keepalive_timeout  # an idle keep-alive connection is closed after
        self.body_timeout = body_timeout  # longest wait for the next piece of a request body
        self.limits = limits or Limits()
        self.ready_path = ready_path.encode() if ready_path else None
        self.access_log = access_log
        self.url_scheme = url_scheme


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
