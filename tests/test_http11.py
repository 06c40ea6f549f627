"""The sans-IO HTTP/1.1 parser: round trips under hypothesis, garbage, strict framing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful.http11 import (NEED_DATA, Body, EndOfMessage, HTTPError, Limits, Request,
                             RequestParser, error_response, response_head)

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode)
path_chars = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~%/=&;:@!$'()*+,", max_size=40)
field_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40).map(
    lambda v: v.strip(" ").encode())
reserved = {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect"}


@st.composite
def requests(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]) | tokens)
    if method == b"CONNECT":
        method = b"GET"
    path = b"/" + draw(path_chars).encode()
    query = draw(st.none() | path_chars.map(str.encode))
    target = path + (b"?" + query if query is not None else b"")
    version = draw(st.sampled_from([b"1.0", b"1.1"]))
    headers = [(name.lower(), value) for name, value in
               draw(st.lists(st.tuples(tokens, field_values), max_size=8))
               if name.lower() not in reserved]
    if version == b"1.1":
        headers.insert(draw(st.integers(0, len(headers))), (b"host", b"example.test"))
    body_chunks = draw(st.lists(st.binary(min_size=1, max_size=50), max_size=4))
    chunked = version == b"1.1" and draw(st.booleans())
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    elif body_chunks:
        headers.append((b"content-length", str(sum(map(len, body_chunks))).encode()))
    return method, target, path, query or b"", version, headers, body_chunks, chunked


def serialize(method, target, version, headers, body_chunks, chunked, trailers=()):
    out = method + b" " + target + b" HTTP/" + version + b"\r\n"
    for name, value in headers:
        out += name + b": " + value + b"\r\n"
    out += b"\r\n"
    if chunked:
        for chunk in body_chunks:
            out += b"%x\r\n%s\r\n" % (len(chunk), chunk)
        out += b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"
    else:
        out += b"".join(body_chunks)
    return out


def parse_all(data: bytes, splits=(), limits=None):
    """Feed ``data`` in pieces; collect every event until the parser needs more."""
    parser = RequestParser(limits)
    events = []
    cuts = sorted({min(max(0, c), len(data)) for c in splits}) + [len(data)]
    start = 0
    for cut in cuts:
        parser.feed(data[start:cut])
        start = cut
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
            if isinstance(event, EndOfMessage):
                parser.start_next()
    return events


@settings(max_examples=300)
@given(requests(), st.lists(st.integers(0, 2000), max_size=6), st.integers(1, 3))
def test_round_trip_in_any_split_and_pipelined(req, splits, count):
    method, target, path, query, version, headers, body_chunks, chunked = req
    data = serialize(method, target, version, headers, body_chunks, chunked) * count
    events = parse_all(data, splits)
    requests_seen = [e for e in events if isinstance(e, Request)]
    assert len(requests_seen) == count
    assert sum(isinstance(e, EndOfMessage) for e in events) == count
    for request in requests_seen:
        assert (request.method, request.target, request.path, request.query, request.version) == \
            (method, target, path, query, version)
        assert request.headers == headers
        assert request.chunked == chunked
    body = b"".join(e.data for e in events if isinstance(e, Body))
    assert body == b"".join(body_chunks) * count


@settings(max_examples=500)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=4))
def test_arbitrary_bytes_give_events_or_http_error(data, splits):
    try:
        parse_all(data, splits, Limits(max_request_line=100, max_header_bytes=200))
    except HTTPError as exc:
        assert 400 <= exc.status <= 505


@settings(max_examples=300)
@given(requests(), st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_corrupted_requests_give_events_or_http_error(req, position, junk):
    method, target, _, _, version, headers, body_chunks, chunked = req
    data = bytearray(serialize(method, target, version, headers, body_chunks, chunked))
    position = min(position, len(data))
    data[position:position + len(junk)] = junk
    try:
        parse_all(bytes(data))
    except HTTPError as exc:
        assert exc.status in (400, 413, 414, 417, 431, 501, 505)


def test_trailers_are_returned():
    data = serialize(b"POST", b"/", b"1.1", [(b"host", b"h"), (b"transfer-encoding", b"chunked")],
                     [b"abc"], True, trailers=[(b"X-Sum", b"1")])
    events = parse_all(data)
    assert events[-1].trailers == [(b"x-sum", b"1")]


def test_keep_alive_rules():
    def head(text):
        return parse_all(text)[0]
    assert head(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").keep_alive
    assert not head(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").keep_alive
    assert not head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive


def test_absolute_form_and_expect_continue():
    request = parse_all(b"POST http://example.test/a/b?x=1 HTTP/1.1\r\nHost: example.test\r\n"
                        b"Content-Length: 3\r\nExpect: 100-continue\r\n\r\nabc")[0]
    assert (request.path, request.query, request.expect_continue) == (b"/a/b", b"x=1", True)


@pytest.mark.parametrize("data, status", [
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3,3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 501),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n", 400),
    (b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"CONNECT example.test:443 HTTP/1.1\r\nHost: h\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: h\r\nExpect: something\r\nContent-Length: 1\r\n\r\nx", 417),
    (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
    (b"GET /" + b"a" * 200, 414),
    (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 11 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"y" * 300 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n", 413),
])
def test_strict_framing_rejections(data, status):
    limits = Limits(max_request_line=100, max_header_bytes=250, max_headers=10, max_body=100)
    with pytest.raises(HTTPError) as info:
        parse_all(data, limits=limits)
    assert info.value.status == status


def test_response_helpers():
    assert response_head(b"200 OK", [(b"A", b"b")]) == b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n"
    response = error_response(431)
    assert response.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"Connection: close\r\n" in response
    assert response.endswith(b"\r\n\r\nRequest Header Fields Too Large\n")
