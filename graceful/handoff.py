"""Hand the listening sockets to an unrelated process over a Unix socket (protocol v1).

The serving process runs a ``HandoffServer`` on a Unix socket (mode 0600, or an abstract
name). A new process - another container, a new unit - calls ``take_over(path)`` before it
binds anything: it is authenticated by SO_PEERCRED (same effective uid by default), receives
the listeners by SCM_RIGHTS with their names, starts serving on them, and calls
``confirm_ready``. Only then does the old process drain and exit. If the new process goes away
or times out before READY, the old one keeps serving and keeps its handoff socket, and takes
its pidfile back if the new one had already taken it (``on_gone``: it does so just before READY).
See ``graceful.handoff_protocol`` for the frames.
"""

from __future__ import annotations

import array
import logging
import os
import selectors
import socket
import stat
import struct
import threading
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from .errors import GracefulError
from .handoff_protocol import (DONE, ERROR, HELLO, LISTENERS, MAX_FDS_PER_FRAME, READY,
                               FrameDecoder, HandoffProtocolError, Message, encode)

__all__ = ["HandoffServer", "HandoffError", "take_over", "confirm_ready"]

log = logging.getLogger("graceful")

_PEERCRED = struct.Struct("3i")  # pid, uid, gid
_HELLO_TIMEOUT = 10.0


class HandoffError(GracefulError):
    """The handoff did not happen (refused, malformed, timed out, or the peer went away)."""


def _address(path: str):
    return b"\0" + path[1:].encode() if path.startswith("@") else path


def _peer(conn: socket.socket) -> Tuple[int, int, int]:
    return _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


# -- the serving side ---------------------------------------------------------------------------


class HandoffServer:
    """Serves ``listeners()`` to one authenticated taker at a time; ``on_ready(pid, shared)``
    when one took over (the caller then drains). ``shared`` is False when the taker bound its
    own SO_REUSEPORT sockets instead of taking ours: ours are then still ours to empty.
    ``on_gone(pid)`` when a taker that got the listeners went away before READY: it may have
    taken the pidfile already (just before READY), which the caller then takes back."""

    def __init__(self, path: str, listeners: Callable[[], Sequence[Tuple[str, socket.socket]]],
                 on_ready: Callable[[int, bool], None], *, ready_timeout: float = 30.0,
                 allowed_uids: Optional[Iterable[int]] = None,
                 on_gone: Optional[Callable[[int], None]] = None) -> None:
        self.path = path
        self._listeners = listeners
        self._on_ready = on_ready
        self._on_gone = on_gone
        self.ready_timeout = ready_timeout
        self.allowed_uids = set(allowed_uids) if allowed_uids is not None else {os.geteuid()}
        self.sock, self._inode = _bind_handoff_socket(path)
        self._stop_r, self._stop_w = os.pipe()
        self._done = False
        # Made here, not in the thread: every fd of the server exists once it says it is open.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._selector.register(self._stop_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="graceful-handoff", daemon=True)
        self._thread.start()
        log.info("handoff socket %s is open", path)

    def close(self) -> None:
        """Stop serving; remove the socket file unless a successor's has replaced it."""
        if self._stop_w < 0:
            return
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass  # the thread already ended (after a handoff) and closed the other end
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        os.close(self._stop_w)
        self._stop_w = -1
        if not self.path.startswith("@"):
            try:
                if os.lstat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass

    def _serve(self) -> None:
        with self._selector as selector:
            while not self._done:
                events = selector.select()
                if any(key.fd == self._stop_r for key, _ in events):
                    break
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    continue
                with conn:
                    self._handle(conn)
        self.sock.close()
        os.close(self._stop_r)

    def _handle(self, conn: socket.socket) -> None:
        pid, uid, _ = _peer(conn)
        if uid not in self.allowed_uids:
            log.warning("handoff refused to pid %d: uid %d is not allowed", pid, uid)
            _send_error(conn, f"uid {uid} may not take these sockets (allowed: "
                              f"{', '.join(map(str, sorted(self.allowed_uids)))})")
            return
        listeners_sent = False
        try:
            conn.settimeout(min(_HELLO_TIMEOUT, self.ready_timeout))  # a silent client
            decoder = FrameDecoder()
            hello = _expect(conn, decoder, HELLO)
            shared = hello.body.get("fds", True)
            self._send_listeners(conn, with_fds=shared)
            listeners_sent = True
            conn.settimeout(self.ready_timeout)
            ready = _expect(conn, decoder, READY)
        except (HandoffError, HandoffProtocolError, OSError) as exc:
            log.warning("handoff to pid %d did not happen, still serving: %s", pid, exc)
            if isinstance(exc, HandoffProtocolError):
                _send_error(conn, str(exc))
            if listeners_sent and self._on_gone is not None:
                self._on_gone(pid)
            return
        self._done = True
        log.info("handoff: pid %d is serving on %s", ready.body["pid"],
                 "our listeners" if shared else "its own listeners beside ours (SO_REUSEPORT)")
        self._on_ready(ready.body["pid"], shared)
        try:
            conn.sendall(encode(Message(DONE)))
        except OSError:
            pass

    def _send_listeners(self, conn: socket.socket, with_fds: bool) -> None:
        listeners = list(self._listeners())
        batches = [listeners[i:i + MAX_FDS_PER_FRAME]
                   for i in range(0, len(listeners), MAX_FDS_PER_FRAME)] or [[]]
        for index, batch in enumerate(batches):
            body = {"batch": index, "batches": len(batches),
                    "listeners": [_describe(name, sock) for name, sock in batch]}
            fds = array.array("i", [sock.fileno() for _, sock in batch])
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)] if batch and with_fds \
                else []
            frame = encode(Message(LISTENERS, body))
            sent = conn.sendmsg([frame], ancillary)
            if sent < len(frame):
                conn.sendall(frame[sent:])


def _describe(name: str, sock: socket.socket) -> dict:
    from .addresses import format_address
    from .listeners import local_address

    family = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}.get(sock.family, "unix")
    return {"name": name, "family": family, "address": format_address(local_address(sock))}


def _bind_handoff_socket(path: str) -> Tuple[socket.socket, int]:
    """Bind under a temporary name, then rename into place: never a moment with no socket at
    ``path`` (a successor replaces ours), and never two answering."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if path.startswith("@"):
        sock.bind(_address(path))
        sock.listen(8)
        return sock, 0
    directory = os.path.dirname(os.path.abspath(path))
    st = os.stat(directory)
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        sock.close()
        raise HandoffError(f"handoff socket {path}: directory {directory} is writable by anyone; "
                           f"use a private directory")
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    old_umask = os.umask(0o177)  # created 0600: only our uid may connect
    try:
        sock.bind(temporary)
    finally:
        os.umask(old_umask)
    sock.listen(8)
    os.rename(temporary, path)
    return sock, os.lstat(path).st_ino


def _expect(conn: socket.socket, decoder: FrameDecoder, kind: int) -> Message:
    while True:
        data = conn.recv(65536)
        if not data:
            raise HandoffError("the peer closed the connection")
        for message in decoder.feed(data):
            if message.kind == ERROR:
                raise HandoffError(f"the peer says: {message.body['message']}")
            if message.kind != kind:
                raise HandoffProtocolError(f"unexpected message {message!r}")
            return message


def _send_error(conn: socket.socket, text: str) -> None:
    """Say why, then close gently: read off what the peer still sends (bounded), so it gets
    the reason rather than a reset."""
    from .drain import close_gently

    try:
        conn.sendall(encode(Message(ERROR, {"message": text[:1000]})))
    except OSError:
        return
    close_gently(conn, linger=1.0, max_bytes=1 << 16)


# -- the taking side ----------------------------------------------------------------------------


def take_over(path: str, timeout: float = 30.0, *, fds: bool = True
              ) -> Tuple[socket.socket, int, List[Tuple[str, int]]]:
    """Get the listeners from the process serving ``path``.

    Returns the connection (for ``confirm_ready``), the serving process's pid, and
    ``(name, fd)`` pairs; the fds are close-on-exec. On error every received fd is closed.
    With ``fds=False`` (SO_REUSEPORT handoff: the caller binds its own sockets beside the old
    ones) no fd is sent and the pairs are empty.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    received: List[int] = []
    try:
        try:
            conn.connect(_address(path))
        except OSError as exc:
            raise HandoffError(f"cannot connect to handoff socket {path}: {exc.strerror}") from None
        server_pid = _peer(conn)[0]
        try:
            conn.sendall(encode(Message(HELLO, {"pid": os.getpid(), "fds": fds})))
        except OSError:
            pass  # refused before we said hello: the reason is still there to read
        listeners = _receive_listeners(conn, received, fds)
        return conn, server_pid, listeners
    except BaseException:
        for fd in received:
            os.close(fd)
        conn.close()
        raise


def _receive_listeners(conn: socket.socket, received: List[int], fds_wanted: bool
                       ) -> List[Tuple[str, int]]:
    decoder = FrameDecoder()
    names: List[str] = []
    batches_seen = 0
    space = socket.CMSG_SPACE(MAX_FDS_PER_FRAME * array.array("i").itemsize)
    while True:
        try:
            data, ancillary, flags, _ = conn.recvmsg(65536, space, socket.MSG_CMSG_CLOEXEC)
        except OSError as exc:
            raise HandoffError(f"handoff interrupted: {exc}") from None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                received.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise HandoffError("file descriptors were truncated in transit (MSG_CTRUNC)")
        if not data:
            raise HandoffError("the serving process closed the handoff connection")
        for message in decoder.feed(data):
            if message.kind == ERROR:
                raise HandoffError(f"refused: {message.body['message']}")
            if message.kind != LISTENERS or message.body["batch"] != batches_seen:
                raise HandoffError(f"unexpected message {message!r}")
            names += [entry["name"] for entry in message.body["listeners"]]
            batches_seen += 1
            if batches_seen == message.body["batches"]:
                if not fds_wanted:
                    if received:
                        raise HandoffError(f"{len(received)} file descriptors received, "
                                           f"none asked for")
                    return []
                if len(received) != len(names):
                    raise HandoffError(f"{len(names)} listeners announced but {len(received)} "
                                       f"file descriptors received")
                return list(zip(names, received))


def confirm_ready(conn: socket.socket, timeout: float = 30.0) -> None:
    """Tell the old process we serve; wait until it says it drains."""
    try:
        conn.settimeout(timeout)
        conn.sendall(encode(Message(READY, {"pid": os.getpid()})))
        _expect(conn, FrameDecoder(), DONE)
    except (OSError, HandoffProtocolError) as exc:
        raise HandoffError(f"the old process did not confirm the handoff: {exc}") from None
    finally:
        conn.close()
