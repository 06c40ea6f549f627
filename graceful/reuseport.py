"""SO_REUSEPORT handoff: a new process binds beside the old one, then the old one closes, and
no connection is reset on the way.

Every listener in a SO_REUSEPORT group has its own accept queue, and closing a listener resets
the connections still queued on it. So the old listener must stop *receiving* connections before
it closes. We steer the group with a one-instruction classic BPF program
(``SO_ATTACH_REUSEPORT_CBPF``): "return index K" sends every new connection to the group's
socket number K; an index past the end falls back to the kernel's hash. The kernel numbers the
group in the order sockets started listening, and when one leaves, the last one takes its slot.
With one handoff at a time (one old socket, one new) that gives:

1. a new socket joins at index 1 and at once steers the group to index 0, the old socket: it
   gets nothing until it is ready, so a new process that dies while starting loses nothing;
2. once ready it steers to index 1, itself; the old process accepts what is left in its queue
   and closes, and the new socket moves to index 0 (the program's "1" now falls back to the
   hash, which has only that socket to choose from).

Where the kernel has ``net.ipv4.tcp_migrate_req=1`` it also moves a closing listener's queue to
another socket of the group, which covers a handshake in flight at the very moment of the close.
``GRACEFUL_REUSEPORT_STEERING=off`` turns steering off (the plain kernel hash), for comparison.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct
from typing import Optional

from ._proc import tcp_listeners

__all__ = ["SteeringError", "steer", "group_size", "migrate_req_enabled", "technique",
           "hold_traffic", "take_traffic"]

log = logging.getLogger("graceful")

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>; Linux 4.5+
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: return the constant k
_MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"
ENV_REUSEPORT_STEERING = "GRACEFUL_REUSEPORT_STEERING"  # "off": the plain kernel hash


class SteeringError(OSError):
    """The kernel refused the steering program (not Linux, or too old)."""


def steer(sock: socket.socket, index: int) -> None:
    """Send every new connection of ``sock``'s SO_REUSEPORT group to member ``index``."""
    program = ctypes.create_string_buffer(struct.pack("=HBBI", _BPF_RET_K, 0, 0, index))
    fprog = struct.pack("@HP", 1, ctypes.addressof(program))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        raise SteeringError(exc.errno, f"cannot steer a SO_REUSEPORT group: {exc.strerror}") \
            from None


def group_size(sock: socket.socket) -> int:
    """How many sockets listen on ``sock``'s address as the same user (its group), itself
    included; 0 when /proc cannot tell."""
    inode = os.fstat(sock.fileno()).st_ino
    rows = tcp_listeners()
    own = next((row for row in rows if row.inode == inode), None)
    if own is None:
        return 0
    return sum(1 for row in rows if (row.local, row.uid, row.v6) == (own.local, own.uid, own.v6))


def migrate_req_enabled() -> bool:
    try:
        with open(_MIGRATE_REQ) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _steering_enabled() -> bool:
    return os.environ.get(ENV_REUSEPORT_STEERING, "on").lower() not in ("off", "0", "no")


def technique() -> str:
    """What keeps a closing SO_REUSEPORT listener's queue from being reset, in words."""
    ways = []
    if _steering_enabled():
        ways.append("SO_ATTACH_REUSEPORT_CBPF steering")
    if migrate_req_enabled():
        ways.append("net.ipv4.tcp_migrate_req=1")
    return " and ".join(ways) or "nothing (steering is off and net.ipv4.tcp_migrate_req=0: " \
                                 "closing a listener resets what is queued on it)"


def hold_traffic(sock: socket.socket) -> Optional[str]:
    """Just bound: keep the group's traffic on its oldest socket until we are ready.

    Returns the technique in use (for the start-up log), or None when steering is off."""
    if not _steering_enabled():
        log.warning("SO_REUSEPORT without steering: %s", technique())
        return None
    try:
        steer(sock, 0)
    except SteeringError as exc:
        log.warning("%s; SO_REUSEPORT handoff relies on %s", exc, technique())
        return None
    return technique()


def take_traffic(sock: socket.socket) -> None:
    """Ready: send the group's new connections to the newest socket, ours."""
    if not _steering_enabled():
        return
    members = group_size(sock)
    if members < 2:
        return  # alone: the kernel has nobody else to choose
    if members > 2:
        log.warning("%d sockets listen on %s with SO_REUSEPORT; handoff steering assumes one "
                    "old and one new", members, sock.getsockname())
    try:
        steer(sock, members - 1)
    except SteeringError as exc:
        log.warning("%s", exc)
