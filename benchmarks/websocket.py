"""WebSocket echo round trips per second: graceful against uvicorn (websockets, wsproto).

    python benchmarks/websocket.py                  # 16 B and 64 KB, 1 and 32 connections
    python benchmarks/websocket.py --duration 10 --sizes 16 --connections 1 32 64

The app is the raw ASGI echo of benchmarks/apps_ws.py; each server is one process, started in
the same run, on a listening socket this script binds. uvicorn runs on the stdlib asyncio loop,
as graceful does. A missing uvicorn, websockets or wsproto is reported and skipped. Each
connection sends one binary message, waits for its whole echo, and sends the next; no
compression is offered, so what is measured is framing and the server's I/O path. The client is
a minimal stdlib asyncio one with its frames prepared once (masked with a fixed key), so it
costs far less per round trip than any server under test. The table gives round trips per
second, and per second of server CPU. Results also go to benchmarks/results/websocket.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import struct
import sys
import time
from typing import Dict, List

import apps_ws  # benchmarks/, on sys.path as the script's directory

RESULTS = os.path.join(apps_ws.HERE, "results", "websocket.json")
_MASK = b"\x12\x34\x56\x78"


def main(argv=None) -> int:
    args = _parse(argv)
    servers = apps_ws.server_commands(["graceful", "websockets", "wsproto"])
    results: List[Dict] = []
    for label, command in servers:
        server = apps_ws.ServerProcess(command)
        try:
            asyncio.run(_warm_up(server.port))
            for size in args.sizes:
                for connections in args.connections:
                    cpu = server.cpu_seconds()
                    trips, seconds = asyncio.run(
                        _measure(server.port, size, connections, args.duration))
                    cpu = server.cpu_seconds() - cpu
                    results.append({"server": label, "size": size, "connections": connections,
                                    "round_trips": trips, "seconds": seconds,
                                    "per_second": trips / seconds,
                                    "server_cpu_seconds": cpu})
                    print(f"{label:22} {size:>7} B x{connections:<3} "
                          f"{trips / seconds:10.0f} rt/s", file=sys.stderr, flush=True)
        finally:
            log = server.stop()
        if server.proc.returncode not in (-9, 0):
            print(f"{label} exited {server.proc.returncode}:\n{log[-2000:]}", file=sys.stderr)
    print(_table(results))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"duration": args.duration, "results": results}, f, indent=1)
    return 0


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per measurement (5)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 65536],
                        help="message sizes in bytes (16 65536)")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 32],
                        help="concurrent connections (1 32)")
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error(f"--duration {args.duration}: give a positive number of seconds")
    if min(args.sizes) < 0 or min(args.connections) < 1:
        parser.error("--sizes must be >= 0 and --connections >= 1")
    return args


# --- the client ----------------------------------------------------------------------------

def _client_frame(payload: bytes) -> bytes:
    """One masked binary frame (RFC 6455 5.2), FIN set."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x82, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    key = (_MASK * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + _MASK + masked


async def _open(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head[:200]!r}")
    return reader, writer


async def _read_message(reader) -> int:
    """Read one unfragmented server frame; return its payload length."""
    first, second = await reader.readexactly(2)
    n = second & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    await reader.readexactly(n)
    # Anything but a binary frame (a keepalive ping) is skipped; runs are shorter than the
    # servers' ping timeouts, so leaving it unanswered changes nothing.
    return n if first & 0x0F == 0x2 else -1


async def _connection(port: int, frame: bytes, size: int, deadline: float) -> int:
    reader, writer = await _open(port)
    trips = 0
    try:
        while time.monotonic() < deadline:
            writer.write(frame)
            while await _read_message(reader) != size:
                pass
            trips += 1
    finally:
        writer.close()
    return trips


async def _measure(port: int, size: int, connections: int, duration: float):
    frame = _client_frame(os.urandom(size))
    started = time.monotonic()
    counts = await asyncio.gather(*(_connection(port, frame, size, started + duration)
                                    for _ in range(connections)))
    return sum(counts), time.monotonic() - started


async def _warm_up(port: int) -> None:
    await _measure(port, 16, 4, 0.5)


def _table(results: List[Dict]) -> str:
    lines = ["| server | message | connections | round trips/s | per server CPU s |",
             "|---|---|---|---|---|"]
    for r in results:
        per_cpu = r["round_trips"] / r["server_cpu_seconds"] if r["server_cpu_seconds"] else 0
        lines.append(f"| {r['server']} | {r['size']} B | {r['connections']} | "
                     f"{r['per_second']:,.0f} | {per_cpu:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
