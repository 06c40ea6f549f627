"""What /proc says about processes (Linux): their state and their children."""

from __future__ import annotations

import os
from typing import Iterator, List, Optional, Tuple

__all__ = ["state", "running", "children", "reap_exited"]


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


def children(pid: int) -> List[int]:
    """The running (non-zombie) children of ``pid``, in pid order."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
                kids.append(int(entry))
    return sorted(kids)


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
