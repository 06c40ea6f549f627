"""A WSGI application for the server tests, wrapped in wsgiref's PEP 3333 validator."""

import json
import os
import tempfile
import time
from wsgiref.validate import validator

HERE = os.path.abspath(__file__)


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hello":
        body = b"hello\n"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                                  ("X-Pid", str(os.getpid()))])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"part %d\n" % i for i in range(3))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"then returned\n"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](open(HERE, "rb"))
    if path == "/one-piece":  # a large body in one write, as frameworks return it
        body = b"x" * int(environ["QUERY_STRING"])
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/deny":  # answers without reading the request body (a 401 to an upload)
        body = b"denied\n"
        start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                            ("Content-Length", str(len(body)))])
        return [body]
    if path == "/empty-file":  # Django's FileResponse of a 0-byte file
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](tempfile.TemporaryFile())
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        chunks = []
        if length:
            chunks.append(environ["wsgi.input"].read(length))
        else:  # chunked: read to the end (wsgi.input_terminated)
            while True:
                data = environ["wsgi.input"].read(1000)
                if not data:
                    break
                chunks.append(data)
        body = b"".join(chunks)
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/partial":
        first = environ["wsgi.input"].read(5)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(first)))])
        return [first]
    if path == "/error":
        raise RuntimeError("the application failed on purpose")
    if path == "/slow":
        time.sleep(0.2)  # sleep-ok: the slow request under test
        body = b"slow\n"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5"),
                                  ("X-Pid", str(os.getpid()))])
        return [body]
    if path == "/env":
        keys = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
                "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT", "HTTP_X_TEST", "CONTENT_TYPE",
                "SCRIPT_NAME")
        body = json.dumps({k: environ.get(k) for k in keys}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    body = b"not found\n"
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
raw_app = _app
