"""The strict client of the suite must fail on broken framing, or its passing proves nothing:
canned responses from a loopback server, each broken one way, must each be refused."""

from __future__ import annotations

import socket
import threading

import h11
import pytest

from _harness import StrictRequest, strict_exchange

GOOD = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n"
        b"hello")
GOOD_CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")


class CannedServer:
    """Answers the n-th request head on its one connection with ``responses[n]``; a None
    closes the connection at once (right after the response before it)."""

    def __init__(self, responses) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.responses = list(responses)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(30)
        conn, _ = self.listener.accept()
        conn.settimeout(30)
        with conn:
            try:
                self._answer(conn)
            except OSError:
                pass  # the client gave up on a broken response: that is the point

    def _answer(self, conn) -> None:
        buffer = b""
        for response in self.responses:
            if response is None:
                return
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            buffer = buffer.split(b"\r\n\r\n", 1)[1]
            conn.sendall(response)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):  # read off what the client sends, so close sends no RST
            pass

    def close(self) -> None:
        self.thread.join(30)
        self.listener.close()


def _exchange(responses, requests_=(StrictRequest("GET", "/"),)):
    server = CannedServer(responses)
    try:
        return strict_exchange(server.port, list(requests_), timeout=30)
    finally:
        server.close()


def test_well_framed_responses_pass():
    responses = _exchange([GOOD, GOOD_CLOSE])
    assert [r.body for r in responses] == [b"hello"]
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert _exchange([chunked, GOOD_CLOSE])[0].body == b"hello"


@pytest.mark.parametrize("broken, then", [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello!!", GOOD_CLOSE,
                 id="body-longer"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello", None,
                 id="body-shorter"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n0\r\n\r\n", GOOD_CLOSE, id="length-and-chunked"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                 GOOD_CLOSE, id="bad-chunk-size"),
    pytest.param(b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n", GOOD_CLOSE,
                 id="bad-header-name"),
    pytest.param(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\nxx", GOOD_CLOSE,
                 id="body-after-204"),
])
def test_broken_framing_is_refused(broken, then):
    with pytest.raises((AssertionError, h11.RemoteProtocolError, ConnectionError)):
        _exchange([broken, then])


def test_a_keepalive_connection_closed_without_saying_so_is_refused():
    # A FIN is seen as "closed the connection"; a reset (the second request reached the
    # closing server) is a ConnectionError: either way the exchange is refused.
    with pytest.raises((AssertionError, ConnectionError), match="closed the connection|reset"):
        _exchange([GOOD, None], [StrictRequest("GET", "/"), StrictRequest("GET", "/")])


def test_head_response_with_a_body_is_refused():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    with pytest.raises((AssertionError, h11.RemoteProtocolError)):
        _exchange([head, GOOD_CLOSE], [StrictRequest("HEAD", "/")])
