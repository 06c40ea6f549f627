"""sd_notify: tell systemd (or any NOTIFY_SOCKET listener) what this service is doing.

A notification is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Without ``NOTIFY_SOCKET``
every call is a silent no-op, so servers can notify unconditionally.

Notifications are best effort, as systemd means them: a datagram is sent without blocking. A
listener that stops reading fills its receive queue, and a blocking send would then hang the
server (or the master) in ``ready()`` forever; instead that message is dropped, with one warning
per socket and kind of message, and the caller carries on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping, Optional, Set, Tuple

__all__ = ["notify", "ready", "reloading", "stopping", "mainpid", "status", "monotonic_usec"]

log = logging.getLogger("graceful")

# (socket, kind) pairs already warned about a full queue: a listener that stopped reading would
# otherwise get a warning for every STATUS= or WATCHDOG=1 the server sends.
_warned_full: Set[Tuple[str, str]] = set()


def notify(*fields: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Send ``fields`` (such as ``"READY=1"``) as one notification; True if it was sent."""
    for field in fields:
        if "\n" in field or "=" not in field:
            raise ValueError(f"invalid sd_notify field {field!r}: write KEY=VALUE on one line")
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # close-on-exec (PEP 446)
            sock.sendto(message, socket.MSG_DONTWAIT, address)
    except BlockingIOError:
        _warn_full(address, fields[0].split("=", 1)[0] if fields else "")
        return False
    except OSError as exc:
        log.warning("sd_notify to %r failed (%s): %s", address, exc, message)
        return False
    return True


def _warn_full(address: str, kind: str) -> None:
    shown = "@" + address[1:] if address.startswith("\0") else address
    if (shown, kind) in _warned_full:
        return
    _warned_full.add((shown, kind))
    log.warning("sd_notify: NOTIFY_SOCKET %s is not reading (its queue is full): %s dropped; "
                "further %s notifications it drops are not logged", shown, kind, kind)


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd wants with RELOADING=1."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def ready(status_text: Optional[str] = None, *, environ: Optional[Mapping[str, str]] = None) -> bool:
    fields = ["READY=1"] + ([f"STATUS={status_text}"] if status_text is not None else [])
    return notify(*fields, environ=environ)


def reloading(*, environ: Optional[Mapping[str, str]] = None) -> bool:
    return notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", environ=environ)


def stopping(*, environ: Optional[Mapping[str, str]] = None) -> bool:
    return notify("STOPPING=1", environ=environ)


def mainpid(pid: int, *, environ: Optional[Mapping[str, str]] = None) -> bool:
    return notify(f"MAINPID={int(pid)}", environ=environ)


def status(text: str, *, environ: Optional[Mapping[str, str]] = None) -> bool:
    return notify(f"STATUS={text}", environ=environ)
