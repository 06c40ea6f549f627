"""PROXY protocol v1 and v2 (graceful.http.proxy_protocol): the spec's examples, round trips
through the encoder in any chunking with the request that follows, and garbage that only ever
gives ProxyProtocolError, as early as the bytes allow."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful.http.proxy_protocol import (INET, INET6, LOCAL, NEED_DATA, PROXY, UNIX, UNSPEC,
                                          V1_MAX, V2_SIGNATURE, ProxyHeader, ProxyHeaderParser,
                                          ProxyProtocolError, effective_peer, encode)

REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def parse(data: bytes, pieces: int = 1):
    """Feed ``data`` in ``pieces`` roughly equal parts; the header and the rest."""
    parser = ProxyHeaderParser()
    step = max(1, -(-len(data) // pieces))
    result = NEED_DATA
    for at in range(0, len(data), step):
        result = parser.feed(data[at:at + step])
        if result is not NEED_DATA:
            rest = parser.rest + data[at + step:]
            return result, rest
    return result, b""


def v2(command: int, family_transport: int, payload: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family_transport,
                                      len(payload)) + payload


# -- version 1: the spec's lines ------------------------------------------------------------

def test_v1_tcp4_and_the_request_in_the_same_segment():
    header, rest = parse(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n" + REQUEST)
    assert header == ProxyHeader(1, PROXY, INET, ("192.0.2.1", 56324), ("198.51.100.2", 443))
    assert header.proxied and rest == REQUEST


def test_v1_longest_lines_fit_the_107_byte_bound():
    tcp4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(tcp4) == 56 and parse(tcp4)[0].source == ("255.255.255.255", 65535)
    six = "ffff:" * 7 + "ffff"
    tcp6 = f"PROXY TCP6 {six} {six} 65535 65535\r\n".encode()
    assert len(tcp6) == 104 and parse(tcp6)[0].destination == (six, 65535)
    unknown = f"PROXY UNKNOWN {six} {six} 65535 65535\r\n".encode()
    assert len(unknown) == V1_MAX
    header, rest = parse(unknown + b"x")
    assert header == ProxyHeader(1, PROXY, UNSPEC) and not header.proxied and rest == b"x"


def test_v1_unknown_alone():
    header, rest = parse(b"PROXY UNKNOWN\r\n")
    assert header.family == UNSPEC and header.source is None and rest == b""


def test_v1_ipv6_is_normalised():
    header, _ = parse(b"PROXY TCP6 2001:DB8:0:0::1 ::FFFF:10.0.0.1 1 2\r\n")
    assert header.source[0] == "2001:db8::1"
    assert header.destination[0] in ("::ffff:a00:1", "::ffff:10.0.0.1")  # 3.13 prints the latter


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",          # a field missing
    b"PROXY TCP4 192.0.2.1  198.51.100.2 56324 443\r\n",     # two spaces
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 \r\n",     # trailing space
    b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n",    # family mismatch
    b"PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n",
    b"PROXY TCP4 192.0.2.01 198.51.100.2 56324 443\r\n",     # leading zero (octal?)
    b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",      # port out of range
    b"PROXY TCP4 192.0.2.1 198.51.100.2 0443 443\r\n",       # leading zero in a port
    b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",                  # a zone
    b"PROXY TCP4 localhost 198.51.100.2 1 2\r\n",
    b"PROXY TCP4\r\n",
    b"PROXY \r\n",
])
def test_v1_malformed_lines_are_refused(line):
    with pytest.raises(ProxyProtocolError):
        parse(line)


@pytest.mark.parametrize("start, why", [
    (b"GET / HTTP/1.1\r\n", "did not start with a PROXY"),   # a plain HTTP client
    (b"G", "did not start with a PROXY"),                    # known from the first byte
    (b"PROXI", "not a PROXY protocol header"),
    (b"proxy ", "did not start"),
    (b"PROXY TCP5", "TCP4, TCP6 or UNKNOWN"),
    (b"PROXY X", "TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 1.2.3.4\n", "not printable"),              # bare LF
    (b"PROXY TCP4 1.2.3.4\rx", "CR not followed by LF"),
    (b"PROXY TCP4 1.2.3.4\x00", "not printable"),
    (b"\r\n\r\n\x00\r\nQUIX", "not a PROXY protocol header"),
    (V2_SIGNATURE + b"\x11", "version 1"),
    (V2_SIGNATURE + b"\x22", "command 2"),
    (V2_SIGNATURE + b"\x21\x41", "family 4"),
    (V2_SIGNATURE + b"\x21\x12", "transport 2"),              # UDP over IPv4
])
def test_a_wrong_start_fails_as_soon_as_it_arrives(start, why):
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyProtocolError) as info:
        for i in range(len(start)):  # one byte at a time: it must fail on the last at latest
            parser.feed(start[i:i + 1])
    assert why in str(info.value)


def test_v1_line_without_crlf_in_107_bytes_is_refused():
    parser = ProxyHeaderParser()
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 15) + b"\r"  # 107 bytes, the LF would be 108th
    assert len(line) == V1_MAX
    with pytest.raises(ProxyProtocolError, match="longer than 107"):
        for i in range(len(line)):
            parser.feed(line[i:i + 1])
    with pytest.raises(ProxyProtocolError, match="longer than 107"):
        ProxyHeaderParser().feed(b"PROXY UNKNOWN " + b"x" * 200)


def test_v1_crlf_split_across_pieces():
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r") is NEED_DATA
    assert parser.feed(b"\nGET").source == ("1.2.3.4", 1)
    assert parser.rest == b"GET"


# -- version 2 ------------------------------------------------------------------------------

def test_v2_tcp4_with_tlvs_and_the_request_after_it():
    payload = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack("!HH", 56324, 443)
    tlvs = b"\x01\x00\x02h2" + b"\xea\x00\x05\x01vpce" + b"\x04\x00\x00"  # ALPN, AWS, NOOP
    header, rest = parse(v2(1, 0x11, payload + tlvs) + REQUEST)
    assert header == ProxyHeader(2, PROXY, INET, ("192.0.2.1", 56324), ("198.51.100.2", 443),
                                 ((1, b"h2"), (0xEA, b"\x01vpce"), (4, b"")))
    assert rest == REQUEST


def test_v2_tcp6_and_unix():
    payload = bytes(15) + b"\x01" + b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02" + b"\x00\x01\x00\x02"
    assert parse(v2(1, 0x21, payload))[0].source == ("::1", 1)
    unix = b"/run/client.sock".ljust(108, b"\0") + b"\0abstract".ljust(108, b"\0")
    header, _ = parse(v2(1, 0x31, unix))
    assert (header.family, header.source, header.destination) == (UNIX, "/run/client.sock",
                                                                  "@abstract")


def test_v2_local_is_a_health_check_whose_block_is_ignored():
    # LOCAL: use the real endpoints; the family and whatever follows are discarded.
    header, rest = parse(v2(0, 0x11, b"\xff" * 7) + b"x")
    assert header == ProxyHeader(2, LOCAL, UNSPEC) and not header.proxied and rest == b"x"
    header, _ = parse(v2(0, 0x00, b""))
    assert header.command == LOCAL
    header, _ = parse(v2(0, 0x4F, b""))  # even a family and transport that do not exist
    assert header == ProxyHeader(2, LOCAL, UNSPEC)


def test_v2_unspec_proxy_uses_the_real_peer():
    header, _ = parse(v2(1, 0x00, b"junk"))
    assert header == ProxyHeader(2, PROXY, UNSPEC) and not header.proxied


@pytest.mark.parametrize("family_transport, payload, why", [
    (0x11, bytes(11), "needs 12 address bytes"),
    (0x21, bytes(35), "needs 36 address bytes"),
    (0x31, bytes(215), "needs 216 address bytes"),
    (0x11, bytes(12) + b"\x01\x00", "cut short"),                 # TLV head of 2 bytes
    (0x11, bytes(12) + b"\x01\x00\x05abcd", "overruns"),          # value 1 byte short
    (0x11, bytes(12) + b"\x01\xff\xff", "overruns"),
])
def test_v2_lengths_are_bounds_checked(family_transport, payload, why):
    with pytest.raises(ProxyProtocolError, match=why):
        parse(v2(1, family_transport, payload))


def test_v2_waits_for_the_whole_length():
    data = v2(1, 0x11, bytes(12) + b"\x05\x00\x03abc")
    parser = ProxyHeaderParser()
    for i in range(len(data) - 1):
        assert parser.feed(data[i:i + 1]) is NEED_DATA
    assert parser.feed(data[-1:]).tlvs == ((5, b"abc"),)


def test_effective_peer():
    real = ("127.0.0.1", 5000)
    tcp = ProxyHeader(2, PROXY, INET6, ("2001:db8::1", 1), ("2001:db8::2", 443))
    assert effective_peer(tcp, real) == ("2001:db8::1", 1)
    unix = ProxyHeader(2, PROXY, UNIX, "/run/c.sock", "/run/s.sock")
    assert effective_peer(unix, real) is None  # a Unix socket client of the proxy
    for header in (ProxyHeader(2, LOCAL, UNSPEC), ProxyHeader(1, PROXY, UNSPEC)):
        assert effective_peer(header, real) == real


def test_feeding_after_the_header_is_a_programming_error():
    parser = ProxyHeaderParser()
    parser.feed(b"PROXY UNKNOWN\r\n")
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


@pytest.mark.parametrize("header", [
    ProxyHeader(1, LOCAL, UNSPEC),
    ProxyHeader(1, PROXY, UNIX, "/a", "/b"),
    ProxyHeader(1, PROXY, INET, ("1.2.3.4", 1), ("5.6.7.8", 2), ((1, b"x"),)),
    ProxyHeader(1, PROXY, INET, ("::1", 1), ("5.6.7.8", 2)),
    ProxyHeader(1, PROXY, INET),
    ProxyHeader(2, PROXY, INET, ("1.2.3.4", 70000), ("5.6.7.8", 2)),
    ProxyHeader(2, PROXY, INET6, ("1.2.3.4", 1), ("::1", 2)),
    ProxyHeader(2, PROXY, UNIX, "/" + "x" * 108, "/b"),
    ProxyHeader(2, PROXY, "ipx"),
    ProxyHeader(3, PROXY, UNSPEC),
])
def test_encoder_refuses_what_a_receiver_would_refuse(header):
    with pytest.raises(ProxyProtocolError):
        encode(header)


# -- properties -----------------------------------------------------------------------------

ports = st.integers(0, 65535)
unix_names = st.text(st.characters(min_codepoint=1, max_codepoint=0x7ff,
                                   blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(lambda s: not s.startswith("@"))
unix_paths = st.one_of(unix_names.map(lambda s: "/" + s), unix_names.map(lambda s: "@" + s))
tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4).map(tuple)


@st.composite
def headers(draw):
    version = draw(st.sampled_from([1, 2]))
    family = draw(st.sampled_from([INET, INET6, UNSPEC] + ([UNIX] if version == 2 else [])))
    if family in (INET, INET6):
        v = 4 if family == INET else 6
        source = (str(draw(st.ip_addresses(v=v))), draw(ports))
        destination = (str(draw(st.ip_addresses(v=v))), draw(ports))
    elif family == UNIX:
        source, destination = draw(unix_paths), draw(unix_paths)
    else:
        source = destination = None
    if version == 2 and draw(st.integers(0, 4)) == 0:
        return ProxyHeader(2, LOCAL, UNSPEC)
    extensions = draw(tlvs) if version == 2 and family != UNSPEC else ()
    return ProxyHeader(version, PROXY, family, source, destination, extensions)


@settings(max_examples=400, deadline=None)
@given(headers(), st.binary(max_size=40), st.lists(st.integers(0, 400), max_size=5))
def test_round_trip_in_any_chunking_keeps_the_bytes_after_it(header, after, cuts):
    data = encode(header) + after
    parser = ProxyHeaderParser()
    result = NEED_DATA
    start = 0
    for cut in sorted(min(c, len(data)) for c in cuts) + [len(data)]:
        if result is NEED_DATA:
            result = parser.feed(data[start:cut])
            rest = parser.rest
        else:
            rest += data[start:cut]
        start = cut
    assert result == header
    assert rest == after


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.binary(max_size=120),
                 st.binary(max_size=80).map(lambda b: b"PROXY " + b),
                 st.binary(max_size=80).map(lambda b: b"PROXY TCP4 " + b),
                 st.binary(max_size=80).map(lambda b: V2_SIGNATURE + b),
                 st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300))
                 .map(lambda t: V2_SIGNATURE + bytes(t[:2]) + struct.pack("!H", len(t[2]))
                      + t[2])),
       st.lists(st.integers(0, 300), max_size=4))
def test_garbage_gives_a_header_need_data_or_a_protocol_error(data, cuts):
    parser = ProxyHeaderParser()
    start = 0
    try:
        for cut in sorted(min(c, len(data)) for c in cuts) + [len(data)]:
            result = parser.feed(data[start:cut])
            start = cut
            if result is not NEED_DATA:
                assert isinstance(result, ProxyHeader)
                assert len(data) - start + len(parser.rest) <= len(data)
                return
    except ProxyProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(headers())
def test_a_truncated_header_only_ever_needs_data(header):
    data = encode(header)
    parser = ProxyHeaderParser()
    for i in range(len(data) - 1):
        assert parser.feed(data[i:i + 1]) is NEED_DATA
