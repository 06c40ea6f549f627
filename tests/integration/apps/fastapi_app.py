"""A FastAPI application for the integration suite: JSON and validation errors, multipart
uploads, StreamingResponse, server-sent events, FileResponse with Range, BackgroundTasks,
lifespan state, redirects with url_for, GZip. Every response names its pid (X-Pid).

INTEGRATION_DATA names the file /file serves; INTEGRATION_MARKERS, when set, is a directory
where the app records events the tests wait on (background tasks, lifespan, disconnects).
"""

import asyncio
import contextlib
import hashlib
import os
from typing import List, Optional

from fastapi import BackgroundTasks, FastAPI, File, Form, Request, UploadFile
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field

DATA_FILE = os.environ.get("INTEGRATION_DATA", os.path.abspath(__file__))
MARKERS = os.environ.get("INTEGRATION_MARKERS")


def _mark(name: str, text: str = "") -> None:
    if MARKERS:
        with open(os.path.join(MARKERS, name), "a") as f:
            f.write(f"{os.getpid()} {text}\n")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    _mark("lifespan", "startup")
    yield {"started_by": os.getpid(), "greeting": "state from lifespan"}
    _mark("lifespan", "shutdown")


class NameThePid:
    """Adds X-Pid to every response. A pure ASGI middleware: ``@app.middleware("http")`` would
    add a second concurrent receive() to every streaming response (see asgi_receivers.py)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_pid(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-pid", str(os.getpid()).encode())]}
            await send(message)

        await self.app(scope, receive, send_with_pid)


app = FastAPI(lifespan=lifespan)
app.add_middleware(GZipMiddleware, minimum_size=1000)
app.add_middleware(NameThePid)


class Item(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)
    tags: List[str] = []


@app.get("/", response_class=PlainTextResponse)
async def index():
    return "hello from fastapi\n"


@app.get("/slow", response_class=PlainTextResponse)
async def slow():
    await asyncio.sleep(0.2)
    return "slow\n"


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: Optional[str] = None):
    return {"item_id": item_id, "q": q}


@app.post("/items")
async def create_item(item: Item):
    return {"created": item.model_dump() if hasattr(item, "model_dump") else item.dict()}


@app.post("/upload")
async def upload(files: List[UploadFile] = File(...), note: str = Form("")):
    results = []
    for upload in files:
        digest = hashlib.sha256()
        size = 0
        while True:
            chunk = await upload.read(65536)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
        results.append({"filename": upload.filename, "size": size, "sha256": digest.hexdigest()})
    return {"note": note, "files": results}


@app.get("/stream")
async def stream(count: int = 5):
    async def lines():
        for i in range(count):
            yield f"line {i}\n".encode()
            await asyncio.sleep(0)
    return StreamingResponse(lines(), media_type="text/plain")


@app.get("/events")
async def events(count: int = 3):
    async def feed():
        for i in range(count):
            yield f"id: {i}\nevent: tick\ndata: {{\"n\": {i}}}\n\n"
            await asyncio.sleep(0)
    return StreamingResponse(feed(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


@app.get("/forever")
async def forever(request: Request):
    """Streams until the client goes away; records that the app saw it leave."""
    async def body():
        try:
            while True:
                yield b"x" * 16384
                await asyncio.sleep(0)
        finally:
            _mark("fastapi-stream-closed")
    return StreamingResponse(body(), media_type="application/octet-stream")


@app.api_route("/file", methods=["GET", "HEAD"])  # FastAPI adds no HEAD by itself
async def file():
    return FileResponse(DATA_FILE, media_type="application/octet-stream", filename="data.bin")


@app.get("/empty")
async def empty():
    path = os.path.join(MARKERS or os.path.dirname(DATA_FILE), "empty.bin")
    open(path, "wb").close()
    return FileResponse(path, media_type="application/octet-stream")


@app.post("/later")
async def later(background: BackgroundTasks, word: str = "done"):
    background.add_task(_mark, "background", word)
    return {"scheduled": word}


@app.get("/state")
async def state(request: Request):
    return {"started_by": request.state.started_by, "greeting": request.state.greeting,
            "pid": os.getpid()}


@app.get("/go")
async def go(request: Request):
    return RedirectResponse(str(request.url_for("read_item", item_id=7)) + "?q=redirected",
                            status_code=303)


@app.get("/where")
async def where(request: Request):
    return {"url": str(request.url), "url_for": str(request.url_for("read_item", item_id=1)),
            "client": request.client.host if request.client else None}


@app.get("/big", response_class=PlainTextResponse)
async def big(size: int = 100000):
    return "z" * size


@app.post("/reject")
async def reject():
    """Answers without reading the request body, as an auth check in front of an upload does."""
    return PlainTextResponse("rejected\n", status_code=403)


@app.get("/path/{rest:path}")
async def echo_path(rest: str, request: Request):
    return {"rest": rest, "path": request.url.path, "url": str(request.url),
            "host": request.headers.get("host")}


@app.get("/boom")
async def boom():
    raise RuntimeError("the endpoint failed on purpose")
