"""A plain ASGI app whose one response waits in two receive() calls at once, as Starlette's
StreamingResponse under a BaseHTTPMiddleware does: both must get http.disconnect when the
client leaves.

/two-receivers starts a streaming response, starts two tasks that await receive(), writes
"waiting" to INTEGRATION_MARKERS/receivers once both are blocked, and once the first has its
message gives the other up to 10 s, then writes how many got http.disconnect.
"""

import asyncio
import os

MARKERS = os.environ.get("INTEGRATION_MARKERS", "")


def _mark(text: str) -> None:
    with open(os.path.join(MARKERS, "receivers"), "a") as f:
        f.write(text + "\n")


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["path"] != "/two-receivers":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"ok\n"})
        return
    message = await receive()  # the (empty) request body
    assert message["type"] == "http.request" and not message.get("more_body"), message
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"streaming\n", "more_body": True})
    receivers = [asyncio.ensure_future(receive()) for _ in range(2)]
    for _ in range(3):
        await asyncio.sleep(0)  # let both reach their wait inside the server
    _mark("waiting")
    done, pending = await asyncio.wait(receivers, return_when=asyncio.FIRST_COMPLETED)
    if pending:
        done2, pending = await asyncio.wait(pending, timeout=10)
        done |= done2
    for task in pending:
        task.cancel()
    disconnects = sum(1 for task in done if task.result()["type"] == "http.disconnect")
    _mark(f"disconnects {disconnects}")
