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

from graceful._proc import ESTABLISHED, tcp_sockets

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


def wait_established(server_port: int, clients, timeout: float = 10.0) -> None:
    """Wait until the server side of each client connection is established in the kernel.

    ``connect()`` returns once the client saw the SYN-ACK; the server learns of the connection
    only when the final ACK arrives, which under load can lag behind. A listener closed in that
    gap resets the connection, so tests that then stop the server wait for this first.
    """
    wanted = {c.getsockname()[1] for c in clients}

    def established() -> bool:
        seen = {row.remote_port for row in tcp_sockets(ESTABLISHED)
                if row.local_port == server_port}
        return wanted <= seen

    wait_for(established, timeout, what=f"{len(wanted)} connection(s) established at the server")


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
        reap_orphans()


def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (Linux), as a supervisor is:
    generations that outlive their parent then stay visible to the test and are reaped here."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans(exclude=()) -> None:
    """Reap exited children that no Popen object owns (orphaned generations); pass the pids of
    Popen objects in ``exclude`` so their exit status stays theirs to collect."""
    for pid in children_of(os.getpid()):
        if pid not in exclude and process_state(pid) == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


class Load:
    """Bounded background HTTP load from ``clients`` threads, each cycling through ``paths``.

    Keep-alive clients reuse one connection; a connection the server closed while it was idle
    (seen before the next request is written) is reopened and is not a failure. Every request
    that was written and did not get a complete 200 response is a failure.
    """

    def __init__(self, port: int, *, keepalive: bool, paths=("/fast",), clients: int = 4,
                 max_requests: int = 100_000, max_seconds: float = 120.0,
                 host: str = "127.0.0.1") -> None:
        import threading

        self.port, self.host, self.keepalive, self.paths = port, host, keepalive, tuple(paths)
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.ok = 0
        self.failures: List[str] = []
        self.pids: List[int] = []  # pids in order of first response
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(clients)]

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> "Load":
        self._stop.set()
        for t in self._threads:
            t.join(self.max_seconds + 30)
        return self

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    def wait_requests(self, n: int, timeout: float = 60.0) -> None:
        wait_for(lambda: self.total >= n or self._stop.is_set(), timeout, what=f"{n} requests")

    def _client(self, index: int) -> None:
        import http.client

        deadline = time.monotonic() + self.max_seconds
        conn = None
        i = index
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.total >= self.max_requests:
                    return
            path = self.paths[i % len(self.paths)]
            i += 1
            if conn is not None and _closed_by_peer(conn):
                conn.close()
                conn = None
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                headers = {} if self.keepalive else {"Connection": "close"}
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise AssertionError(f"status {response.status}: {body[:100]!r}")
                pid = int(response.getheader("X-Pid", "0"))
                with self._lock:
                    self.ok += 1
                    if pid not in self.pids:
                        self.pids.append(pid)
                if not self.keepalive or response.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # every written request that failed is counted
                with self._lock:
                    self.failures.append(f"{path}: {exc!r}")
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


def _closed_by_peer(conn) -> bool:
    sock = conn.sock
    if sock is None:
        return True
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        if not sel.select(0):
            return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
