"""The pure-Python ceiling for an asyncio HTTP server: a bare Protocol that splits requests on
CRLFCRLF and calls the same ASGI app. No parser, no limits, no timeouts, no drain: a reference
row for benchmarks/throughput.py, never a server to use.

    python benchmarks/bare_asgi.py PORT
"""

import asyncio
import socket
import sys

from apps import asgi

_REASONS = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error"}


class BareProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            asyncio.ensure_future(self.call(method, target))

    async def call(self, method, target):
        scope = {"type": "http", "method": method.decode(), "path": target.decode(),
                 "headers": [], "query_string": b"", "http_version": "1.1"}
        parts = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                parts.append(b"HTTP/1.1 %d %s\r\n" % (message["status"],
                                                      _REASONS.get(message["status"], b"")))
                parts.extend(b"%s: %s\r\n" % pair for pair in message["headers"])
                parts.append(b"\r\n")
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.transport.write(b"".join(parts))

        await asgi(scope, receive, send)


async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BareProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
