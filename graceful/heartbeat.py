"""The worker side of the master's watchdog: "my serving loop still runs".

A master started with ``--timeout`` passes each worker the write end of a pipe as
``GRACEFUL_HEARTBEAT_FD`` and the interval to beat at as ``GRACEFUL_HEARTBEAT_INTERVAL``. The
serving loop calls ``beat()`` on every turn; it writes one byte at most once an interval. It is
called from the loop itself, never from a side thread, so a loop that blocks (a deadlock, a
SIGSTOP) goes silent and the master replaces the worker. Without the variables it does nothing.
"""

from __future__ import annotations

import os
import time
from typing import Optional

__all__ = ["beat", "ENV_HEARTBEAT_FD", "ENV_HEARTBEAT_INTERVAL"]

ENV_HEARTBEAT_FD = "GRACEFUL_HEARTBEAT_FD"
ENV_HEARTBEAT_INTERVAL = "GRACEFUL_HEARTBEAT_INTERVAL"


class _Heartbeat:
    def __init__(self) -> None:
        self.fd: Optional[int] = None
        self.interval = 1.0
        self.next_at = 0.0
        self._take_environment()

    def _take_environment(self) -> None:
        # Consumed and unset, so a process this worker starts does not beat for it.
        text = os.environ.pop(ENV_HEARTBEAT_FD, "")
        interval = os.environ.pop(ENV_HEARTBEAT_INTERVAL, "")
        if not text.isdigit():
            return
        try:
            os.set_inheritable(int(text), False)
            os.set_blocking(int(text), False)
        except OSError:
            return  # not an open fd: no master watches us
        self.fd = int(text)
        try:
            self.interval = max(0.05, float(interval))
        except ValueError:
            pass

    def beat(self) -> None:
        if self.fd is None:
            return
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.interval
        try:
            os.write(self.fd, b".")
        except BlockingIOError:
            pass  # the master is behind on reading: it has heard from us recently enough
        except OSError:
            self.fd = None  # the master is gone


_heartbeat = _Heartbeat()


def beat() -> None:
    """Tell the master this worker's loop is alive (cheap; call it on every loop turn)."""
    _heartbeat.beat()
