"""An asyncio HTTP/1.1 keep-alive server under graceful (for tests).

    python asyncio_child.py BIND [--protocol] [--graceful-timeout S]

GET /fast answers at once, /slow after 200 ms, /until-drain once the drain has begun (a request
that is in flight across the SIGQUIT however the processes are scheduled), /hang never; responses
carry X-Pid.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from graceful import Upgrader
from graceful.asyncio_adapter import AsyncioDrain


def response(drain: AsyncioDrain, status: str = "200 OK") -> bytes:
    body = f"{os.getpid()}\n".encode()
    close = b"Connection: close\r\n" if drain.draining else b""
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nX-Pid: {os.getpid()}\r\n"
            .encode() + close + b"\r\n" + body)


async def pause(drain: AsyncioDrain, path: str) -> None:
    if path == "/slow":
        await asyncio.sleep(0.2)  # the slow request under load
    elif path == "/until-drain":
        await drain.upgrader.wait_async()
    elif path == "/hang":
        await asyncio.Event().wait()


def make_stream_handler(drain: AsyncioDrain):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                drain.idle(writer)
                line = await reader.readline()
                if not line:
                    return
                drain.busy(writer)
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                await pause(drain, line.split()[1].decode())
                writer.write(response(drain))
                await writer.drain()
                if drain.draining:
                    return
        finally:
            writer.close()
    return handle


class HttpProtocol(asyncio.Protocol):
    """The same server as a Protocol: one request at a time per connection."""

    def __init__(self, drain: AsyncioDrain) -> None:
        self.drain = drain
        self.buffer = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.drain.idle(transport)

    def data_received(self, data: bytes) -> None:
        self.drain.busy(self.transport)
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            path = head.split(b"\r\n")[0].split()[1].decode()
            asyncio.get_running_loop().create_task(self.answer(path))

    async def answer(self, path: str) -> None:
        await pause(self.drain, path)
        self.transport.write(response(self.drain))
        if self.drain.draining:
            self.transport.close()
        else:
            self.drain.idle(self.transport)


def _announce_ready(upgrader: Upgrader) -> None:
    """Print "READY <pid>" once the generation is really serving (after ``ready()``)."""
    upgrader.lifecycle.watch(
        lambda state: state == "serving" and print(f"READY {os.getpid()}", flush=True))


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bind")
    parser.add_argument("--protocol", action="store_true")
    parser.add_argument("--graceful-timeout", type=float, default=30.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(relativeCreated)d %(message)s")
    upgrader = Upgrader(graceful_timeout=args.graceful_timeout)
    drain = AsyncioDrain(upgrader)
    sock = upgrader.listen(args.bind)
    if args.protocol:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(drain.wrap_protocol(lambda: HttpProtocol(drain)), sock=sock)
    else:
        server = await asyncio.start_server(drain.wrap_handler(make_stream_handler(drain)), sock=sock)
    _announce_ready(upgrader)
    await drain.serve(server)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
