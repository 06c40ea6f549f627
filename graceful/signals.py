"""A small signal dispatcher: handlers only record the signal and wake a pipe.

Python runs signal handlers in the main thread between bytecodes, at any point of the program.
Doing real work there (spawning a successor, closing sockets) can deadlock on a lock the
interrupted code holds. So the handler appends the signal number to a list and writes one byte
to a pipe; the actions registered with ``on()`` run later, in a dispatcher thread
(``start_thread``) or in an asyncio loop (``attach``).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from .errors import SignalError

if TYPE_CHECKING:  # pragma: no cover
    import asyncio

__all__ = ["SignalDispatcher"]

log = logging.getLogger("graceful")


class SignalDispatcher:
    """Records signals in their handler; runs the registered callbacks outside it."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()  # close-on-exec (PEP 446)
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._callbacks: Dict[int, List[Callable[[int], None]]] = {}
        self._received: List[int] = []  # appended by the handler, drained by pending()
        self._previous: Dict[int, Any] = {}
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional["asyncio.AbstractEventLoop"] = None
        self._closed = False

    def on(self, signum: int, callback: Callable[[int], None]) -> None:
        """Run ``callback(signum)`` (outside the handler) each time ``signum`` arrives."""
        self._callbacks.setdefault(signum, []).append(callback)

    def install(self) -> None:
        """Install the handlers for every registered signal. Main thread only."""
        if threading.current_thread() is not threading.main_thread():
            raise SignalError(
                "signal handlers can only be installed from the main thread: create the "
                "SignalDispatcher (or the Upgrader) in the main thread before starting others"
            )
        for signum in self._callbacks:
            if signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        # Runs inside the signal handler: record and wake, nothing else.
        self._received.append(signum)
        if self._write_fd < 0:
            return  # closed: never write into an fd number that may have been reused
        try:
            os.write(self._write_fd, b"\0")
        except OSError:
            pass  # the pipe is full (or closed); the list still holds the signal

    def fileno(self) -> int:
        """Readable while signals are pending."""
        return self._read_fd

    def pending(self) -> List[int]:
        """The signals received since the last call, in arrival order."""
        try:
            while os.read(self._read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            # list.pop(0) is atomic under the GIL, so a handler appending meanwhile loses nothing.
            taken = []
            while self._received:
                taken.append(self._received.pop(0))
        return taken

    def dispatch(self) -> None:
        """Run the callbacks of every pending signal; a failing callback is logged."""
        for signum in self.pending():
            for callback in self._callbacks.get(signum, ()):
                try:
                    callback(signum)
                except Exception:
                    log.exception("handler for signal %s failed", _name(signum))

    def wait(self, timeout: Optional[float] = None) -> List[int]:
        """Block until a signal arrives (or ``timeout``), then return the pending ones."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._read_fd, selectors.EVENT_READ)
            if not self._received:
                selector.select(timeout)
        return self.pending()

    def start_thread(self, name: str = "graceful-signals") -> threading.Thread:
        """Dispatch in a daemon thread until ``close()``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()
        return self._thread

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._read_fd, selectors.EVENT_READ)
            while not self._closed:
                selector.select(0.5)  # the timeout only bounds how late close() is noticed
                if not self._closed:
                    self.dispatch()

    def attach(self, loop: "asyncio.AbstractEventLoop") -> None:
        """Dispatch from ``loop`` whenever a signal arrives."""
        loop.add_reader(self._read_fd, self.dispatch)
        self._loop = loop

    def restore(self) -> None:
        """Put back the handlers that were there before ``install()``."""
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may touch handlers; the process is ending anyway
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def close(self) -> None:
        """Restore the handlers, stop dispatching, close the pipe. Idempotent."""
        if self._closed:
            return
        self.restore()
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._read_fd)
        if self._thread is not None and self._thread is not threading.current_thread():
            os.write(self._write_fd, b"\0")
            self._thread.join(5)
        read_fd, write_fd = self._read_fd, self._write_fd
        self._read_fd = self._write_fd = -1
        os.close(read_fd)
        os.close(write_fd)


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
