"""A pure ASGI 3 application for the server tests (no framework).

The environment variable ASGI_APP_LIFESPAN chooses the lifespan behaviour: "ok" (default),
"fail" (startup fails), "raise" (startup raises), "unsupported" (raises on any lifespan scope),
"hang" (startup never completes: the server stays bound but never ready).
"""

import asyncio
import json
import os

LIFESPAN = os.environ.get("ASGI_APP_LIFESPAN", "ok")
EVENTS_FILE = os.environ.get("ASGI_APP_EVENTS")  # lifespan events are appended here


def _record(event):
    if EVENTS_FILE:
        with open(EVENTS_FILE, "a") as f:
            f.write(f"{os.getpid()} {event}\n")


async def lifespan(receive, send):
    if LIFESPAN == "unsupported":
        raise RuntimeError("no lifespan here")
    message = await receive()
    assert message["type"] == "lifespan.startup"
    if LIFESPAN == "fail":
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    if LIFESPAN == "raise":
        raise RuntimeError("startup exploded")
    if LIFESPAN == "hang":
        await asyncio.Event().wait()
    _record("startup")
    await send({"type": "lifespan.startup.complete"})
    message = await receive()
    assert message["type"] == "lifespan.shutdown"
    _record("shutdown")
    await send({"type": "lifespan.shutdown.complete"})


async def respond(send, body, status=200, headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"x-pid", str(os.getpid()).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive):
    chunks = []
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def two_receivers(receive, send):
    """Stream until the client leaves, with receive() pending in two tasks at once (as
    Starlette's StreamingResponse and a middleware do); records what each one got."""
    await read_body(receive)
    waiting = [asyncio.ensure_future(receive()) for _ in range(2)]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(1200):  # at most 60 s
        if all(task.done() for task in waiting):
            break
        await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
        await asyncio.sleep(0.05)
    _record("receivers " + " ".join(task.result()["type"] if task.done() else "pending" for task in waiting))
    for task in waiting:
        task.cancel()
    await send({"type": "http.response.body", "body": b""})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    assert scope["type"] == "http"
    path = scope["path"]
    if path == "/hello":
        await respond(send, b"hello\n", headers=[(b"content-length", b"6")])
    elif path == "/slow":
        await asyncio.sleep(0.2)
        await respond(send, b"slow\n")
    elif path == "/echo":
        await respond(send, await read_body(receive))
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"part %d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(64):  # 8 MiB through flow control
            await send({"type": "http.response.body", "body": b"x" * 131072, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/disconnect":
        await read_body(receive)
        message = await receive()  # blocks until the client goes away
        _record(message["type"])
    elif path == "/one-piece":  # a large body in one message
        await respond(send, b"x" * int(scope["query_string"]))
    elif path == "/deny":  # answers without reading the request body (a 401 to an upload)
        await respond(send, b"denied\n", status=401)
    elif path == "/two-receivers":
        await two_receivers(receive, send)
    elif path == "/error":
        raise RuntimeError("the application failed on purpose")
    elif path.startswith("/scope"):
        body = json.dumps({
            "http_version": scope["http_version"], "method": scope["method"],
            "path": scope["path"], "raw_path": scope["raw_path"].decode(),
            "query_string": scope["query_string"].decode(), "client": scope["client"],
            "server": scope["server"], "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
            "asgi": scope["asgi"], "scheme": scope["scheme"],
        }).encode()
        asgi = scope["asgi"]
        body = body[:-1] + b', "asgi_was_changed": %s}' % (b"true" if "changed" in asgi else b"false")
        asgi["changed"] = True  # an app may write to its scope; the next request must not see it
        await respond(send, body)
    else:
        await respond(send, b"not found\n", status=404)
