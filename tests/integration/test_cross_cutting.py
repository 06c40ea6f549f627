"""Checks that hold for any app: pipelining, HTTP/1.0, clients that leave mid-stream, and five
SIGHUPs under load without a failed request, for a WSGI app (Flask) and an ASGI app (FastAPI),
in both serve modes.

The protocol checks also run against the same app under gunicorn (Flask) or uvicorn (FastAPI):
when one fails under graceful only, graceful is at fault, not the app or the test.
"""

from __future__ import annotations

import socket

import pytest

from _harness import MODES, StrictRequest, reload_under_load, strict_exchange
from _serve import Client
from _support import wait_for

APPS = {"flask": "flask_app.py:app", "fastapi": "fastapi_app.py:app"}
REFERENCES = {"flask": ("gunicorn", "flask_app:app", "--worker-class", "gthread", "--threads", "4"),
              "fastapi": ("uvicorn", "fastapi_app:app")}


def targets(graceful_defect: str = ""):
    """Parameters for ``target``: each app under graceful in both modes, and under its reference
    server. ``graceful_defect`` marks the graceful ones strict xfail with that reason (the
    reference ones still pass, which shows the test and the app are right)."""
    marks = [pytest.mark.xfail(strict=True, reason=f"graceful defect: {graceful_defect}")
             ] if graceful_defect else []
    params = []
    for app in APPS:
        params += [pytest.param((app, mode), id=f"{app}-{mode}", marks=marks) for mode in MODES]
        params.append(pytest.param((app, "reference"), id=f"{app}-{REFERENCES[app][0]}"))
    return params


@pytest.fixture
def target(request, serve, reference):
    """The app served by graceful in one of its modes, or by the reference server."""
    app, mode = request.param
    if mode == "reference":
        server, module, *extra = REFERENCES[app]
        return reference(server, module, *extra)
    return serve(APPS[app], *MODES[mode])


@pytest.fixture(params=[(app, mode) for app in APPS for mode in MODES],
                ids=lambda t: f"{t[0]}-{t[1]}")
def graceful_target(request, serve):
    app, mode = request.param
    return serve(APPS[app], *MODES[mode])


def _raw(port: int) -> Client:
    return Client(socket.create_connection(("127.0.0.1", port), timeout=30))


# --- pipelining ----------------------------------------------------------------------------

@pytest.mark.parametrize("target", targets(), indirect=True)
def test_pipelined_requests_are_answered_in_order_and_framed_strictly(target):
    requests_ = []
    for i in range(8):
        requests_ += [
            StrictRequest("GET", f"/path/n{i}"),
            StrictRequest("POST", "/reject" if i % 4 == 3 else f"/path/x{i}",
                          [("Content-Type", "application/octet-stream")], b"b" * 10),
            StrictRequest("GET", "/stream?count=20"),
            StrictRequest("HEAD", "/file"),
        ]
    responses = strict_exchange(target.port, requests_, pipelined=True)
    assert len(responses) == len(requests_)
    for i in range(8):
        path, post, stream, head = responses[4 * i:4 * i + 4]
        assert path.status == 200 and f'"n{i}"'.encode() in path.body
        assert post.status in (403, 405)  # /reject answers 403, POST /path/... is not allowed
        assert stream.body == b"".join(b"line %d\n" % n for n in range(20))
        assert head.status == 200 and head.body == b""


# --- HTTP/1.0 ------------------------------------------------------------------------------

@pytest.mark.parametrize("target", targets(), indirect=True)
def test_http10_response_is_not_chunked_and_ends_with_the_connection(target):
    client = _raw(target.port)
    client.send(b"GET /stream?count=4 HTTP/1.0\r\nHost: test\r\n\r\n")
    response = client.response()
    assert response.status == 200
    assert response.raw_head.startswith((b"HTTP/1.0 ", b"HTTP/1.1 "))
    assert "chunked" not in response.headers.get("transfer-encoding", "")
    assert response.body == b"line 0\nline 1\nline 2\nline 3\n"
    assert client.closed_by_server()


@pytest.mark.parametrize("target", targets(), indirect=True)
def test_http10_keepalive_is_either_honoured_or_refused_by_closing(target):
    client = _raw(target.port)
    client.send(b"GET / HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
    first = client.response()
    assert first.status == 200 and first.body.startswith(b"hello")
    if "keep-alive" in first.headers.get("connection", "").lower():
        client.send(b"GET / HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
        assert client.response().body == first.body
    else:
        assert client.closed_by_server()


@pytest.mark.parametrize("target", targets(
    "an HTTP/1.0 request with 'Connection: keep-alive, close' is answered with "
    "'Connection: keep-alive' and the connection stays open"), indirect=True)
def test_http10_keepalive_with_close_closes(target):
    """``Connection: keep-alive, close``: close wins (RFC 9112 9.3), so the server must not
    promise keep-alive and must close after the response."""
    client = _raw(target.port)
    client.send(b"GET / HTTP/1.0\r\nHost: test\r\nConnection: keep-alive, close\r\n\r\n")
    response = client.response()
    assert response.status == 200
    assert "keep-alive" not in response.headers.get("connection", "").lower()
    assert client.closed_by_server()


# --- clients that leave --------------------------------------------------------------------

@pytest.mark.parametrize("target", targets(), indirect=True)
def test_client_that_leaves_mid_stream_ends_the_stream_and_the_server_serves_on(target, markers):
    for _ in range(3):
        client = _raw(target.port)
        client.send(b"GET /forever HTTP/1.1\r\nHost: test\r\n\r\n")
        received = 0
        while received < 256 * 1024:
            data = client.sock.recv(65536)
            assert data, "the stream ended before the client left"
            received += len(data)
        client.sock.close()  # unread data in the buffer: the kernel resets the connection
    wait_for(lambda: list(markers.glob("*-stream-closed")), 60,
             what="the app to see its stream end after the client left")
    responses = strict_exchange(target.port, [StrictRequest("GET", "/")] * 3)
    assert [r.status for r in responses] == [200, 200, 200]


# --- reloads under load --------------------------------------------------------------------

def test_five_sighups_under_load_fail_no_request(graceful_target):
    loads = reload_under_load(graceful_target, paths=("/",) * 4 + ("/slow",), reloads=5)
    assert [f for load in loads for f in load.failures] == []
    assert sum(load.ok for load in loads) >= 6 * 40
    served_by = {pid for load in loads for pid in load.pids}
    assert len(served_by) >= 6  # several generations really served
