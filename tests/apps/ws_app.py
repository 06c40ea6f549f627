"""A raw ASGI WebSocket application for the server tests (no framework).

Paths: ``/echo`` accepts (choosing the subprotocol ``chat`` when offered, with an ``x-pid``
header) and echoes every message; ``/deny`` answers the handshake with a 401 HTTP response
(the websocket.http.response extension); ``/reject`` closes before accepting (403);
``/boom`` raises after accepting (1011); ``/flow`` does not receive until the file WS_APP_TRIGGER exists, then counts what
came until "end", sends 48 MB back and reports its peak memory. With WS_APP_EVENTS set, every message received, every
echo that could not be sent and the disconnect are appended there as JSON lines.
"""

import asyncio
import json
import os

EVENTS_FILE = os.environ.get("WS_APP_EVENTS")


def _record(**event):
    if EVENTS_FILE:
        event["pid"] = os.getpid()
        with open(EVENTS_FILE, "a") as f:
            f.write(json.dumps(event) + "\n")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"websocket only\n"})
        return
    assert (await receive())["type"] == "websocket.connect"
    path = scope["path"]
    if path == "/deny":
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"x-denied", b"yes")]})
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"entry\n"})
        return
    if path == "/reject":
        await send({"type": "websocket.close"})
        return
    subprotocol = "chat" if "chat" in scope["subprotocols"] else None
    await send({"type": "websocket.accept", "subprotocol": subprotocol,
                "headers": [(b"x-pid", str(os.getpid()).encode())]})
    if path == "/boom":
        raise RuntimeError("the application failed on purpose")
    if path == "/flow":
        await _flow(receive, send)
        return
    if path == "/scope":
        view = {k: v.decode("latin-1") if isinstance(v, bytes) else v
                for k, v in scope.items() if k not in ("headers", "state")}
        await send({"type": "websocket.send", "text": json.dumps(view)})
    await _echo(receive, send)


async def _echo(receive, send):
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _record(event="disconnect", code=message["code"])
            return
        data = message.get("text")
        if data is None:
            data = message["bytes"]
        text = data if isinstance(data, str) else None
        if text == "close-me":
            await send({"type": "websocket.close", "code": 4000, "reason": "asked"})
            continue
        _record(event="received", data=text if text is not None else data.hex())
        try:
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": data})
        except OSError:  # the server is closing this WebSocket (ASGI: an OSError)
            _record(event="unechoed", data=text if text is not None else data.hex())


def _memory_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


async def _flow(receive, send):
    await send({"type": "websocket.send", "text": json.dumps({"rss_kb": _memory_kb("VmRSS")})})
    trigger = os.environ["WS_APP_TRIGGER"]
    for _ in range(6000):  # the test decides when we start receiving (bounded: 2 minutes)
        if os.path.exists(trigger):
            break
        await asyncio.sleep(0.02)  # deliberate: polls a file, not a synchronisation
    count = size = 0
    while True:
        message = await receive()
        if message.get("text") == "end":
            break
        count += 1
        size += len(message["bytes"])
    block = b"\x01" * (1 << 20)
    for _ in range(48):
        await send({"type": "websocket.send", "bytes": block})
    await send({"type": "websocket.send", "text": json.dumps(
        {"count": count, "bytes": size, "hwm_kb": _memory_kb("VmHWM")})})
