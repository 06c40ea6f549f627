"""Checks that hold for any app: pipelining, HTTP/1.0, request targets, bodies, clients that
leave mid-stream, and five SIGHUPs under load without a failed request, for a WSGI app (Flask)
and an ASGI app (FastAPI).

Clients leaving and reloads run in both serve modes. The protocol checks run one-process only:
a worker under a master is the same server on an inherited socket (the framework modules check
framing in both modes), and a server start per mode and test would double the stage.
The protocol checks also run against the same app under gunicorn (Flask) or uvicorn (FastAPI):
when one fails under graceful only, graceful is at fault, not the app or the test.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time

import pytest

from _harness import MODES, StrictRequest, reload_under_load, strict_exchange
from _serve import Client
from _support import wait_for

APPS = {"flask": "flask_app.py:app", "fastapi": "fastapi_app.py:app"}
REFERENCES = {"flask": ("gunicorn", "flask_app:app", "--worker-class", "gthread", "--threads", "4"),
              "fastapi": ("uvicorn", "fastapi_app:app")}


def targets(graceful_defect: str = "", *, modes=("one-process",), defect_in=tuple(APPS),
            references: bool = True, reference_skips=None):
    """Parameters for ``target``: each app under graceful in ``modes``, and (``references``)
    under its reference server. ``graceful_defect`` marks the graceful ones of the apps in
    ``defect_in`` strict xfail with that reason; the reference ones still pass, which shows
    that the test and the app are right. ``reference_skips`` maps an app to the reason its
    reference server cannot referee this test (it has the same fault)."""
    reference_skips = reference_skips or {}
    params = []
    for app in APPS:
        marks = [pytest.mark.xfail(strict=True, reason=f"graceful defect: {graceful_defect}")
                 ] if graceful_defect and app in defect_in else []
        params += [pytest.param((app, mode), id=f"{app}-{mode}", marks=marks) for mode in modes]
        if references:
            skip = [pytest.mark.skip(reason=reference_skips[app])] if app in reference_skips else []
            params.append(pytest.param((app, "reference"), id=f"{app}-{REFERENCES[app][0]}",
                                       marks=skip))
    return params


@pytest.fixture
def target_args():
    """Extra options for graceful serve (a test overrides this by parametrizing it)."""
    return ()


@pytest.fixture
def target(request, serve, reference, target_args):
    """The app served by graceful in one of its modes, or by the reference server."""
    app, mode = request.param
    if mode == "reference":
        server, module, *extra = REFERENCES[app]
        return reference(server, module, *extra)
    return serve(APPS[app], *MODES[mode], *target_args)


@pytest.fixture(params=[(app, mode) for app in APPS for mode in MODES],
                ids=lambda t: f"{t[0]}-{t[1]}")
def graceful_target(request, serve):
    app, mode = request.param
    return serve(APPS[app], *MODES[mode])


@pytest.fixture
def raw():
    """``raw(port)``: a raw-socket client (tests/_serve.py); every socket is closed at teardown."""
    clients = []

    def connect(port: int) -> Client:
        clients.append(Client(socket.create_connection(("127.0.0.1", port), timeout=30)))
        return clients[-1]

    yield connect
    for client in clients:
        client.sock.close()


# --- pipelining ----------------------------------------------------------------------------

def _gunicorn_version() -> tuple:
    from importlib.metadata import version

    return tuple(int(part) for part in version("gunicorn").split(".")[:2] if part.isdigit())


# Seen here: gunicorn 23.0.0 (the last for Python 3.9) closes a gthread connection that holds
# pipelined requests without answering them; 27.0.1 answers them all.
_OLD_GUNICORN = {"flask": "gunicorn before 27 drops pipelined requests: no referee"
                 } if _gunicorn_version() < (27,) else {}


@pytest.mark.parametrize("target", targets(reference_skips=_OLD_GUNICORN), indirect=True)
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

# Seen here: uvicorn 0.54.0's httptools protocol (its default when httptools is installed)
# answers an HTTP/1.0 request for a streamed body with Transfer-Encoding: chunked, which an
# HTTP/1.0 client cannot read; its h11 protocol does not.
_UVICORN_HTTPTOOLS = {"fastapi": "uvicorn's httptools protocol chunks a response to HTTP/1.0: "
                                 "no referee"} if importlib.util.find_spec("httptools") else {}


@pytest.mark.parametrize("target", targets(reference_skips=_UVICORN_HTTPTOOLS), indirect=True)
def test_http10_response_is_not_chunked_and_ends_with_the_connection(raw, target):
    client = raw(target.port)
    client.send(b"GET /stream?count=4 HTTP/1.0\r\nHost: test\r\n\r\n")
    response = client.response()
    assert response.status == 200
    assert response.raw_head.startswith((b"HTTP/1.0 ", b"HTTP/1.1 "))
    assert "chunked" not in response.headers.get("transfer-encoding", "")
    assert response.body == b"line 0\nline 1\nline 2\nline 3\n"
    assert client.closed_by_server()


@pytest.mark.parametrize("target", targets(), indirect=True)
def test_http10_keepalive_is_either_honoured_or_refused_by_closing(raw, target):
    client = raw(target.port)
    client.send(b"GET / HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
    first = client.response()
    assert first.status == 200 and first.body.startswith(b"hello")
    if "keep-alive" in first.headers.get("connection", "").lower():
        client.send(b"GET / HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
        assert client.response().body == first.body
    else:
        assert client.closed_by_server()


@pytest.mark.parametrize("target", targets(), indirect=True)
def test_http10_keepalive_with_close_closes(raw, target):
    """``Connection: keep-alive, close``: close wins (RFC 9112 9.3), so the server must not
    promise keep-alive and must close after the response."""
    client = raw(target.port)
    client.send(b"GET / HTTP/1.0\r\nHost: test\r\nConnection: keep-alive, close\r\n\r\n")
    response = client.response()
    assert response.status == 200
    assert "keep-alive" not in response.headers.get("connection", "").lower()
    assert client.closed_by_server()


# --- targets, paths and dates -------------------------------------------------------------

@pytest.mark.parametrize("target", targets(), indirect=True)
def test_percent_encoded_path_is_decoded_as_utf8_with_replacement(target):
    response, = strict_exchange(target.port, [StrictRequest("GET", "/path/caf%C3%A9/%FF")])
    assert response.status == 200, response
    assert json.loads(response.body)["rest"] == "caf\u00e9/\ufffd"


@pytest.mark.parametrize("target", targets(), indirect=True)
def test_error_responses_of_the_app_carry_a_date(target):
    for path in ("/missing", "/boom"):  # uvicorn closes the connection after a 500: one each
        response, = strict_exchange(target.port, [StrictRequest("GET", path,
                                                                [("Connection", "close")])])
        assert response.status in (404, 500) and response.header("date"), response


# gunicorn and uvicorn omit Date on their own 400 too; RFC 9110 6.6.1 is the referee here.
@pytest.mark.parametrize("target", targets(references=False), indirect=True)
def test_error_responses_of_the_server_carry_a_date(raw, target):
    client = raw(target.port)
    client.send(b"GET / HTTP/1.1\r\nHost: test\r\nContent-Length: x\r\n\r\n")
    response = client.response()
    assert response.status == 400
    assert "date" in response.headers, response


# Neither reference honours absolute-form (gunicorn uses Host, uvicorn answers 404), so RFC
# 9112 3.2.2 is the referee: the target's authority wins over the Host header.
@pytest.mark.parametrize("target", targets(references=False), indirect=True)
def test_absolute_form_target_names_the_host(target):
    response, = strict_exchange(target.port, [StrictRequest(
        "GET", "http://example.com:8080/path/x", [("Host", "other.test")])])
    assert response.status == 200, response
    assert json.loads(response.body)["url"] == "http://example.com:8080/path/x"


# --- bodies --------------------------------------------------------------------------------

@pytest.mark.parametrize("target", targets(
    reference_skips={"flask": "gunicorn gthread breaks the same promise: no referee"}),
    indirect=True)
def test_an_early_answer_to_an_unread_upload_keeps_its_keepalive_promise(target):
    """/reject answers 403 without reading the body. Like curl, the client keeps sending
    while it reads, then sends a second request on the same connection. The server may read
    the body off and answer that request too, or say ``Connection: close`` in the 403; it may
    not promise keep-alive and then close."""
    sock = socket.create_connection(("127.0.0.1", target.port), timeout=30)
    upload = (b"POST /reject HTTP/1.1\r\nHost: test\r\nContent-Length: 4000000\r\n"
              b"Content-Type: application/octet-stream\r\n\r\n" + b"u" * 4_000_000)
    follow_up = b"GET /path/after HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    sender = threading.Thread(target=_send_ignoring_close, args=(sock, upload + follow_up))
    sender.start()
    client = Client(sock)
    try:
        first = client.response()
        assert first.status == 403 and first.body == b"rejected\n"
        if "close" not in first.headers.get("connection", "").lower():
            second = client.response()  # EOFError here: keep-alive was promised, then broken
            assert second.status == 200 and b'"after"' in second.body
    finally:
        sender.join(60)
        sock.close()


def _send_ignoring_close(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # a server that said "Connection: close" may stop reading; the reader judges


@pytest.mark.parametrize("target", targets(), indirect=True)
def test_an_empty_file_is_sent_with_an_empty_body(target):
    responses = strict_exchange(target.port, [StrictRequest("GET", "/empty"),
                                              StrictRequest("GET", "/path/after")])
    assert responses[0].status == 200 and responses[0].body == b"", responses[0]
    assert responses[0].header("content-length") in ("0", None)
    assert responses[1].status == 200


@pytest.mark.parametrize("target", targets(), indirect=True)
@pytest.mark.parametrize("target_args", [("--body-timeout", "1")])
def test_a_large_body_written_at_once_reaches_a_slow_reader_past_the_body_timeout(target):
    """A 24 MB body in one piece, read at about 8 MB/s through a small receive buffer: the
    server makes progress all along, so --body-timeout 1 must not cut it (a send timeout is
    "no progress for N seconds", never a cap on the whole send)."""
    server = target
    size = 24 * 1024 * 1024
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    with sock:
        sock.sendall(f"GET /big?size={size} HTTP/1.1\r\nHost: test\r\n"
                     "Connection: close\r\n\r\n".encode())
        received = 0
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += len(data)
            time.sleep(0.008)  # sleep-ok: throttles the reader; nothing waits on it
    assert received > size, f"only {received} bytes (head and body) of a {size}-byte body"


# --- clients that leave --------------------------------------------------------------------

@pytest.mark.parametrize("target", targets(modes=tuple(MODES)), indirect=True)
def test_client_that_leaves_mid_stream_ends_the_stream_and_the_server_serves_on(raw, target,
                                                                               markers):
    """Three clients read 256 kB of an endless stream and leave: the app must see each of its
    streams end (WSGI: the iterable is closed; ASGI: the generator is finalized), and the
    server must go on serving."""
    for _ in range(3):
        client = raw(target.port)
        client.send(b"GET /forever HTTP/1.1\r\nHost: test\r\n\r\n")
        received = 0
        while received < 256 * 1024:
            data = client.sock.recv(65536)
            assert data, "the stream ended before the client left"
            received += len(data)
        client.sock.close()  # unread data in the buffer: the kernel resets the connection
    def streams_closed() -> int:
        return sum(len(path.read_text().splitlines()) for path in markers.glob("*-stream-closed"))

    wait_for(lambda: streams_closed() >= 3, 60, what="the app to see its 3 streams end")
    responses = strict_exchange(target.port, [StrictRequest("GET", "/")] * 3)
    assert [r.status for r in responses] == [200, 200, 200]


@pytest.mark.parametrize("server_kind", [
    "graceful",
    "uvicorn",
])
def test_every_concurrent_receive_gets_the_disconnect(server_kind, serve, reference, raw,
                                                      markers):
    if server_kind == "graceful":
        server = serve("asgi_receivers.py:app")
    else:
        server = reference("uvicorn", "asgi_receivers:app")
    client = raw(server.port)
    client.send(b"GET /two-receivers HTTP/1.1\r\nHost: test\r\n\r\n")
    log = markers / "receivers"
    wait_for(lambda: log.exists() and "waiting" in log.read_text(), 60,
             what="both receive() calls to wait")
    client.sock.close()
    wait_for(lambda: "disconnects" in log.read_text(), 60, what="the receivers' result")
    assert "disconnects 2" in log.read_text(), log.read_text()


# --- reloads under load --------------------------------------------------------------------

def test_five_sighups_under_load_fail_no_request(graceful_target):
    loads = reload_under_load(graceful_target, paths=("/",) * 4 + ("/slow",), reloads=5)
    assert [f for load in loads for f in load.failures] == []
    assert sum(load.ok for load in loads) >= 6 * 40
    served_by = {pid for load in loads for pid in load.pids}
    assert len(served_by) >= 6  # several generations really served
