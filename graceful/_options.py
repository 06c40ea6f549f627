"""Timeouts, limits and extras shared by the built-in HTTP servers."""

from __future__ import annotations

import time
from typing import Callable, Optional

from .http11 import Limits, Request


class ServerOptions:
    """Timeouts, limits and extras shared by the WSGI and ASGI servers."""

    def __init__(self, *, header_timeout: float = 10.0, keepalive_timeout: float = 5.0,
                 body_timeout: float = 30.0, limits: Optional[Limits] = None,
                 ready_path: Optional[str] = None,
                 access_log: Optional[Callable[[str], None]] = None,
                 url_scheme: str = "http", ws_max_size: int = 16 << 20,
                 ws_per_message_deflate: bool = True, ws_ping_interval: float = 20.0,
                 ws_ping_timeout: float = 20.0, ws_drain_time: float = 3.0) -> None:
        self.header_timeout = header_timeout  # a request head must arrive within this (slow-loris)
        self.keepalive_timeout = keepalive_timeout  # an idle keep-alive connection is closed after
        self.body_timeout = body_timeout  # longest wait for the next piece of a request body
        self.limits = limits or Limits()
        self.ready_path = ready_path.encode() if ready_path else None
        self.access_log = access_log
        self.url_scheme = url_scheme
        self.ws_max_size = ws_max_size  # largest WebSocket message (inflated), else close 1009
        self.ws_per_message_deflate = ws_per_message_deflate  # accept permessage-deflate offers
        self.ws_ping_interval = ws_ping_interval  # seconds between keepalive pings (0: none)
        self.ws_ping_timeout = ws_ping_timeout  # an unanswered ping closes the WebSocket (0: no)
        self.ws_drain_time = ws_drain_time  # the drain's WebSocket closes spread over this


def access_log_line(remote: str, started: float, request: Request, status: object,
                    sent: int) -> str:
    """One Common Log Format line."""
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(started))
    return (f'{remote} - - [{when}] "{request.method.decode("latin-1")} '
            f'{request.target.decode("latin-1")} HTTP/{request.version.decode()}" '
            f'{status} {sent}')
