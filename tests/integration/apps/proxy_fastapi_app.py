"""FastAPI behind a proxy: /info says who the client is, the scheme, and an absolute URL."""

import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()


@app.get("/info")
def info(request: Request):
    return JSONResponse({"remote_addr": request.client.host if request.client else None,
                         "scheme": request.url.scheme, "url": str(request.url_for("info"))},
                        headers={"X-Pid": str(os.getpid())})
