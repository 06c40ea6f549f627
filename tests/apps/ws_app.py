"""A raw ASGI WebSocket application for the server tests (no framework).

Paths: ``/echo`` accepts (choosing the subprotocol ``chat`` when offered, with an ``x-pid``
header) and echoes every message; ``/deny`` answers the handshake with a 401 HTTP response
(the websocket.http.response extension); ``/reject`` closes before accepting (403);
``/boom`` raises after accepting (1011). With WS_APP_EVENTS set, every message received, every
echo that could not be sent and the disconnect are appended there as JSON lines.
"""

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
