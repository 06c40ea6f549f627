"""A small HTTP/1.1 load generator on raw asyncio streams, for the demo and the benchmarks.

Every request is classified: ``ok`` (2xx), ``bad_status``, ``refused`` (nobody listening),
``reset`` (connection reset or broken pipe), ``eof`` (closed before a complete response),
``timeout``, ``other``. A keep-alive connection the server closed while it was idle, seen before
the next request is written, is reopened and is not an error; once a request is written, any
failure counts. Runs are bounded in time and in requests.
"""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

KINDS = ("ok", "bad_status", "refused", "reset", "eof", "timeout", "other")
BUCKET = 0.1  # seconds per point of the time series


@dataclass
class Stats:
    """What a load run saw."""

    counts: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    latencies: List[float] = field(default_factory=list)  # seconds, successful requests
    series: Dict[int, List[int]] = field(default_factory=dict)  # bucket -> [ok, errors]
    first_seen: Dict[int, float] = field(default_factory=dict)  # pid -> time of first response
    samples: List[str] = field(default_factory=list)  # a few error descriptions
    started: float = field(default_factory=time.monotonic)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return self.total - self.counts["ok"]

    def record(self, kind: str, latency: float = 0.0, pid: Optional[int] = None,
               detail: str = "") -> None:
        now = time.monotonic()
        self.counts[kind] += 1
        point = self.series.setdefault(int((now - self.started) / BUCKET), [0, 0])
        if kind == "ok":
            self.latencies.append(latency)
            point[0] += 1
            if pid is not None and pid not in self.first_seen:
                self.first_seen[pid] = now
        else:
            point[1] += 1
            if len(self.samples) < 20:
                self.samples.append(f"{kind}: {detail}")

    def percentile(self, p: float) -> Optional[float]:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def to_dict(self) -> dict:
        ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
        return {
            "total": self.total,
            "failed": self.failed,
            "counts": dict(self.counts),
            "latency_ms": {"p50": ms(self.percentile(50)), "p90": ms(self.percentile(90)),
                           "p99": ms(self.percentile(99)),
                           "max": ms(max(self.latencies) if self.latencies else None)},
            "series": [{"t": round(k * BUCKET, 1), "ok": v[0], "errors": v[1]}
                       for k, v in sorted(self.series.items())],
            "pids": {str(pid): round(t - self.started, 3) for pid, t in self.first_seen.items()},
            "error_samples": list(self.samples),
        }


class LoadGenerator:
    """``concurrency`` clients sending GET requests for ``paths`` in turn."""

    def __init__(self, port: int = 0, *, host: str = "127.0.0.1", unix: Optional[str] = None,
                 concurrency: int = 8, mode: str = "keepalive",
                 paths: Sequence[str] = ("/fast",), timeout: float = 10.0,
                 max_requests: int = 1_000_000, stats: Optional[Stats] = None) -> None:
        if mode not in ("keepalive", "fresh"):
            raise ValueError(f"mode must be 'keepalive' or 'fresh', not {mode!r}")
        self.host, self.port, self.unix = host, port, unix
        self.concurrency, self.mode, self.paths = concurrency, mode, tuple(paths)
        self.timeout, self.max_requests = timeout, max_requests
        self.stats = stats if stats is not None else Stats()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    async def run(self, duration: float) -> Stats:
        """Run for ``duration`` seconds (or until ``stop()``/``max_requests``)."""
        deadline = time.monotonic() + duration
        await asyncio.gather(*(self._client(i, deadline) for i in range(self.concurrency)))
        return self.stats

    def start(self, max_duration: float = 600.0) -> "LoadGenerator":
        """Run in a background thread with its own event loop until ``stop()``."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self.run(max_duration)),
                                        name="graceful-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Stats:
        self._stopping = True
        if self._thread is not None:
            self._thread.join(self.timeout + 30)
        return self.stats

    async def _client(self, index: int, deadline: float) -> None:
        conn: Optional[Tuple[asyncio.StreamReader, asyncio.StreamWriter]] = None
        turn = index
        try:
            while not self._stopping and time.monotonic() < deadline \
                    and self.stats.total < self.max_requests:
                path = self.paths[turn % len(self.paths)]
                turn += 1
                if conn is not None and conn[0].at_eof():
                    conn = _close(conn)  # closed by the server while idle: not an error
                if conn is None:
                    conn = await self._connect()
                    if conn is None:
                        await asyncio.sleep(0.01)  # refused: do not spin while nobody listens
                        continue
                conn = await self._request(conn, path)
        finally:
            if conn is not None:
                _close(conn)

    async def _connect(self) -> Optional[Tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        try:
            if self.unix:
                opening = asyncio.open_unix_connection(self.unix)
            else:
                opening = asyncio.open_connection(self.host, self.port)
            return await asyncio.wait_for(opening, self.timeout)
        except Exception as exc:
            self.stats.record(_classify(exc), detail=f"connect: {exc!r}")
            return None

    async def _request(self, conn, path: str):
        reader, writer = conn
        close = self.mode == "fresh"
        request = (f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                   + ("Connection: close\r\n" if close else "") + "\r\n").encode()
        started = time.monotonic()
        try:
            writer.write(request)
            status, headers = await asyncio.wait_for(_read_response(reader), self.timeout)
        except Exception as exc:
            self.stats.record(_classify(exc), detail=f"{path}: {exc!r}")
            return _close(conn)
        latency = time.monotonic() - started
        pid = headers.get("x-pid")
        if 200 <= status < 300:
            self.stats.record("ok", latency, int(pid) if pid and pid.isdigit() else None)
        else:
            self.stats.record("bad_status", detail=f"{path}: status {status}")
        connection = headers.get("connection", "").lower()
        if close or connection == "close" or (
                headers.get(":version") == "HTTP/1.0" and connection != "keep-alive"):
            return _close(conn)  # the server ends this connection after the response
        return conn


async def _read_response(reader: asyncio.StreamReader) -> Tuple[int, Dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"bad status line {lines[0]!r}")
    headers = {":version": parts[0]}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    else:
        await reader.read()
    return int(parts[1]), headers


def _classify(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ENOENT:
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "eof"
    return "other"


def _close(conn) -> None:
    conn[1].close()
    return None
