"""The life of one generation: serving → lame_duck → draining → stopped, with its deadlines.

``Lifecycle`` is the shared state between whoever decides (the upgrader and its signals) and
whoever serves (adapters and built-in servers). It holds no sockets; servers read it:

- ``stop_event`` is set when this generation must stop accepting ("stop serving now"),
- ``last_holder`` says whether it must first accept what is left in the accept queue (nobody
  else holds the listeners) or may simply close them (a successor holds them now),
- ``deadline`` is when whatever is still open gets closed by force,
- ``force_event`` is set when that moment comes early (a second SIGINT/SIGTERM),
- ``handed_over`` (and ``successor``, its pid) says the drain is a handover to a successor that
  serves now, not a final stop.

The connection helpers at the bottom (``close_gently``, ``accept_backlog``) are the two socket
moves every drain needs, written once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable, List, Optional

__all__ = ["Lifecycle", "STARTING", "SERVING", "LAME_DUCK", "DRAINING", "STOPPED",
           "close_gently", "accept_backlog"]

log = logging.getLogger("graceful")

STARTING = "starting"
SERVING = "serving"
LAME_DUCK = "lame_duck"
DRAINING = "draining"
STOPPED = "stopped"

_ORDER = {STARTING: 0, SERVING: 1, LAME_DUCK: 2, DRAINING: 3, STOPPED: 4}


class Lifecycle:
    """State, events and deadlines of one generation. Thread-safe; transitions only move forward."""

    def __init__(self, graceful_timeout: float = 30.0, idle_grace: float = 0.5) -> None:
        self.graceful_timeout = graceful_timeout
        # An idle keep-alive connection is closed only once it stayed idle this long after the
        # drain began: closing it sooner races a client that is sending its next request.
        self.idle_grace = idle_grace
        self.state = STARTING
        self.stop_event = threading.Event()
        self.force_event = threading.Event()
        self.stopped_event = threading.Event()
        self.drain_started: Optional[float] = None
        self.deadline: Optional[float] = None
        self.last_holder = True
        self.reason = ""
        # The pid this generation handed its listeners over to, once it drains because of that
        # (a routine handover, not a final stop).
        self.successor: Optional[int] = None
        self._lock = threading.Lock()
        self._watchers: List[Callable[[str], None]] = []
        self._lame_duck_timer: Optional[threading.Timer] = None

    # -- queries ---------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Whether servers should still accept new connections (serving or lame duck)."""
        return not self.stop_event.is_set()

    @property
    def ready_for_traffic(self) -> bool:
        """What a readiness endpoint reports: only a serving generation wants new traffic."""
        return self.state == SERVING

    @property
    def draining(self) -> bool:
        return self.stop_event.is_set()

    @property
    def handed_over(self) -> bool:
        """Whether this generation drains because a successor serves now (not a final stop)."""
        return self.successor is not None

    def time_left(self) -> Optional[float]:
        """Seconds until the force-close deadline (None while not draining, 0 once forced)."""
        if self.force_event.is_set():
            return 0.0
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def watch(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(new_state)`` on every transition (from the thread that made it)."""
        self._watchers.append(callback)

    # -- transitions -----------------------------------------------------------------------

    def serving(self) -> None:
        self._move(STARTING, SERVING, "ready")

    def lame_duck(self, delay: float) -> None:
        """Keep serving for ``delay`` seconds while reporting not-ready, then drain."""
        if delay <= 0 or self.state != SERVING:
            self.drain("shutdown")
            return
        if self._move(SERVING, LAME_DUCK, f"lame duck for {delay:g}s"):
            log.info("lame duck for %gs: still serving, readiness reports not ready", delay)
            timer = threading.Timer(delay, self.drain, args=("shutdown",))
            timer.daemon = True
            self._lame_duck_timer = timer
            timer.start()

    def hand_over(self, successor_pid: int, last_holder: bool = False) -> None:
        """Drain because ``successor_pid`` serves now (``last_holder``: it bound sockets of its
        own beside ours, so what is queued on ours is still ours to serve)."""
        self._drain(f"handed over to pid {successor_pid}", last_holder, successor_pid)

    def drain(self, reason: str, last_holder: bool = True) -> None:
        """Stop accepting now; the rest must finish before ``deadline``."""
        self._drain(reason, last_holder, None)

    def _drain(self, reason: str, last_holder: bool, successor: Optional[int]) -> None:
        with self._lock:
            if _ORDER[self.state] >= _ORDER[DRAINING]:
                return
            self.state = DRAINING
            self.reason = reason
            self.last_holder = last_holder
            self.successor = successor
            self.drain_started = time.monotonic()
            self.deadline = self.drain_started + self.graceful_timeout
        if self._lame_duck_timer is not None:
            self._lame_duck_timer.cancel()
        log.info("draining (%s): finishing in-flight work within %gs", reason,
                 self.graceful_timeout)
        self.stop_event.set()
        self._notify(DRAINING)

    def force(self) -> None:
        """Close everything now (a second SIGINT/SIGTERM, or an external deadline)."""
        self.drain("forced")
        self.force_event.set()

    def stopped(self) -> None:
        with self._lock:
            if self.state == STOPPED:
                return
            self.state = STOPPED
        self.stop_event.set()
        self.stopped_event.set()
        if self._lame_duck_timer is not None:
            self._lame_duck_timer.cancel()
        self._notify(STOPPED)

    def _move(self, from_state: str, to_state: str, why: str) -> bool:
        with self._lock:
            if self.state != from_state:
                return False
            self.state = to_state
        log.debug("state %s -> %s (%s)", from_state, to_state, why)
        self._notify(to_state)
        return True

    def _notify(self, state: str) -> None:
        for callback in list(self._watchers):
            try:
                callback(state)
            except Exception:
                log.exception("lifecycle watcher failed")


def close_gently(sock: socket.socket, linger: float = 1.0, max_bytes: int = 1 << 20) -> None:
    """Close a connection without a reset.

    Closing with unread input makes the kernel answer with an RST (which a proxy turns into a
    502), so: half-close our side, read off what the peer still sends (bounded in bytes and
    time), then close.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.close()
        return
    deadline = time.monotonic() + linger
    received = 0
    try:
        while received < max_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            data = sock.recv(65536)
            if not data:
                break
            received += len(data)
    except OSError:
        pass
    finally:
        sock.close()


def accept_backlog(listener: socket.socket, limit: int = 4096):
    """Yield connections already waiting in ``listener``'s accept queue, without blocking.

    The last holder of a listener calls this before closing it: whatever is queued would
    otherwise be reset by the close.
    """
    for _ in range(limit):
        try:
            conn, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("accept while draining the backlog failed: %s", exc)
            return
        yield conn, peer
