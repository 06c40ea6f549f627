"""The request fast paths give the same answers as the general ones.

The parser reads a complete, well-formed head in one match and scans anything else
incrementally; the ASGI and WSGI servers work a connection's origin out once unless a request
carries forwarded headers. Each shortcut is checked against the path it stands in for."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings, strategies as st

from _serve import Client, Served
from graceful.http.trust import parse_trust
from graceful.http11 import NEED_DATA, HTTPError, Limits, Request, RequestParser

# -- the parser: one match == the incremental scan ----------------------------------------------

_TOKENS = st.sampled_from([b"GET", b"POST", b"HEAD", b"host", b"Host", b"x-a", b"Accept",
                           b"content-length", b"transfer-encoding", b"connection", b"expect"])
_VALUES = st.sampled_from([b"", b"1", b"0", b"chunked", b"close", b"keep-alive", b"a b",
                           b"\tx", b"100-continue", b"app.test", b"[::1]:80", b"\xe9"])
_NOISE = st.sampled_from([b"", b" ", b"\t", b"\r", b"\n", b"\x00", b"\x7f", b":", b"\r\n",
                          b"\x80", b"HTTP/1.1", b"/", b"?", b"%", b"#"])


@st.composite
def heads(draw) -> bytes:
    """Mostly valid request heads with a little noise spliced in."""
    method = draw(_TOKENS)
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"*", b"http://h.test/x", b"/%c0", b"/ "]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0"]))
    lines = [method + b" " + target + b" " + version]
    for _ in range(draw(st.integers(0, 5))):
        lines.append(draw(_TOKENS) + draw(st.sampled_from([b":", b": ", b" :", b""]))
                     + draw(_VALUES))
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if draw(st.booleans()):
        at = draw(st.integers(0, len(head)))
        head = head[:at] + draw(_NOISE) + head[at:]
    return head


def _outcome(data: bytes, piece: int, limits: Limits, one_match: bool = True) -> object:
    """What the parser makes of ``data`` fed ``piece`` bytes at a time: the request's fields,
    an error status, or "incomplete". ``one_match=False`` turns the one-match path off."""
    parser = RequestParser(limits)
    if not one_match:
        parser._whole_head = lambda: None  # type: ignore[method-assign]
    try:
        for at in range(0, len(data), piece):
            parser.feed(data[at:at + piece])
            event = parser.next_event()
            if isinstance(event, Request):
                return (event.method, event.target, event.path, event.query, event.version,
                        event.headers, event.keep_alive, event.expect_continue,
                        event.content_length, event.chunked, event.upgrade, event.host,
                        event.forwarded, bytes(parser._buf))
            assert event is NEED_DATA
    except HTTPError as exc:
        return exc.status
    return "incomplete"


_SMALL = Limits(max_request_line=12, max_header_bytes=20, max_headers=2)


@settings(max_examples=300, deadline=None)
@given(heads(), st.sampled_from([Limits(), _SMALL]))
# A request line over the limit, its head not complete: refused at once, fed whole or bytewise.
@example(b"Accept /a?b=c HTTP/1.1\r\n \r\n", _SMALL)
def test_the_one_match_path_agrees_with_the_incremental_scan(head, limits):
    whole = _outcome(head, len(head) or 1, limits)
    assert whole == _outcome(head, len(head) or 1, limits, one_match=False)
    bytewise = _outcome(head, 1, limits)
    if isinstance(whole, tuple) or isinstance(bytewise, tuple):
        assert whole == bytewise  # a head with several faults may be refused for another one
    else:
        assert isinstance(whole, int) == isinstance(bytewise, int)


def test_forwarded_fields_are_flagged_and_others_are_not():
    for name, flagged in ((b"X-Forwarded-For", True), (b"forwarded", True),
                          (b"X-Forwarded-Proto", True), (b"X-Forwarded-Prefix", False),
                          (b"X-Real-IP", False)):
        parser = RequestParser()
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + name + b": 1.2.3.4\r\n\r\n")
        assert parser.next_event().forwarded is flagged, name


def test_trust_answers_are_remembered_but_bounded():
    from graceful.http import trust as trust_module

    trust = parse_trust("127.0.0.0/8, ::1")
    assert trust.trusts("127.0.0.9") and trust.trusts("127.0.0.9")
    assert not trust.trusts("10.0.0.1") and not trust.trusts("10.0.0.1")
    assert not trust.trusts("not an address") and trust.trusts("::1")
    for n in range(trust_module._KNOWN_PEERS + 10):
        trust.trusts(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert len(trust._known) == trust_module._KNOWN_PEERS
    assert trust.trusts("127.1.2.3") and not trust.trusts("10.255.255.254")


# -- the servers: the per-connection origin never outlives a request -----------------------------

@pytest.mark.parametrize("app", ["edge_wsgi.py:app", "edge_asgi.py:app"])
def test_forwarded_headers_count_for_their_own_request_only(procs, tmp_path, app):
    """On one keep-alive connection from a trusted peer: plain, forwarded, plain again."""
    served = Served(procs, tmp_path, app)  # the default trusts 127.0.0.1
    forwarded = "GET /info HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 203.0.113.7\r\n" \
                "X-Forwarded-Proto: https\r\n\r\n"
    plain = "GET /info HTTP/1.1\r\nHost: app.test\r\n\r\n"
    seen = []
    with served.connect() as sock:
        client = Client(sock)
        for request in (plain, forwarded, plain, forwarded):
            client.send(request.encode())
            response = client.response()
            assert response.status == 200, response
            info = json.loads(response.body)
            seen.append((info["REMOTE_ADDR"], info["wsgi.url_scheme"]))
    assert seen == [("127.0.0.1", "http"), ("203.0.113.7", "https")] * 2


def test_remembered_response_fields_are_still_checked_in_every_shape(procs, tmp_path):
    """The ASGI server remembers valid (name, value) tuples; lists, bytearray values and a bad
    value sent after good ones still go through the full check."""
    served = Served(procs, tmp_path, "header_shapes_asgi.py:app")
    with served.connect() as sock:
        client = Client(sock)
        for _ in range(3):  # the second and third answers come from what was remembered
            client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            response = client.response()
            assert response.status == 200, response
            assert [response.headers.get(n) for n in ("x-tuple", "x-list", "x-bytearray")] \
                == ["1", "2", "3"]
            # The app's Content-Length framed the body; its hop-by-hop fields were dropped.
            assert response.raw_head.lower().count(b"content-length: 3\r\n") == 1, response
            assert b"transfer-encoding" not in response.raw_head.lower()
            assert b"keep-alive" not in response.raw_head.lower()
            assert response.body == b"ok\n"
        client.send(b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\n")
        response = client.response()
    assert response.status == 500
    assert b"a\rb" not in response.raw_head
