"""WebSocket echo round trips per second: graceful against uvicorn (websockets, wsproto).

    python benchmarks/websocket.py                  # 16 B and 64 KB, 1 and 32 connections
    python benchmarks/websocket.py --duration 10 --sizes 16 --connections 1 32 64

The app is the raw ASGI echo of benchmarks/apps_ws.py; each server is one process, started in
the same run, on a listening socket this script binds. uvicorn runs on the stdlib asyncio loop,
as graceful does. A missing uvicorn, websockets or wsproto is reported and skipped. Each
connection sends one binary message, waits for its whole echo, and sends the next; no
compression is offered, so what is measured is framing and the server's I/O path. The client is
a minimal stdlib asyncio one with its frames prepared once (masked with a fixed key), so it
costs far less per round trip than any server under test (an asyncio Protocol, one callback per
echo; its CPU is reported too, so a client-bound run shows). The servers run side by side and
are measured in turn on each cell, --rounds times (3); the tables give the median round trips per
second and per second of server CPU, and graceful's ratios to each other server (median, and
each round's). Results also go to benchmarks/results/websocket.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import struct
import sys
import time
from typing import Dict, List

import apps_ws  # benchmarks/, on sys.path as the script's directory

RESULTS = os.path.join(apps_ws.HERE, "results", "websocket.json")
_MASK = b"\x12\x34\x56\x78"


def main(argv=None) -> int:
    args = _parse(argv)
    servers = [(label, apps_ws.ServerProcess(command))
               for label, command in apps_ws.server_commands(["graceful", "websockets", "wsproto"])]
    results: List[Dict] = []
    try:
        for _, server in servers:
            asyncio.run(_warm_up(server.port))
        # Interleaved: every server is measured on each cell before the next cell, round after
        # round, so that a change in the machine's load falls on all of them alike.
        for round_ in range(1, args.rounds + 1):
            for size in args.sizes:
                for connections in args.connections:
                    for label, server in servers:
                        results.append(_cell(label, server, size, connections, args.duration,
                                             round_))
    finally:
        for label, server in servers:
            log = server.stop()
            if server.proc.returncode not in (-9, 0):
                print(f"{label} exited {server.proc.returncode}:\n{log[-2000:]}",
                      file=sys.stderr)
    ratios = _ratios(results)
    print(_table(results, ratios))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"duration": args.duration, "rounds": args.rounds,
                   "command": "python benchmarks/websocket.py " + " ".join(argv or sys.argv[1:]),
                   "ratios": ratios, "results": results}, f, indent=1)
        f.write("\n")
    return 0


def _cell(label: str, server, size: int, connections: int, duration: float,
          round_: int) -> Dict:
    cpu, client_cpu = server.cpu_seconds(), time.process_time()
    trips, seconds = asyncio.run(_measure(server.port, size, connections, duration))
    cpu = server.cpu_seconds() - cpu
    client_cpu = time.process_time() - client_cpu
    print(f"{label:22} {size:>7} B x{connections:<3} {trips / seconds:10.0f} rt/s  "
          f"server CPU {cpu / seconds:4.0%}  client CPU {client_cpu / seconds:4.0%}",
          file=sys.stderr, flush=True)
    return {"server": label, "round": round_, "size": size, "connections": connections,
            "round_trips": trips, "seconds": seconds, "per_second": trips / seconds,
            "server_cpu_seconds": cpu, "client_cpu_seconds": client_cpu}


def _per_cpu(r: Dict) -> float:
    return r["round_trips"] / r["server_cpu_seconds"] if r["server_cpu_seconds"] else 0.0


def _ratios(results: List[Dict]) -> List[Dict]:
    """graceful over each other server, cell by cell and round by round: wall clock (round
    trips per second) and per server CPU second; the median of the rounds."""
    out = []
    cells = {(r["round"], r["size"], r["connections"], r["server"]): r for r in results}
    for other in sorted({r["server"] for r in results} - {"graceful"}):
        for size, connections in sorted({(r["size"], r["connections"]) for r in results}):
            wall, cpu = [], []
            for round_ in sorted({r["round"] for r in results}):
                ours = cells.get((round_, size, connections, "graceful"))
                theirs = cells.get((round_, size, connections, other))
                if ours and theirs and theirs["per_second"] and _per_cpu(theirs):
                    wall.append(ours["per_second"] / theirs["per_second"])
                    cpu.append(_per_cpu(ours) / _per_cpu(theirs))
            if wall:
                out.append({"versus": other, "size": size, "connections": connections,
                            "wall": wall, "cpu": cpu, "wall_median": statistics.median(wall),
                            "cpu_median": statistics.median(cpu)})
    return out


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per measurement (5)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times to measure every cell, interleaved (3); ratios: median")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 65536],
                        help="message sizes in bytes (16 65536)")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 32],
                        help="concurrent connections (1 32)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: give at least 1")
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


class _EchoClient(asyncio.Protocol):
    """One connection: the handshake, then send a frame, read its whole echo, send the next.

    A Protocol rather than streams: one callback per echo and no coroutine switch, so the
    client spends far less per round trip than the servers do (its CPU is in the results).
    """

    def __init__(self, port: int, frame: bytes, size: int, deadline: float,
                 done: "asyncio.Future[int]") -> None:
        self.port, self.frame, self.size = port, frame, size
        self.deadline, self.done = deadline, done
        self.buf = bytearray()
        self.open = False
        self.trips = 0
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                        f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._finish(RuntimeError(f"handshake refused: {bytes(buf[:200])!r}"))
                return
            del buf[:end + 4]
            self.open = True
            self.transport.write(self.frame)
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            head = 2 if n < 126 else 4 if n == 126 else 10
            if len(buf) < head:
                return
            if n == 126:
                n = struct.unpack_from("!H", buf, 2)[0]
            elif n == 127:
                n = struct.unpack_from("!Q", buf, 2)[0]
            if len(buf) < head + n:
                return
            # Anything but our binary echo (a keepalive ping) is skipped; runs are shorter than
            # the servers' ping timeouts, so leaving it unanswered changes nothing.
            echo = buf[0] & 0x0F == 0x2 and n == self.size
            del buf[:head + n]
            if echo:
                self.trips += 1
                if time.monotonic() < self.deadline:
                    self.transport.write(self.frame)
                else:
                    self._finish(None)
                    return

    def connection_lost(self, exc) -> None:
        self._finish(exc or ConnectionError("the server closed the connection"))

    def _finish(self, error) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(self.trips)
            else:
                self.done.set_exception(error)
        self.transport.close()


async def _connection(port: int, frame: bytes, size: int, deadline: float) -> int:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    await loop.create_connection(lambda: _EchoClient(port, frame, size, deadline, done),
                                 "127.0.0.1", port)
    return await asyncio.wait_for(done, deadline - time.monotonic() + 30)


async def _measure(port: int, size: int, connections: int, duration: float):
    frame = _client_frame(os.urandom(size))
    started = time.monotonic()
    counts = await asyncio.gather(*(_connection(port, frame, size, started + duration)
                                    for _ in range(connections)))
    return sum(counts), time.monotonic() - started


async def _warm_up(port: int) -> None:
    await _measure(port, 16, 4, 0.5)


def _table(results: List[Dict], ratios: List[Dict]) -> str:
    lines = ["| server | message | connections | round trips/s | per server CPU s |",
             "|---|---|---|---|---|"]
    cells: Dict[tuple, List[Dict]] = {}
    for r in results:
        cells.setdefault((r["server"], r["size"], r["connections"]), []).append(r)
    for (server, size, connections), rs in cells.items():
        wall = statistics.median(r["per_second"] for r in rs)
        cpu = statistics.median(_per_cpu(r) for r in rs)
        lines.append(f"| {server} | {_size(size)} | {connections} | {wall:,.0f} | {cpu:,.0f} |")
    lines += ["", "| graceful versus | message | connections | wall clock | per server CPU s |",
              "|---|---|---|---|---|"]
    for q in ratios:
        lines.append(f"| {q['versus']} | {_size(q['size'])} | {q['connections']} | "
                     f"{q['wall_median']:.2f}x ({', '.join(f'{x:.2f}' for x in q['wall'])}) | "
                     f"{q['cpu_median']:.2f}x ({', '.join(f'{x:.2f}' for x in q['cpu'])}) |")
    return "\n".join(lines)


def _size(size: int) -> str:
    return f"{size // 1024} KB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


if __name__ == "__main__":
    sys.exit(main())
