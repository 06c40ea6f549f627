"""Hello-world WSGI and ASGI applications for the benchmarks.

``/slow`` takes 200 ms; every response carries ``X-Pid`` so a benchmark can tell generations
apart.
"""

import asyncio
import os
import time

PID = str(os.getpid()).encode()


def wsgi(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(0.2)  # the slow request under test
    body = b"Hello, world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                              ("X-Pid", PID.decode())])
    return [body]


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow":
        await asyncio.sleep(0.2)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"14"),
                            (b"x-pid", PID)]})
    await send({"type": "http.response.body", "body": b"Hello, world!\n"})
