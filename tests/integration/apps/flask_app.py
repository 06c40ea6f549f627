"""A Flask application for the integration suite: JSON, forms, uploads, streaming, files,
redirects, errors. Every response names the pid that served it (X-Pid), for the reload tests.

INTEGRATION_DATA names the file /file serves; INTEGRATION_MARKERS, when set, is a directory
where the app records events the tests wait on (a stream closed after the client went away).
"""

import hashlib
import os
import time

from flask import Flask, Response, abort, jsonify, redirect, request, send_file, stream_with_context, url_for

DATA_FILE = os.environ.get("INTEGRATION_DATA", os.path.abspath(__file__))  # served by /file
MARKERS = os.environ.get("INTEGRATION_MARKERS")

app = Flask(__name__)


def _mark(name: str) -> None:
    if MARKERS:
        with open(os.path.join(MARKERS, name), "a") as f:
            f.write(f"{os.getpid()}\n")


@app.after_request
def _name_the_pid(response):
    response.headers["X-Pid"] = str(os.getpid())
    return response


@app.get("/")
def index():
    return "hello from flask\n"


@app.get("/slow")
def slow():
    time.sleep(0.2)  # sleep-ok: the slow request of the load mix
    return "slow\n"


@app.route("/json", methods=["GET", "POST"])
def json_view():
    if request.method == "POST":
        payload = request.get_json(silent=False)
        return jsonify(received=payload, args=request.args.to_dict())
    return jsonify(framework="flask", unicode="caf\u00e9 \u2603", numbers=[1, 2, 3])


@app.post("/form")
def form():
    return jsonify(fields=request.form.to_dict(), files={
        name: {"filename": f.filename, "size": len(f.read())} for name, f in request.files.items()})


@app.post("/upload")
def upload():
    digest = hashlib.sha256()
    size = 0
    upload = request.files["file"]
    while True:
        chunk = upload.stream.read(65536)
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
    return jsonify(size=size, sha256=digest.hexdigest())


@app.post("/echo")
def echo():
    return Response(request.get_data(), mimetype="application/octet-stream")


@app.get("/stream")
def stream():
    count = int(request.args.get("count", "5"))

    def generate():
        for i in range(count):
            yield f"line {i}\n"

    return Response(stream_with_context(generate()), mimetype="text/plain")


@app.get("/forever")
def forever():
    """Streams until the client goes away; the server then closes the generator."""

    def generate():
        try:
            while True:
                yield b"x" * 16384
        finally:
            _mark("flask-stream-closed")

    return Response(generate(), mimetype="application/octet-stream")


@app.get("/file")
def file():
    return send_file(DATA_FILE, mimetype="application/octet-stream", conditional=True)


@app.get("/empty")
def empty():
    """An empty file through send_file (and so through wsgi.file_wrapper)."""
    path = os.path.join(MARKERS or os.path.dirname(DATA_FILE), "empty.bin")
    open(path, "wb").close()
    return send_file(path, mimetype="application/octet-stream")


@app.get("/big")
def big():
    """One large body in one piece: the server has to write it across many sends."""
    size = int(request.args.get("size", "100000"))
    return Response(b"z" * size, mimetype="text/plain")


@app.post("/reject")
def reject():
    """Answers without reading the request body, as an auth check in front of an upload does."""
    return Response("rejected\n", status=403, mimetype="text/plain")


@app.get("/path/<path:rest>")
def echo_path(rest):
    return jsonify(rest=rest, path=request.path, url=request.url, host=request.host)


@app.get("/go")
def go():
    return redirect(url_for("json_view", source="redirect"))


@app.get("/abort")
def aborted():
    abort(418)


@app.get("/boom")
def boom():
    raise RuntimeError("the view failed on purpose")


@app.get("/cookie")
def cookie():
    response = jsonify(seen=request.cookies.get("flavour"))
    response.set_cookie("flavour", "oatmeal", httponly=True)
    return response
