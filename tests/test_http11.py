"""The sans-IO HTTP/1.1 parser: round trips under hypothesis, garbage, strict framing."""

from __future__ import annotations

import email.utils
import time

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
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
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


# -- issue 12: RFC 9112/9110 rules ------------------------------------------------------------

def feed_bytewise(data: bytes, limits=None):
    """Feed ``data`` one byte at a time, pulling events after each; the parser and its events."""
    parser = RequestParser(limits)
    events = []
    for i in range(len(data)):
        parser.feed(data[i:i + 1])
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
            if isinstance(event, EndOfMessage):
                parser.start_next()
    return parser, events


def _long_head(size: int) -> bytes:
    lines = b"".join(b"X-Field-%05d: %s\r\n" % (i, b"v" * 40) for i in range(size // 56))
    return b"GET / HTTP/1.1\r\nHost: h\r\n" + lines + b"\r\n"


def _long_trailers(size: int) -> bytes:
    lines = b"".join(b"X-Trailer-%05d: %s\r\n" % (i, b"v" * 40) for i in range(size // 58))
    return (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n" + lines + b"\r\n")


def _long_chunk_line(size: int) -> bytes:
    return (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3" + b";e=v" * (size // 4) + b"\r\nabc\r\n0\r\n\r\n")


def _long_target(size: int) -> bytes:
    return b"GET /" + b"a" * size + b" HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.mark.parametrize("make", [_long_head, _long_trailers, _long_chunk_line, _long_target])
def test_bytes_examined_are_linear_in_bytes_fed(make):
    """A slow-loris client sending one byte at a time makes the parser look at each byte a
    bounded number of times (the parser counts the bytes its searches cover)."""
    limits = Limits(max_request_line=1 << 20, max_header_bytes=1 << 20, max_headers=10_000)
    for size in (1000, 4000) if make is _long_chunk_line else (16000, 64000):
        data = make(size)
        parser, events = feed_bytewise(data, limits)
        assert isinstance(events[-1], EndOfMessage)
        assert parser._examined <= 10 * len(data), (size, parser._examined, len(data))


def _cpu_seconds_bytewise(data: bytes, limits) -> float:
    start = time.process_time()
    _, events = feed_bytewise(data, limits)
    assert isinstance(events[-1], EndOfMessage)
    return time.process_time() - start


@pytest.mark.parametrize("make", [_long_head, _long_trailers])
def test_cpu_time_is_linear_for_a_head_fed_byte_by_byte(make):
    """Four times the bytes costs about four times the CPU; quadratic scanning costs 16x.
    (process time of this process, as a ratio with a generous bound: no wall-clock threshold.)"""
    limits = Limits(max_header_bytes=1 << 20, max_headers=10_000)
    small = min(_cpu_seconds_bytewise(make(16000), limits) for _ in range(2))
    large = _cpu_seconds_bytewise(make(64000), limits)
    assert large / small < 8, (small, large)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\nHost: h\n",                     # bare LF ends the request line
    b"GET / HTTP/1.1\r\nHost: h\nX: y",                # bare LF after a field
    b"GET / HTTP/1.1\r\nHost: h\r\nX: y\rZ",           # bare CR
    b"GET / HTTP/1.1\r\nHost: h\r\nX: \x00",           # NUL
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",   # a TLS ClientHello on a plain port
    b"\x00\x01\x02",                                   # binary garbage
    b"GET /a\x00",                                     # control byte in the target
    b"GET\t/",                                         # tab is not the separator
    b" GET / HTTP/1.1",                                # no method
    b"GET  /",                                         # empty target
    b"GET / HTTP/1.1 ",                                # junk after the version
    b"GET / HTTPS/1.1",                                # not a version
    b"GET / http/1.1",                                 # the version name is case-sensitive
    b"GET / HTTP/1.10",                                # one digit each
])
def test_impossible_heads_are_refused_at_once(data):
    """No need to wait for the blank line (or the header timeout) once the head cannot be
    valid: 400 as soon as the bytes say so, whole or fed byte by byte."""
    for feed in (parse_all, feed_bytewise):
        with pytest.raises(HTTPError) as info:
            feed(data)
        assert info.value.status == 400, (feed, info.value)


def test_connection_close_wins_in_every_version():
    def head(text):
        return parse_all(text)[0]
    assert not head(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive
    assert not head(b"GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n").keep_alive
    assert not head(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive
    assert head(b"GET / HTTP/1.0\r\nConnection: foo, keep-alive\r\n\r\n").keep_alive


def test_error_responses_carry_a_date():
    head = error_response(400).split(b"\r\n\r\n")[0].split(b"\r\n")
    dates = [line for line in head if line.lower().startswith(b"date: ")]
    assert len(dates) == 1
    email.utils.parsedate_to_datetime(dates[0][6:].decode())  # a valid IMF-fixdate


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: user@h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h:8o\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [not:v6]\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h%zz\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\x80\r\n\r\n",
    b"GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://a b/ HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://h/ HTTP/1.1\r\n\r\n",
])
def test_host_must_be_one_valid_authority(data):
    with pytest.raises(HTTPError) as info:
        parse_all(data)
    assert info.value.status == 400


@pytest.mark.parametrize("value", [b"h", b"h:80", b"h:", b"127.0.0.1:8080", b"[::1]:80",
                                   b"[v1.x]", b"xn--bcher-kva.example", b"a%41b", b""])
def test_valid_hosts_are_accepted(value):
    request = parse_all(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n")[0]
    assert request.host == value and (b"host", value) in request.headers


def test_absolute_form_authority_is_the_host():
    request = parse_all(b"GET http://Target.example:81/p?q HTTP/1.1\r\nX: 1\r\n"
                        b"Host: other.example\r\n\r\n")[0]
    assert request.host == b"Target.example:81"
    assert request.headers == [(b"x", b"1"), (b"host", b"Target.example:81")]
    assert (request.path, request.query) == (b"/p", b"q")
    request = parse_all(b"GET https://h.example HTTP/1.0\r\n\r\n")[0]  # 1.0 may omit Host
    assert request.host == b"h.example" and request.headers == [(b"host", b"h.example")]
    assert (request.path, request.query) == (b"/", b"")
    assert parse_all(b"GET / HTTP/1.0\r\n\r\n")[0].host is None


@pytest.mark.parametrize("text", [b"HTTP/1.2", b"HTTP/1.9"])
def test_later_http_1_minor_versions_are_served_as_1_1(text):
    request = parse_all(b"GET / " + text + b"\r\nHost: h\r\n\r\n")[0]
    assert request.version == b"1.1" and request.keep_alive


@pytest.mark.parametrize("text", [b"HTTP/2.0", b"HTTP/3.0", b"HTTP/0.9"])
def test_other_major_versions_get_505(text):
    with pytest.raises(HTTPError) as info:
        parse_all(b"GET / " + text + b"\r\nHost: h\r\n\r\n")
    assert info.value.status == 505


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("line", [b"5 ", b"5\t", b"5;a=\"b\"c", b"5;;;==", b"5;", b"5;a=",
                                  b"5;a b", b"5 a", b";a=b", b"0x5", b"5;a=\"b", b"5;a=\"\x01\"",
                                  b"5=a", b"1" * 17])
def test_malformed_chunk_lines_are_refused(line):
    with pytest.raises(HTTPError) as info:
        parse_all(CHUNKED_HEAD + line + b"\r\nhello\r\n0\r\n\r\n")
    assert info.value.status == 400


@pytest.mark.parametrize("line", [b"5", b"5;a", b"5;a=b", b"5 ; a = b", b"5;a=\"b;c\\\"d\"",
                                  b"5;a;b=c;d=\"\"", b"0000000000000000005", b"5\t;\ta"])
def test_chunk_extensions_by_the_grammar_are_accepted(line):
    events = parse_all(CHUNKED_HEAD + line + b"\r\nhello\r\n0;end=1\r\n\r\n")
    assert b"".join(e.data for e in events if isinstance(e, Body)) == b"hello"
    assert isinstance(events[-1], EndOfMessage)


@pytest.mark.parametrize("target", [b"/\x80", b"/\xff", b"/a#frag", b"/a\x01", b"/a\x7f",
                                    b"/<script>", b"/a\"b", b"/a\\b", b"http://h/#x"])
def test_target_bytes_outside_rfc_3986_are_refused(target):
    with pytest.raises(HTTPError) as info:
        parse_all(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert info.value.status == 400


@pytest.mark.parametrize("target", [b"/a-._~:@!$&'()*+,;=%20/?x=/?[]", b"/?q={a}|^`"])
def test_target_bytes_of_rfc_3986_and_browsers_are_accepted(target):
    assert parse_all(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")[0].target == target


@pytest.mark.parametrize("fields, expect_continue", [
    (b"Expect: 100-continue\r\n", True),
    (b"Expect: 100-Continue\r\n", True),
    (b"Expect: \r\nExpect: 100-continue\r\n", True),
    (b"Expect: 100-continue\r\nExpect: \r\n", True),
    (b"Expect: , 100-continue,\r\n", True),
    (b"Expect: \r\n", False),
])
def test_expect_100_continue_counts_across_lines(fields, expect_continue):
    request = parse_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n" + fields + b"\r\nx")[0]
    assert request.expect_continue is expect_continue


@pytest.mark.parametrize("fields", [
    b"Expect: 100-continue, foo\r\n",
    b"Expect: 100-continue\r\nExpect: foo=bar\r\n",
    b"Expect: foo\r\nExpect: 100-continue\r\n",
    b"Expect: 100-continue;x=1\r\n",
])
def test_other_expectations_get_417(fields):
    with pytest.raises(HTTPError) as info:
        parse_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n" + fields + b"\r\nx")
    assert info.value.status == 417


@pytest.mark.parametrize("coding, status", [
    (b"chunked, identity", 400), (b"chunked, chunked", 400), (b"chunked;x=1", 400), (b"", 400),
    (b"gzip", 400), (b"gzip, chunked", 501),
])
def test_transfer_codings_other_than_one_final_chunked(coding, status):
    with pytest.raises(HTTPError) as info:
        parse_all(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + coding + b"\r\n\r\n0\r\n\r\n")
    assert info.value.status == status


def _outcome(feed, data, limits):
    """What the parser made of ``data``: the requests and bodies, then the refusal, if any."""
    events = []
    try:
        feed_events = feed(data, limits=limits)
        events = feed_events[1] if isinstance(feed_events, tuple) else feed_events
        error = None
    except HTTPError as exc:
        error = exc.status
    summary = []
    for event in events:
        if isinstance(event, Request):
            summary.append((event.method, event.target, event.version, event.headers, event.host,
                            event.keep_alive, event.expect_continue, event.chunked))
        elif isinstance(event, Body):
            if summary and isinstance(summary[-1], bytes):
                summary[-1] += event.data
            else:
                summary.append(event.data)
        else:
            summary.append(("end", event.trailers))
    return summary, error


@settings(max_examples=150)
@given(requests(), st.integers(0, 400), st.binary(min_size=1, max_size=3), st.booleans())
def test_split_does_not_change_the_outcome(req, position, junk, corrupt):
    """Fed whole or byte by byte, the same bytes give the same requests or the same status:
    the incremental scan and the one-pass parse agree."""
    method, target, _, _, version, headers, body_chunks, chunked = req
    data = bytearray(serialize(method, target, version, headers, body_chunks, chunked) * 2)
    if corrupt:
        position = min(position, len(data))
        data[position:position + len(junk)] = junk
    limits = Limits(max_request_line=60, max_header_bytes=300, max_headers=6, max_body=150)
    whole = _outcome(parse_all, bytes(data), limits)
    bytewise = _outcome(feed_bytewise, bytes(data), limits)
    assert whole == bytewise


TCHARS = st.text(TOKEN_CHARS, min_size=1, max_size=6)
QDTEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=8)
chunk_exts = st.lists(st.tuples(TCHARS, st.none() | TCHARS | QDTEXT.map(
    lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')), max_size=3).map(
    lambda exts: "".join(";" + n + ("" if v is None else "=" + v) for n, v in exts).encode())


@settings(max_examples=200)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=40), chunk_exts), max_size=4), chunk_exts,
       st.lists(st.tuples(tokens, field_values), max_size=3), st.lists(st.integers(0, 500), max_size=5))
def test_chunked_round_trip_with_extensions_and_trailers(chunks, last_ext, trailers, splits):
    data = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    for chunk, ext in chunks:
        data += b"%x%s\r\n%s\r\n" % (len(chunk), ext, chunk)
    data += b"0" + last_ext + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"
    events = parse_all(data, splits)
    assert b"".join(e.data for e in events if isinstance(e, Body)) == b"".join(c for c, _ in chunks)
    assert events[-1].trailers == [(n.lower(), v) for n, v in trailers]


hosts = st.sampled_from([b"h", b"example.test:8080", b"127.0.0.1", b"[::1]:1", b"[v7.a:b]", b""])


@settings(max_examples=200)
@given(hosts, hosts, st.sampled_from([b"http", b"HTTPS"]), path_chars, st.booleans(),
       st.lists(st.sampled_from([b"100-continue", b"100-CONTINUE", b"", b" , "]), max_size=3))
def test_hosts_absolute_form_and_expect_round_trip(host, authority, scheme, path, absolute, expects):
    if absolute and not authority:
        authority = b"a"
    target = (scheme + b"://" + authority if absolute else b"") + b"/" + path.encode()
    data = (b"POST " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 1\r\n" +
            b"".join(b"Expect: " + e + b"\r\n" for e in expects) + b"\r\nx")
    request = parse_all(data)[0]
    assert request.host == (authority if absolute else host)
    assert [v for n, v in request.headers if n == b"host"] == [request.host]
    assert request.expect_continue == any(e.strip(b" ,") for e in expects)
    assert request.path == b"/" + path.encode().split(b"?")[0]


PREFIXES = [b"", b"GET ", b"GET /", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: h\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;a=\"b\"\r\nx\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"]


@settings(max_examples=300)
@given(st.sampled_from(PREFIXES), st.binary(max_size=200), st.lists(st.integers(0, 300), max_size=4))
def test_garbage_at_every_stage_gives_events_or_http_error(prefix, junk, splits):
    """Garbage after each stage of a request (method, target, version, fields, chunk lines,
    chunk data, trailers) only ever raises the module's own HTTPError."""
    try:
        parse_all(prefix + junk, splits, Limits(max_request_line=100, max_header_bytes=200))
    except HTTPError as exc:
        assert exc.status in (400, 413, 414, 417, 431, 501, 505)
