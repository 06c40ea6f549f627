"""What /proc says (Linux): processes (state, children) and listening TCP sockets."""

from __future__ import annotations

import os
from typing import Iterator, List, NamedTuple, Optional, Tuple

__all__ = ["state", "running", "children", "group", "reap_exited", "TCPSocket", "tcp_sockets",
           "tcp_listeners", "LISTEN", "ESTABLISHED"]


def _stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state letter, parent pid), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the name may hold spaces and ")"
        return fields[0].decode(), int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def state(pid: int) -> Optional[str]:
    """The state letter (R, S, D, Z, ...), or None when the process is gone."""
    stat = _stat(pid)
    return stat[0] if stat else None


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    return state(pid) not in (None, "Z", "X")


def children(pid: int, zombies: bool = False) -> List[int]:
    """The running children of ``pid`` (and its zombies, with ``zombies``), in pid order."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and (zombies or stat[0] not in ("Z", "X")):
                kids.append(int(entry))
    return sorted(kids)


class Member(NamedTuple):
    """A process of a process group, as /proc/PID/stat shows it."""

    pid: int
    state: str  # R, S, D, Z, ...
    cpu_seconds: float  # user + system time so far


def group(pgid: int) -> List[Member]:
    """Every process of process group ``pgid`` (zombies included: check ``state``)."""
    tick = os.sysconf("SC_CLK_TCK")
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[2]) == pgid:
                members.append(Member(int(entry), fields[0].decode(),
                                      (int(fields[11]) + int(fields[12])) / tick))
        except (OSError, IndexError, ValueError):
            continue  # it exited meanwhile
    return members


def reap_exited() -> Iterator[Tuple[int, int]]:
    """(pid, wait status) of every child that has exited, reaping each; never blocks."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


class TCPSocket(NamedTuple):
    """One TCP socket as /proc/net/tcp{,6} shows it."""

    local: str  # the kernel's hex "ADDRESS:PORT", as printed
    remote: str
    uid: int
    inode: int
    v6: bool

    @property
    def local_port(self) -> int:
        return int(self.local.rsplit(":", 1)[1], 16)

    @property
    def remote_port(self) -> int:
        return int(self.remote.rsplit(":", 1)[1], 16)


LISTEN, ESTABLISHED = "0A", "01"  # the kernel's TCP state numbers, as printed


def tcp_sockets(state: str) -> List[TCPSocket]:
    """The TCP sockets of this network namespace in ``state`` (empty where /proc has none)."""
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == state:
                found.append(TCPSocket(fields[1], fields[2], int(fields[7]), int(fields[9]), v6))
    return found


def tcp_listeners() -> List[TCPSocket]:
    """Every listening TCP socket of this network namespace."""
    return tcp_sockets(LISTEN)
