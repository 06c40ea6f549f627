"""An asyncio server (asyncio.start_server) that upgrades itself without failing a request.

Run it:    python examples/asyncio_server.py [BIND] [PIDFILE]
           (defaults: web=127.0.0.1:8001 and /tmp/graceful-asyncio-example.pid)
Try it:    curl -i http://127.0.0.1:8001/
Upgrade:   kill -HUP $(cat /tmp/graceful-asyncio-example.pid)
Stop:      kill -QUIT $(cat /tmp/graceful-asyncio-example.pid)
"""

import asyncio
import os
import sys

import graceful


async def main(bind, pidfile):
    upgrader = graceful.Upgrader(pidfile=pidfile)
    drain = graceful.AsyncioDrain(upgrader)

    async def handle(reader, writer):
        try:
            while True:
                drain.idle(writer)  # waiting for a request: may be closed on drain
                request_line = await reader.readline()
                if not request_line:
                    return
                drain.busy(writer)
                keep_alive = request_line.rstrip().endswith(b"HTTP/1.1")
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"connection:") and b"close" in line.lower():
                        keep_alive = False
                keep_alive = keep_alive and not drain.draining
                body = f"hello from pid {os.getpid()}\n".encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
                    len(body), b"" if keep_alive else b"Connection: close\r\n", body))
                await writer.drain()
                if not keep_alive:
                    return
        finally:
            writer.close()

    server = await asyncio.start_server(drain.wrap_handler(handle), sock=upgrader.listen(bind))
    await drain.serve(server)  # ready(), serve until upgraded or stopped, then drain


if __name__ == "__main__":
    bind = sys.argv[1] if len(sys.argv) > 1 else "web=127.0.0.1:8001"
    pidfile = sys.argv[2] if len(sys.argv) > 2 else "/tmp/graceful-asyncio-example.pid"
    asyncio.run(main(bind, pidfile))
