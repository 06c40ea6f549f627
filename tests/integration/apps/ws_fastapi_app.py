"""A FastAPI WebSocket app for test_websocket_clients.py: echo, broadcast, denial, and plain HTTP.

- ``/ws/echo``: greets with ``hello <pid>`` (so a client knows which process serves it), then
  echoes every message as it came (text as text, bytes as bytes). It accepts the first of the
  client's subprotocols that it knows (``chat.v2``, ``chat.v1``). With ``?conn=ID`` it writes
  the texts it received, in order, one a line, to ``$INTEGRATION_MARKERS/recv-ID`` when the
  connection ends, so a test can compare what the app got with what the client sent.
- ``/ws/broadcast``: every text a client sends goes to every client of this process.
- ``/ws/deny``: refuses the handshake with a 403 denial response (ASGI websocket.http.response).
- ``/fast``: a plain 200 with ``X-Pid``, for HTTP load in the same run.
"""

import os

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse

PID = str(os.getpid())
MARKERS = os.environ.get("INTEGRATION_MARKERS", "")
KNOWN_SUBPROTOCOLS = ("chat.v2", "chat.v1")

app = FastAPI()
_broadcast_clients = set()


@app.get("/fast")
def fast():
    return PlainTextResponse("fast\n", headers={"X-Pid": PID})


@app.websocket("/ws/echo")
async def echo(websocket: WebSocket, conn: str = ""):
    offered = websocket.scope.get("subprotocols", [])
    chosen = next((p for p in offered if p in KNOWN_SUBPROTOCOLS), None)
    await websocket.accept(subprotocol=chosen)
    received = []
    try:
        await websocket.send_text(f"hello {PID}")
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                received.append(message["text"])
                await _send_quietly(websocket, text=message["text"])
            else:
                await _send_quietly(websocket, data=message.get("bytes") or b"")
    except WebSocketDisconnect:
        return
    finally:
        if conn and MARKERS:
            _write_atomically(os.path.join(MARKERS, f"recv-{conn}"), "".join(
                f"{text}\n" for text in received))


async def _send_quietly(websocket: WebSocket, text=None, data=None) -> None:
    """Echo unless the server has already sent its close frame: a message that arrives after
    it cannot be answered (RFC 6455 5.5.1), but it was received, and the test counts that."""
    try:
        if text is not None:
            await websocket.send_text(text)
        else:
            await websocket.send_bytes(data)
    except (OSError, RuntimeError, WebSocketDisconnect):
        pass


def _write_atomically(path: str, content: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(content)
    os.rename(path + ".tmp", path)


@app.websocket("/ws/broadcast")
async def broadcast(websocket: WebSocket):
    await websocket.accept()
    _broadcast_clients.add(websocket)
    try:
        while True:
            text = await websocket.receive_text()
            for client in list(_broadcast_clients):
                try:
                    await client.send_text(text)
                except (OSError, RuntimeError):
                    _broadcast_clients.discard(client)
    except WebSocketDisconnect:
        pass
    finally:
        _broadcast_clients.discard(websocket)


@app.websocket("/ws/deny")
async def deny(websocket: WebSocket):
    await websocket.send_denial_response(PlainTextResponse("go away\n", status_code=403))
