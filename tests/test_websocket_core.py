"""The sans-IO WebSocket core: round trips under hypothesis, garbage, and the RFC's rules."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful.http.permessage_deflate import DeflateParams, negotiate, parse_extensions
from graceful.http.websocket import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
                                     Close, HandshakeError, Message, Ping, Pong, ProtocolError,
                                     WebSocket, accept_key, accept_response, check_handshake,
                                     encode_frame)
from graceful.http11 import RequestParser

MASK = b"\x37\xfa\x21\x3d"
KEY = base64.b64encode(b"0123456789abcdef").decode()


def frame(opcode, payload, fin=True, rsv1=False, mask=MASK):
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask)


def feed_in_pieces(ws, data, cuts):
    events = []
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        events += ws.feed(data[start:cut])
        start = cut
    return events


def compress(data, compressor=None):
    compressor = compressor or zlib.compressobj(wbits=-15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


# -- round trips --------------------------------------------------------------------------------

messages = st.one_of(st.text(max_size=300), st.binary(max_size=300))


@st.composite
def client_stream(draw):
    """Masked client frames for a list of messages: fragmented, with pings between fragments."""
    sent = draw(st.lists(messages, max_size=6))
    wire = b""
    pings = []
    for message in sent:
        opcode = OP_TEXT if isinstance(message, str) else OP_BINARY
        payload = message.encode() if isinstance(message, str) else message
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        pieces = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)])]
        for i, piece in enumerate(pieces):
            mask = draw(st.binary(min_size=4, max_size=4))
            wire += frame(opcode if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1,
                          mask=mask)
            if i < len(pieces) - 1 and draw(st.booleans()):
                ping = draw(st.binary(max_size=125))
                pings.append(ping)
                wire += frame(OP_PING, ping)
    return sent, pings, wire


@given(client_stream(), st.lists(st.integers(0, 3000), max_size=20))
@settings(max_examples=300, deadline=None)
def test_masked_client_frames_parse_to_the_same_messages_under_any_chunking(stream, cuts):
    sent, pings, wire = stream
    events = feed_in_pieces(WebSocket(), wire, [c for c in cuts if c < len(wire)])
    assert [e.data for e in events if isinstance(e, Message)] == sent
    assert [e.payload for e in events if isinstance(e, Ping)] == pings
    assert not [e for e in events if isinstance(e, ProtocolError)]


@given(st.lists(messages, max_size=6), st.lists(st.integers(0, 3000), max_size=10),
       st.booleans(), st.booleans())
@settings(max_examples=200, deadline=None)
def test_server_frames_round_trip_through_a_client_parser_with_and_without_deflate(
        sent, cuts, deflate, no_context):
    params = DeflateParams(server_no_context_takeover=no_context) if deflate else None
    server = WebSocket(deflate=params)
    client = WebSocket(client=True, deflate=_mirror(params))
    wire = b"".join(server.send(m) for m in sent)
    events = feed_in_pieces(client, wire, [c for c in cuts if c < len(wire)])
    assert [e.data for e in events] == sent


def _mirror(params):
    """The client side of the same agreement: it inflates what the server compressed."""
    if params is None:
        return None
    return DeflateParams(client_no_context_takeover=params.server_no_context_takeover)


@given(st.lists(st.binary(min_size=64, max_size=400), min_size=1, max_size=5), st.booleans())
@settings(max_examples=100, deadline=None)
def test_compressed_client_messages_with_context_takeover(sent, no_context):
    ws = WebSocket(deflate=DeflateParams(client_no_context_takeover=no_context))
    compressor = zlib.compressobj(wbits=-15)
    wire = b""
    for message in sent:
        if no_context:
            compressor = zlib.compressobj(wbits=-15)
        wire += frame(OP_BINARY, compress(message, compressor), rsv1=True)
    assert [e.data for e in ws.feed(wire)] == sent


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=10), st.booleans())
@settings(max_examples=500, deadline=None)
def test_garbage_yields_only_the_modules_own_events(data, cuts, deflate):
    ws = WebSocket(max_size=1000, deflate=DeflateParams() if deflate else None)
    events = feed_in_pieces(ws, data, [c for c in cuts if c < len(data)])
    for event in events:
        assert isinstance(event, (Message, Ping, Pong, Close, ProtocolError))
        if isinstance(event, ProtocolError):
            assert event.code in (1002, 1007, 1009)
    errors = [e for e in events if isinstance(e, ProtocolError)]
    assert len(errors) <= 1 and (not errors or events[-1] is errors[0])
    assert ws.feed(b"\x81\x80" + MASK) == [] or not (errors or ws.close_received)


# -- the fast path: whole plain frames parsed straight from what arrived ------------------------


def general_parser(**options):
    """A server WebSocket that never takes the fast path, to compare the fast path with."""
    ws = WebSocket(**options)
    ws._fast = False
    return ws


def described(events):
    """Events as comparable values (the classes have no __eq__)."""
    out = []
    for e in events:
        if isinstance(e, Message):
            out.append(("message", type(e.data).__name__, e.data))
        elif isinstance(e, (Ping, Pong)):
            out.append((type(e).__name__, e.payload))
        elif isinstance(e, Close):
            out.append(("close", e.code, e.reason))
        else:
            out.append(("error", e.code, e.detail))
    return out


@st.composite
def fast_path_edge_frames(draw):
    """One frame near every edge of the fast path: text (valid or not) and binary, masked or
    not, FIN or not, RSV bits, control and reserved opcodes, 7/16/64-bit length forms, shortest
    or not, and lengths around max_size."""
    opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY, OP_TEXT, OP_BINARY, OP_CONT, OP_PING,
                                   OP_PONG, OP_CLOSE, 0x3]))
    payload = draw(st.one_of(st.text(max_size=40).map(str.encode),
                             st.binary(max_size=40),
                             st.sampled_from([b"\xc0\xaf", b"ok\xed\xa0\x80", "é".encode()[:1],
                                              b"\x03\xe8bye"]),
                             st.integers(100, 300).map(lambda n: b"x" * n)))
    first = (0x80 if draw(st.booleans()) or draw(st.booleans()) else 0) | opcode
    if draw(st.integers(0, 9)) == 0:
        first |= draw(st.sampled_from([0x40, 0x20, 0x10]))
    mask = draw(st.binary(min_size=4, max_size=4)) if draw(st.integers(0, 9)) else None
    n = len(payload)
    form = draw(st.sampled_from(["short", "short", "16", "64"]))
    if form == "short" and n < 126:
        head = struct.pack("!BB", first, (0x80 if mask else 0) | n)
    elif form == "64":
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
    else:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    body = payload if mask is None else encode_frame(OP_BINARY, payload, mask=mask)[-n - 4:] \
        if n else mask
    return head + body


frame_streams = st.lists(st.one_of(
    fast_path_edge_frames(),
    messages.map(lambda m: frame(OP_TEXT if isinstance(m, str) else OP_BINARY,
                                 m.encode() if isinstance(m, str) else m))), max_size=6)


@given(frame_streams, st.integers(50, 400))
@settings(max_examples=300, deadline=None)
def test_the_fast_path_yields_what_the_general_parser_yields_split_at_every_byte(frames,
                                                                                 max_size):
    wire = b"".join(frames)
    expected = described(general_parser(max_size=max_size).feed(wire))
    assert described(WebSocket(max_size=max_size).feed(wire)) == expected
    for cut in range(len(wire) + 1):
        fast = WebSocket(max_size=max_size)
        events = fast.feed(wire[:cut]) + fast.feed(wire[cut:])
        assert described(events) == expected, cut
        slow = general_parser(max_size=max_size)
        assert described(slow.feed(wire[:cut]) + slow.feed(wire[cut:])) == expected, cut


@given(frame_streams, st.lists(st.integers(0, 3000), max_size=20), st.booleans())
@settings(max_examples=300, deadline=None)
def test_the_fast_path_yields_what_the_general_parser_yields_under_any_chunking(frames, cuts,
                                                                              deflate):
    wire = b"".join(frames)
    cuts = [c for c in cuts if c < len(wire)]
    params = DeflateParams() if deflate else None
    fast = feed_in_pieces(WebSocket(max_size=300, deflate=params), wire, cuts)
    slow = feed_in_pieces(general_parser(max_size=300, deflate=params), wire, cuts)
    assert described(fast) == described(slow)


def test_the_fast_path_is_taken_for_whole_plain_frames():
    ws = WebSocket()
    events = ws.feed(frame(OP_BINARY, b"a" * 70000) + frame(OP_TEXT, b"hi") +
                     frame(OP_BINARY, b"b" * 300))
    assert described(events) == [("message", "bytes", b"a" * 70000), ("message", "str", "hi"),
                                 ("message", "bytes", b"b" * 300)]
    assert ws._buf == b"" and ws._frame is None and ws._message is None  # nothing buffered


sizes_around_the_switch = st.one_of(st.sampled_from([1, 3, 4, 5, 511, 512, 513, 1001]),
                                    st.integers(0, 3000))


@given(sizes_around_the_switch.flatmap(lambda n: st.binary(min_size=n, max_size=n)),
       st.binary(min_size=4, max_size=4), st.integers(0, 7))
@settings(max_examples=300, deadline=None)
def test_unmasking_is_the_xor_of_rfc_6455_5_3_on_both_sides_of_its_size_switch(data, mask,
                                                                               offset):
    from graceful.http.websocket import _unmask
    expected = bytes(b ^ mask[(i + offset) % 4] for i, b in enumerate(data))
    assert _unmask(data, mask, offset) == expected
    assert _unmask(bytearray(data), mask, offset) == expected
    framed = b"head" + data + b"tail"
    assert _unmask(framed, mask, offset, 4, 4 + len(data)) == expected
    assert _unmask(bytearray(framed), mask, offset, 4, 4 + len(data)) == expected


# -- RFC 6455 rules -----------------------------------------------------------------------------


def error_code(ws, data):
    events = ws.feed(data)
    assert events and isinstance(events[-1], ProtocolError), events
    return events[-1].code


def test_client_frames_must_be_masked():
    assert error_code(WebSocket(), frame(OP_TEXT, b"hi", mask=None)) == 1002


def test_rsv_bits_are_refused_unless_an_extension_set_them():
    assert error_code(WebSocket(), b"\xc1\x80" + MASK) == 1002  # RSV1, no deflate
    assert error_code(WebSocket(), b"\xa1\x80" + MASK) == 1002  # RSV2
    assert error_code(WebSocket(), b"\x91\x80" + MASK) == 1002  # RSV3
    ws = WebSocket(deflate=DeflateParams())
    assert error_code(ws, frame(OP_PING, b"", rsv1=True)) == 1002
    ws = WebSocket(deflate=DeflateParams())
    data = compress(b"hello")
    assert error_code(ws, frame(OP_TEXT, data[:2], fin=False, rsv1=True) +
                      frame(OP_CONT, data[2:], rsv1=True)) == 1002


def test_control_frames_are_short_and_never_fragmented():
    assert error_code(WebSocket(), frame(OP_PING, b"x" * 126)) == 1002
    assert error_code(WebSocket(), frame(OP_PING, b"x", fin=False)) == 1002
    [ping] = WebSocket().feed(frame(OP_PING, b"x" * 125))
    assert ping.payload == b"x" * 125


def test_unknown_opcodes_are_refused():
    for opcode in (3, 7, 0xB, 0xF):
        assert error_code(WebSocket(), frame(opcode, b"")) == 1002


def test_fragments_with_control_frames_between_them():
    ws = WebSocket()
    events = ws.feed(frame(OP_TEXT, b"hel", fin=False) + frame(OP_PING, b"p") +
                     frame(OP_CONT, b"lo ", fin=False) + frame(OP_PONG, b"q") +
                     frame(OP_CONT, b"world"))
    assert [type(e) for e in events] == [Ping, Pong, Message]
    assert events[2].data == "hello world"


def test_continuation_rules():
    assert error_code(WebSocket(), frame(OP_CONT, b"x")) == 1002  # nothing to continue
    assert error_code(WebSocket(), frame(OP_TEXT, b"a", fin=False) +
                      frame(OP_BINARY, b"b")) == 1002  # a new message mid-message


def test_invalid_utf8_fails_fast_on_the_first_invalid_prefix():
    ws = WebSocket()
    # The fragment ends with an invalid prefix; the message is not finished yet.
    assert error_code(ws, frame(OP_TEXT, "κόσμε".encode() + b"\xf4\x90", fin=False)) == 1007
    ws = WebSocket()
    assert error_code(ws, frame(OP_TEXT, b"ok\xed\xa0", fin=False)) == 1007  # a surrogate
    ws = WebSocket()
    assert ws.feed(frame(OP_TEXT, "é".encode()[:1], fin=False)) == []  # a valid prefix waits
    assert ws.feed(frame(OP_CONT, "é".encode()[1:]))[0].data == "é"
    ws = WebSocket()
    assert error_code(ws, frame(OP_TEXT, "é".encode()[:1])) == 1007  # ... but not at the end
    # Within one frame that arrives in pieces, too:
    ws = WebSocket()
    wire = frame(OP_TEXT, b"a" * 100 + b"\xc0\xaf" + b"b" * 100)
    assert ws.feed(wire[:110]) and ws.failed


def test_close_codes_are_validated():
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
        assert error_code(WebSocket(), frame(OP_CLOSE, struct.pack("!H", code))) == 1002, code
    for code in (1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999):
        [close] = WebSocket().feed(frame(OP_CLOSE, struct.pack("!H", code) + b"why"))
        assert (close.code, close.reason) == (code, "why")
    [close] = WebSocket().feed(frame(OP_CLOSE, b""))
    assert close.code == 1005
    assert error_code(WebSocket(), frame(OP_CLOSE, b"\x03")) == 1002
    assert error_code(WebSocket(), frame(OP_CLOSE, b"\x03\xe8\xff")) == 1007


def test_nothing_is_read_after_a_close_frame():
    ws = WebSocket()
    events = ws.feed(frame(OP_TEXT, b"a") + frame(OP_CLOSE, b"\x03\xe8") + frame(OP_TEXT, b"b"))
    assert [type(e) for e in events] == [Message, Close]
    assert ws.feed(frame(OP_TEXT, b"c")) == []
    assert not ws.closed
    assert ws.close(1000) and ws.closed
    assert ws.close(1000) == b""  # once


def test_messages_after_our_close_are_still_delivered():
    ws = WebSocket()
    ws.close(1012)
    events = ws.feed(frame(OP_TEXT, b"late") + frame(OP_CLOSE, b"\x03\xf4"))
    assert [type(e) for e in events] == [Message, Close] and ws.closed
    with pytest.raises(RuntimeError):
        ws.send("more")


def test_lengths_are_bounded_by_max_size_before_the_payload_arrives():
    ws = WebSocket(max_size=1000)
    head = frame(OP_BINARY, b"x" * 70000)[:14]  # 16-bit length: 70000 needs 64-bit
    assert error_code(ws, b"\x82\xff" + struct.pack("!Q", 1 << 40) + MASK) == 1009
    assert error_code(WebSocket(max_size=1000), head) == 1009
    ws = WebSocket(max_size=1000)  # the bound holds across fragments
    assert error_code(ws, frame(OP_BINARY, b"x" * 600, fin=False) +
                      frame(OP_CONT, b"x" * 600)) == 1009
    assert error_code(WebSocket(), b"\x82\xff" + struct.pack("!Q", 1 << 63) + MASK) == 1002


def test_lengths_must_use_the_shortest_form():
    assert error_code(WebSocket(), b"\x82\xfe\x00\x05" + MASK + b"x" * 5) == 1002
    assert error_code(WebSocket(), b"\x82\xff" + struct.pack("!Q", 5) + MASK) == 1002


def test_a_zip_bomb_gets_1009_without_inflating_it():
    bomb = compress(b"\x00" * (50 << 20))  # 50 MB of zeros, ~50 kB on the wire
    ws = WebSocket(max_size=1 << 20, deflate=DeflateParams())
    assert error_code(ws, frame(OP_BINARY, bomb, rsv1=True)) == 1009


def test_the_server_compresses_with_zlibs_fastest_level():
    # Level 1: a third of the CPU of zlib's default for 15% more bytes (permessage_deflate.py).
    text = b"".join(b"%d: the quick brown fox jumps over the lazy dog\n" % i for i in range(3000))
    fastest = zlib.compressobj(1, zlib.DEFLATED, -15)
    expected = compress(text, fastest)
    sent = WebSocket(deflate=DeflateParams()).send(text)
    assert sent[0] == 0xC2 and sent.endswith(expected)
    [message] = WebSocket(client=True, deflate=DeflateParams()).feed(sent)
    assert message.data == text


def test_bad_compressed_data_gets_1007():
    ws = WebSocket(deflate=DeflateParams())
    assert error_code(ws, frame(OP_BINARY, b"\xff\xff\xff\xff", rsv1=True)) == 1007


def test_send_helpers_encode_frames():
    ws = WebSocket()
    assert ws.send("hi") == b"\x81\x02hi"
    assert ws.send(b"\x00") == b"\x82\x01\x00"
    assert ws.ping(b"p") == b"\x89\x01p" and ws.pong(b"") == b"\x8a\x00"
    assert ws.send(b"x" * 200)[:4] == b"\x82\x7e\x00\xc8"
    assert ws.send(b"x" * 70000)[:10] == b"\x82\x7f" + struct.pack("!Q", 70000)
    assert ws.close(1012, "restart") == b"\x88\x09\x03\xf4restart"
    with pytest.raises(ValueError):
        WebSocket().close(1006)
    assert len(WebSocket().close(1000, "é" * 100)) == 2 + 2 + 122  # cut on a character


# -- the handshake ------------------------------------------------------------------------------


def parse_request(head: str):
    parser = RequestParser()
    parser.feed(head.replace("\n", "\r\n").encode() + b"\r\n")
    return parser.next_event()


def upgrade(*extra, method="GET", version="13", key=KEY, connection="keep-alive, Upgrade"):
    lines = [f"{method} /chat HTTP/1.1", "Host: x", "Upgrade: WebSocket",
             f"Connection: {connection}"]
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    return parse_request("\n".join(lines + list(extra)) + "\n")


def test_the_accept_key_of_rfc_6455():
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_valid_handshake_and_its_answer():
    handshake = check_handshake(upgrade("Sec-WebSocket-Protocol: chat, superchat",
                                        "Sec-WebSocket-Protocol: v2"))
    assert handshake.subprotocols == ["chat", "superchat", "v2"] and handshake.deflate is None
    head = accept_response(handshake, "superchat", [(b"x-extra", b"1")])
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Protocol: superchat\r\n" in head and b"\r\nx-extra: 1\r\n" in head
    assert b"Sec-WebSocket-Accept: " + accept_key(KEY.encode()) + b"\r\n" in head
    assert head.endswith(b"\r\n\r\n")
    with pytest.raises(ValueError):
        accept_response(handshake, "unoffered")


@pytest.mark.parametrize("request_, status", [
    (lambda: upgrade(method="POST"), 400),
    (lambda: upgrade(connection="keep-alive"), 400),
    (lambda: upgrade(version=None), 426),
    (lambda: upgrade(version="8"), 426),
    (lambda: upgrade(key=None), 400),
    (lambda: upgrade(key=base64.b64encode(b"short").decode()), 400),
    (lambda: upgrade(key="not base64!!"), 400),
    (lambda: upgrade("Sec-WebSocket-Key: " + KEY), 400),  # two keys
    (lambda: parse_request("GET / HTTP/1.1\nHost: x\nUpgrade: h2c\nConnection: upgrade\n"
                           f"Sec-WebSocket-Version: 13\nSec-WebSocket-Key: {KEY}\n"), 400),
])
def test_invalid_handshakes_are_refused_with_400_or_426(request_, status):
    with pytest.raises(HandshakeError) as info:
        check_handshake(request_())
    assert info.value.status == status
    if status == 426:
        assert (b"sec-websocket-version", b"13") in info.value.headers


# -- permessage-deflate negotiation -------------------------------------------------------------


def test_deflate_negotiation():
    handshake = check_handshake(upgrade(
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"))
    assert handshake.deflate is not None and handshake.deflate.header() == "permessage-deflate"
    assert check_handshake(upgrade("Sec-WebSocket-Extensions: permessage-deflate"),
                           per_message_deflate=False).deflate is None
    accepted = negotiate(parse_extensions([
        "x-unknown, permessage-deflate; server_max_window_bits=8",  # zlib cannot: next offer
        'permessage-deflate; server_no_context_takeover; client_no_context_takeover; '
        'server_max_window_bits="10"; client_max_window_bits=12']))
    assert accepted is not None
    assert accepted.header() == ("permessage-deflate; server_no_context_takeover; "
                                 "client_no_context_takeover; server_max_window_bits=10; "
                                 "client_max_window_bits=12")
    for bad in ("permessage-deflate; server_max_window_bits=16",
                "permessage-deflate; server_max_window_bits",
                "permessage-deflate; client_max_window_bits=7",
                "permessage-deflate; server_no_context_takeover=1",
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                "permessage-deflate; unknown_param"):
        assert negotiate(parse_extensions([bad])) is None, bad


def test_server_max_window_bits_is_honoured():
    params = negotiate(parse_extensions(["permessage-deflate; server_max_window_bits=9"]))
    server = WebSocket(deflate=params)
    message = bytes(range(256)) * 40
    wire = server.send(message)
    assert wire[0] & 0x40  # compressed
    payload = wire[4:]
    inflater = zlib.decompressobj(wbits=-9)  # fails if the server used a larger window
    assert inflater.decompress(payload + b"\x00\x00\xff\xff") == message


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_extension_header_garbage_never_raises(text):
    negotiate(parse_extensions([text]))
