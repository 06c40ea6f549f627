"""Flask behind a proxy: /info says who the client is, the scheme, and an absolute URL."""

import os

from flask import Flask, jsonify, request, url_for

app = Flask(__name__)


@app.get("/info")
def info():
    response = jsonify(remote_addr=request.remote_addr, scheme=request.scheme,
                       url=url_for("info", _external=True))
    response.headers["X-Pid"] = str(os.getpid())
    return response
