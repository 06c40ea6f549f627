"""Helpers shared by the tests: start processes safely, wait on conditions with deadlines."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, List, Optional, TypeVar

T = TypeVar("T")

PYTHON = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01,
              what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # sleep-ok: poll interval of a deadline-bounded wait


def read_line(stream, timeout: float = 10.0) -> str:
    """Read one line from a pipe of a child process, failing after ``timeout`` seconds."""
    fd = stream.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no line from child within {timeout}s (got {buf!r})")
            chunk = os.read(fd, 1)
            if not chunk:
                raise AssertionError(f"child closed its output (got {buf!r})")
            buf += chunk
    return buf.decode()


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_get(port: int, path: str = "/", host: str = "127.0.0.1", timeout: float = 10.0) -> bytes:
    """One HTTP/1.0 request on a fresh connection; returns the whole response."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def open_fds(pid: int | str = "self") -> List[int]:
    return sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))


def children_of(pid: int) -> List[int]:
    """Direct children of ``pid`` (from /proc), including zombies."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def process_state(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


class Processes:
    """Starts children in their own process group and kills every group on ``close``."""

    def __init__(self) -> None:
        self.started: List[subprocess.Popen] = []

    def spawn(self, args, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(args, **kwargs)
        self.started.append(proc)
        return proc

    def python(self, *args: str, **kwargs) -> subprocess.Popen:
        env = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        kwargs["env"] = env
        return self.spawn([PYTHON, *args], **kwargs)

    def close(self) -> None:
        for proc in self.started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream:
                    stream.close()
