"""A plain ASGI 3 application, no framework, served by graceful's own HTTP/1.1 server.

Run it:    graceful serve examples/asgi_app.py:app --bind web=127.0.0.1:8000 --pidfile /tmp/graceful-asgi-example.pid --ready-path /-/ready
Try it:    curl -i http://127.0.0.1:8000/
Upgrade:   kill -HUP $(cat /tmp/graceful-asgi-example.pid)
Stop:      kill -QUIT $(cat /tmp/graceful-asgi-example.pid)

Lifespan startup runs before the new process declares itself ready: if it fails, the upgrade
is rolled back and the old process keeps serving. This file is also the application of the
uvicorn example.
"""

import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # open connection pools, load models, ... here
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return  # (graceful answers WebSocket requests with 404 for now)
    body = f"hello from pid {os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": body})
