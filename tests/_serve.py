"""Start ``graceful serve`` for tests, and a minimal HTTP/1.1 client on raw sockets."""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Dict, List, Optional, Tuple

from _support import ROOT, free_port, wait_for

APPS = os.path.join(ROOT, "tests", "apps")


class Served:
    """``python -m graceful serve APP`` on a free loopback port; stderr goes to a log file."""

    _count = 0

    def __init__(self, procs, tmp_path, app: str, *extra: str, port: Optional[int] = None,
                 binds: Optional[List[str]] = None, env=None, wait: bool = True) -> None:
        self.port = port or free_port()
        Served._count += 1
        self.log_path = tmp_path / f"serve-{self.port}-{Served._count}.log"
        binds = binds or [f"web=127.0.0.1:{self.port}"]
        args = ["-m", "graceful", "serve", os.path.join(APPS, app)]
        for bind in binds:
            args += ["--bind", bind]
        self.log_file = open(self.log_path, "w")
        self.proc = procs.python(*args, *extra, stderr=self.log_file, env=env, cwd=str(tmp_path))
        self.log_file.close()
        if wait:
            self.wait_ready(self.proc.pid)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, pid: int, timeout: float = 30.0) -> None:
        marker = f"ready: pid {pid} "
        wait_for(lambda: marker in self.log() or self.proc.poll() is not None, timeout,
                 what=f"pid {pid} to be ready")
        assert marker in self.log(), self.log()

    def wait(self, predicate, timeout: float = 30.0, what: str = "condition"):
        """``wait_for`` that shows the end of the server's log when it times out."""
        try:
            return wait_for(predicate, timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; server log:\n{self.log()[-4000:]}") from None

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


class Response:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes, raw_head: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.raw_head = raw_head

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:60]!r}>"


class Client:
    """Requests on one connection, reading responses by their framing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def _take_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError(f"connection closed mid-line: {self.buffer[:200]!r}")
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise EOFError(f"connection closed after {len(self.buffer)} of {n} bytes")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def response(self, method: str = "GET") -> Response:
        while True:
            while b"\r\n\r\n" not in self.buffer:
                if not self._fill():
                    raise EOFError(f"connection closed before a response: {self.buffer[:200]!r}")
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            headers: Dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.decode("latin-1").partition(":")
                key = name.strip().lower()
                headers[key] = (headers[key] + ", " if key in headers else "") + value.strip()
            if status != 100:
                break
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._take_line().split(b";")[0], 16)
                if size == 0:
                    while self._take_line():
                        pass
                    break
                body += self._take(size)
                assert self._take(2) == b"\r\n"
        else:
            while self._fill():
                pass
            body, self.buffer = self.buffer, b""
        return Response(status, headers, body, head)

    def request(self, method: str, path: str, body: bytes = b"", headers: Tuple = (),
                chunks: Optional[List[bytes]] = None) -> Response:
        lines = [f"{method} {path} HTTP/1.1", "Host: test"]
        lines += [f"{n}: {v}" for n, v in headers]
        if chunks is not None:
            lines.append("Transfer-Encoding: chunked")
            payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        elif body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
            payload = body
        else:
            payload = b""
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        return self.response(method)

    def closed_by_server(self, timeout: float = 10.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return False


def wait_exit(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    return proc.wait(timeout=timeout)
