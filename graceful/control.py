"""``graceful reload|stop|quit|status --pidfile P``: signal a graceful process and report."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import List, Optional

from . import _proc
from .errors import GracefulError
from .pidfile import read_pid

__all__ = ["send_control", "print_status"]


def _target(pidfile: str) -> int:
    pid = read_pid(pidfile)
    if pid is None:
        raise GracefulError(f"pidfile {pidfile} does not exist: is the server running?")
    if not _alive(pid):
        raise GracefulError(f"pidfile {pidfile} names pid {pid}, which is not running (stale)")
    return pid


def send_control(pidfile: str, signal_name: str, *, wait: bool = False,
                 timeout: float = 60.0) -> int:
    """Send SIG``signal_name`` to the pid in ``pidfile``; with ``wait``, wait for the outcome."""
    try:
        pid = _target(pidfile)
    except GracefulError as exc:
        print(f"graceful: {exc}", file=sys.stderr)
        return 2
    signum = signal.Signals["SIG" + signal_name]
    before = set(_children(pid))  # (before the signal: a fast reload must not hide in here)
    os.kill(pid, signum)
    print(f"sent {signum.name} to pid {pid}")
    if not wait:
        return 0
    deadline = time.monotonic() + timeout
    if signal_name == "HUP":
        # A self re-exec shows as a new pid in the pidfile; a master keeps its pid and a
        # new generation of children replaces the old one.
        while time.monotonic() < deadline:
            now = _safe_read(pidfile)
            if now is not None and now != pid and _alive(now):
                print(f"pid {now} is serving (was {pid})")
                return 0
            children = set(_children(pid))
            if before and children and not (children & before):
                print(f"pid {pid} is serving with new workers {' '.join(map(str, sorted(children)))}")
                return 0
            time.sleep(0.05)  # poll interval of a bounded wait
        print(f"graceful: no new generation within {timeout:g}s (see the server's log)",
              file=sys.stderr)
        return 1
    while time.monotonic() < deadline:
        if not _alive(pid):
            print(f"pid {pid} exited")
            return 0
        time.sleep(0.05)  # poll interval of a bounded wait
    print(f"graceful: pid {pid} still running after {timeout:g}s", file=sys.stderr)
    return 1


def print_status(pidfile: str) -> int:
    try:
        pid = _target(pidfile)
    except GracefulError as exc:
        print(f"graceful: {exc}", file=sys.stderr)
        return 3  # like systemctl status / LSB: not running
    print(f"pid {pid}: {_state(pid)}")
    from .master import read_status

    writer, workers = read_status(f"{pidfile}.status")
    if writer == pid:
        print(f"  workers: {workers}")  # a master's capacity and slots restarting
    for child in _children(pid):
        print(f"  child {child}: {_cmdline(child)}")
    for listener in _listeners(pid):
        print(f"  listening: {listener}")
    return 0


def _safe_read(pidfile: str) -> Optional[int]:
    try:
        return read_pid(pidfile)
    except GracefulError:
        return None


def _alive(pid: int) -> bool:
    return _proc.running(pid)


def _state(pid: int) -> str:
    code = _proc.state(pid)
    if code is None:
        return "gone"
    return {"R": "running", "S": "sleeping", "D": "waiting on I/O", "Z": "zombie",
            "T": "stopped"}.get(code, code)


_children = _proc.children


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _listeners(pid: int) -> List[str]:
    """Listening TCP sockets held by ``pid`` (matched by inode in /proc/net/tcp*)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    found = []
    for row in _proc.tcp_listeners():
        if str(row.inode) in inodes:
            host, port = row.local.rsplit(":", 1)
            found.append(f"{_hex_host(host, row.v6)}:{int(port, 16)}")
    return found


def _hex_host(text: str, v6: bool) -> str:
    import socket
    import struct

    raw = bytes.fromhex(text)
    if not v6:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = struct.unpack("<4I", raw)
    return "[" + socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *words)) + "]"
