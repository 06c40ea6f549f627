"""Forwarded headers (graceful.http.forwarded): believed from trusted peers only, walked from
the right, RFC 7239's examples, garbage that never raises, and the root path split."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful.errors import GracefulError
from graceful.http.forwarded import (Origin, RootPathError, parse_root_path, resolve,
                                     split_root_path)
from graceful.http.trust import DEFAULT_ALLOW, parse_trust

LOOPBACK = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 8000)
TRUST = parse_trust(DEFAULT_ALLOW + ",10.0.0.0/8")


def h(*pairs):
    """Request headers as graceful.http11 gives them: lower-case names, bytes."""
    return [(name.lower().encode(), value.encode("latin-1")) for name, value in pairs]


def origin(headers, peer=LOOPBACK, scheme="http", server=SERVER, trust=TRUST, **kw):
    return resolve(peer, headers, scheme=scheme, server=server, trust=trust, **kw)


# -- trust ----------------------------------------------------------------------------------

SPOOF = h(("Host", "app:8000"), ("X-Forwarded-For", "203.0.113.7"),
          ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example"),
          ("X-Forwarded-Port", "443"), ("Forwarded", "for=198.51.100.1;proto=https"))


def test_headers_from_an_untrusted_peer_change_nothing():
    result = origin(SPOOF, peer=("192.0.2.10", 5000))
    assert result == Origin(("192.0.2.10", 5000), "http", "app:8000", SERVER, False)


def test_a_trusted_peer_without_forwarded_headers_changes_nothing():
    result = origin(h(("Host", "app:8000")))
    assert result == Origin(LOOPBACK, "http", "app:8000", SERVER, True)


def test_unix_socket_peer_is_trusted_by_default_and_not_with_an_address_only_list():
    headers = h(("Host", "a"), ("X-Forwarded-For", "203.0.113.7"))
    assert origin(headers, peer=None).client == ("203.0.113.7", 0)
    assert origin(headers, peer=None, trust=parse_trust("127.0.0.1")).client is None
    assert origin(headers, peer=None, trust=parse_trust("127.0.0.1")).trusted is False


def test_peers_as_accept_returns_them():
    # accept() gives an IPv6 peer as 4 fields, and a Unix socket peer as "" or bytes.
    assert origin(h(("Host", "a")), peer=("::1", 5, 0, 0)).client == ("::1", 5)
    for unix in ("", b"", b"\0abstract"):
        result = origin(h(("Host", "a"), ("X-Forwarded-For", "203.0.113.7")), peer=unix)
        assert result.client == ("203.0.113.7", 0) and result.trusted


def test_ipv4_mapped_loopback_peer_is_trusted():
    assert origin(SPOOF, peer=("::ffff:127.0.0.1", 1)).trusted


# -- X-Forwarded-* --------------------------------------------------------------------------

def test_x_forwarded_for_proto_host_port_from_a_trusted_peer():
    result = origin(SPOOF[:5])
    assert result == Origin(("203.0.113.7", 0), "https", "evil.example",
                            ("evil.example", 443), True)


def test_rightmost_untrusted_hop_is_the_client_and_spoofed_hops_left_of_it_are_ignored():
    headers = h(("Host", "a"), ("X-Forwarded-For", "1.2.3.4, 203.0.113.7, 10.0.0.2, 10.0.0.3"))
    assert origin(headers).client == ("203.0.113.7", 0)


def test_when_every_hop_is_trusted_the_leftmost_is_the_client():
    headers = h(("Host", "a"), ("X-Forwarded-For", "10.0.0.1, 10.0.0.2"))
    assert origin(headers).client == ("10.0.0.1", 0)


def test_repeated_x_forwarded_for_lines_are_joined_in_order():
    joined = h(("Host", "a"), ("X-Forwarded-For", "198.51.100.1, 203.0.113.7, 10.0.0.2"))
    split = h(("Host", "a"), ("X-Forwarded-For", "198.51.100.1"),
              ("X-Forwarded-For", "203.0.113.7,10.0.0.2"))
    assert origin(joined) == origin(split)
    assert origin(split).client == ("203.0.113.7", 0)


def test_hops_with_ports_and_ipv6():
    headers = h(("Host", "a"), ("X-Forwarded-For", "[2001:db8::1]:4711, 192.0.2.1:80"))
    assert origin(headers).client == ("192.0.2.1", 80)
    headers = h(("Host", "a"), ("X-Forwarded-For", "2001:DB8::1"))
    assert origin(headers).client == ("2001:db8::1", 0)


@pytest.mark.parametrize("hop", ["unknown", "_hidden", "not-an-ip", "300.1.1.1", "1.2.3.4:0",
                                 "1.2.3.4:99999", "[::1", "[1.2.3.4]:80", "fe80::1%eth0",
                                 "::1:80x"])
def test_a_client_hop_that_is_not_an_address_makes_the_client_unknown_not_the_proxy(hop):
    # Never the proxy's own 127.0.0.1, which an application might take for "local".
    headers = h(("Host", "a"), ("X-Forwarded-For", f"203.0.113.7, {hop}"))
    assert origin(headers).client is None


def test_proto_lists_follow_the_client_hop_when_every_proxy_appended_one():
    headers = h(("Host", "a"), ("X-Forwarded-For", "203.0.113.7, 10.0.0.2"),
                ("X-Forwarded-Proto", "https, http"))
    assert origin(headers).scheme == "https"  # the client used https to reach the front proxy
    headers = h(("Host", "a"), ("X-Forwarded-For", "203.0.113.7, 10.0.0.2"),
                ("X-Forwarded-Proto", "http, http, https"))  # not one per hop: our peer's
    assert origin(headers).scheme == "https"


@pytest.mark.parametrize("proto, scheme", [("https", "https"), ("HTTPS", "https"),
                                           ("http", "http"), ("wss", "https"), ("ws", "http"),
                                           ("ftp", "http"), ("", "http"), ("https;x", "http"),
                                           ("javascript", "http")])
def test_only_http_and_websocket_schemes_are_taken(proto, scheme):
    assert origin(h(("Host", "a"), ("X-Forwarded-Proto", proto))).scheme == scheme


def test_websocket_requests_get_ws_and_wss():
    headers = h(("Host", "a"), ("X-Forwarded-Proto", "https"))
    assert origin(headers, websocket=True).scheme == "wss"
    assert origin(h(("Host", "a")), websocket=True).scheme == "ws"
    assert origin(h(("Host", "a")), scheme="https", websocket=True).scheme == "wss"
    assert origin(SPOOF, peer=("192.0.2.1", 1), websocket=True).scheme == "ws"


@pytest.mark.parametrize("host, server", [
    ("example.com", ("example.com", 443)),
    ("example.com:8443", ("example.com", 8443)),
    ("[2001:db8::1]:8443", ("2001:db8::1", 8443)),
    ("[2001:db8::1]", ("2001:db8::1", 443)),
    ("192.0.2.1", ("192.0.2.1", 443)),
    ("xn--nxasmq6b.example", ("xn--nxasmq6b.example", 443)),
    ("a%2Db", ("a%2Db", 443)),
])
def test_a_valid_forwarded_host_sets_host_and_server(host, server):
    headers = h(("Host", "app:8000"), ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", host))
    result = origin(headers)
    assert (result.host, result.server) == (host, server)


@pytest.mark.parametrize("host", ["", "a b", "user@example.com", "example.com:", "example.com:0",
                                  "example.com:65536", "example.com:80:80", "[::1", "[zz]:80",
                                  "[fe80::1%eth0]", "exa/mple.com", "example.com/path",
                                  "a%zz", "\u00e9xample.com", "example.com\\", "a" * 400])
def test_an_invalid_forwarded_host_is_ignored(host):
    result = origin(h(("Host", "app:8000"), ("X-Forwarded-Host", host)))
    assert (result.host, result.server) == ("app:8000", SERVER)


def test_forwarded_port_rewrites_the_host_port():
    result = origin(h(("Host", "app:8000"), ("X-Forwarded-Port", "8443")))
    assert (result.host, result.server) == ("app:8443", ("app", 8443))
    result = origin(h(("Host", "app:8000"), ("X-Forwarded-Proto", "https"),
                      ("X-Forwarded-Port", "443")))
    assert (result.host, result.server) == ("app", ("app", 443))  # the default port is implied
    result = origin(h(("Host", "[::1]:8000"), ("X-Forwarded-Port", "9000")))
    assert (result.host, result.server) == ("[::1]:9000", ("::1", 9000))


def test_forwarded_port_without_any_host_changes_the_server_port_only():
    result = origin([], server=("10.0.0.9", 8000), **{})
    assert result.host is None
    result = origin(h(("X-Forwarded-Port", "443")), server=("10.0.0.9", 8000))
    assert (result.host, result.server) == (None, ("10.0.0.9", 443))


@pytest.mark.parametrize("port", ["0", "65536", "-1", "80a", "", "443 443", "1e3"])
def test_an_invalid_forwarded_port_is_ignored(port):
    result = origin(h(("Host", "app:8000"), ("X-Forwarded-Port", port)))
    assert (result.host, result.server) == ("app:8000", SERVER)


def test_proto_alone_keeps_the_client():
    result = origin(h(("Host", "a"), ("X-Forwarded-Proto", "https")))
    assert (result.client, result.scheme) == (LOOPBACK, "https")


# -- Forwarded (RFC 7239) -------------------------------------------------------------------

@pytest.mark.parametrize("value, client", [
    ('for="_gazonk"', None),                                    # RFC 7239 4: obfuscated
    ('For="[2001:db8:cafe::17]:4711"', ("2001:db8:cafe::17", 4711)),
    ("for=192.0.2.60;proto=http;by=203.0.113.43", ("192.0.2.60", 0)),
    ("for=192.0.2.43, for=198.51.100.17", ("198.51.100.17", 0)),
    ('for=192.0.2.43, for="[2001:db8:cafe::17]", for=unknown', None),  # 7.1: unknown hop
    ('for="192.0.2.43:_port"', ("192.0.2.43", 0)),               # obfuscated port
    ("for=192.0.2.43, for=10.0.0.1", ("192.0.2.43", 0)),         # a trusted hop is skipped
    ("proto=https", None),                                       # no for=: unknown
])
def test_rfc_7239_examples(value, client):
    assert origin(h(("Host", "a"), ("Forwarded", value))).client == client


def test_forwarded_element_gives_its_own_proto_and_host():
    value = ('for=198.51.100.17;proto=https;host="shop.example:8443", '
             "for=10.0.0.2;proto=http;host=inner")
    result = origin(h(("Host", "app"), ("Forwarded", value)))
    assert result == Origin(("198.51.100.17", 0), "https", "shop.example:8443",
                            ("shop.example", 8443), True)


def test_forwarded_lines_are_joined_and_parameters_are_case_insensitive():
    result = origin(h(("Host", "a"), ("Forwarded", "FOR=198.51.100.17;PROTO=https"),
                      ("Forwarded", "for=10.0.0.2")))
    assert (result.client, result.scheme) == (("198.51.100.17", 0), "https")


def test_quoted_pairs_are_unquoted():
    result = origin(h(("Host", "a"), ("Forwarded", r'for="\1\9\2.0.2.1";host="ex\ample.com"')))
    assert (result.client, result.host) == (("192.0.2.1", 0), "example.com")


def test_x_forwarded_headers_win_over_forwarded():
    # nginx and HAProxy append X-Forwarded-For and pass a client's Forwarded through.
    headers = h(("Host", "a"), ("Forwarded", "for=198.51.100.1;proto=https;host=evil"),
                ("X-Forwarded-For", "203.0.113.7"))
    result = origin(headers)
    assert (result.client, result.scheme, result.host) == (("203.0.113.7", 0), "http", "a")


@pytest.mark.parametrize("value", ['for="', "for", "for=", "=x", 'for="a"b', "for=a b",
                                   "for=1.2.3.4;for=5.6.7.8", 'for="\x01"', "for=a;;=",
                                   "for=[::1]"])
def test_a_malformed_forwarded_line_makes_the_client_unknown(value):
    result = origin(h(("Host", "a"), ("Forwarded", value)))
    assert result == Origin(None, "http", "a", SERVER, True)


def test_a_malformed_line_left_of_a_good_one_does_not_hide_the_client():
    result = origin(h(("Host", "a"), ("Forwarded", 'for="unterminated'),
                      ("Forwarded", "for=203.0.113.7")))
    assert result.client == ("203.0.113.7", 0)


def test_empty_elements_and_whitespace_are_allowed():
    result = origin(h(("Host", "a"), ("Forwarded", " , for=203.0.113.7 ;proto=https , ")))
    assert (result.client, result.scheme) == (("203.0.113.7", 0), "https")


# -- properties -----------------------------------------------------------------------------

header_names = st.sampled_from(["host", "x-forwarded-for", "x-forwarded-proto",
                                "x-forwarded-host", "x-forwarded-port", "forwarded",
                                "x-forwarded-prefix", "other"])
fragments = st.sampled_from(["for=", "proto=", "host=", "by=", '"', "\\", ",", ";", " ", ":",
                             "[", "]", "_", "unknown", "https", "::1", "10.0.0.1",
                             "203.0.113.7", "%", "\t", "=", "65535", "0"])
values = st.one_of(st.binary(max_size=60),
                   st.lists(fragments, max_size=12).map(lambda parts: "".join(parts).encode()))
garbage_headers = st.lists(st.tuples(header_names.map(str.encode), values), max_size=8)
peers = st.one_of(st.none(), st.sampled_from([LOOPBACK, ("::1", 1), ("203.0.113.9", 2),
                                              ("10.1.1.1", 3)]))


@settings(max_examples=500, deadline=None)
@given(peers, garbage_headers, st.sampled_from(["http", "https"]), st.booleans())
def test_garbage_never_raises_and_gives_sane_values(peer, headers, scheme, websocket):
    result = resolve(peer, headers, scheme=scheme, server=SERVER, trust=TRUST,
                     websocket=websocket)
    assert result.scheme in (("ws", "wss") if websocket else ("http", "https"))
    if result.client is not None and result.client != peer:
        ipaddress.ip_address(result.client[0])
        assert 0 <= result.client[1] <= 65535
    if result.server != SERVER:
        assert isinstance(result.server[0], str) and 1 <= result.server[1] <= 65535
    if not result.trusted:
        untouched = resolve(peer, [hd for hd in headers if hd[0] == b"host"], scheme=scheme,
                            server=SERVER, trust=TRUST, websocket=websocket)
        assert result == untouched


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([("192.0.2.10", 1), ("2001:db8::5", 2)]), garbage_headers)
def test_from_an_untrusted_peer_any_headers_give_the_connection_values(peer, headers):
    result = resolve(peer, headers, scheme="http", server=SERVER, trust=TRUST)
    host = next((v.decode("latin-1") for n, v in headers if n == b"host"), None)
    assert result == Origin(peer, "http", host, SERVER, False)


public_v4 = st.ip_addresses(v=4).filter(lambda a: not TRUST.trusts(str(a)))
public = st.one_of(public_v4, st.ip_addresses(v=6).filter(lambda a: not TRUST.trusts(str(a))))
proxies = st.lists(st.ip_addresses(network="10.0.0.0/8").map(str), max_size=4)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(public.map(str), st.text(max_size=10)), max_size=4), public, proxies,
       st.lists(st.integers(0, 20), max_size=4))
def test_x_forwarded_for_chain_finds_the_client_whatever_was_spoofed_and_however_split(
        spoofed, client, chain, cuts):
    hops = [h.replace(",", "") for h in spoofed] + [str(client)] + chain
    lines = _split_into_lines(hops, cuts)
    headers = [(b"host", b"a")] + [(b"x-forwarded-for", line.encode("latin-1", "replace"))
                                   for line in lines]
    assert resolve(LOOPBACK, headers, scheme="http", server=SERVER,
                   trust=TRUST).client == (str(client), 0)


@settings(max_examples=400, deadline=None)
@given(st.lists(public, max_size=3), public, st.integers(1, 65535), proxies,
       st.sampled_from(["http", "https"]), st.booleans())
def test_forwarded_chain_round_trip(spoofed, client, port, chain, proto, quote_all):
    def node(address, port=None):
        text = f"[{address}]" if address.version == 6 else str(address)
        if port is not None:
            text += f":{port}"
        return f'"{text}"' if quote_all or ":" in text else text
    elements = [f"for={node(a)}" for a in spoofed]
    elements.append(f"for={node(client, port)};proto={proto};host=\"origin.example\"")
    elements += [f"for={a};proto=http" for a in chain]
    headers = [(b"host", b"a"), (b"forwarded", ", ".join(elements).encode())]
    result = resolve(LOOPBACK, headers, scheme="http", server=SERVER, trust=TRUST)
    assert result.client == (str(client), port)
    assert result.scheme == proto and result.host == "origin.example"


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), min_size=1, max_size=30))
def test_forwarded_host_quoting_round_trip(host):
    quoted = '"' + host.replace("\\", "\\\\").replace('"', '\\"') + '"'
    headers = [(b"host", b"a"), (b"forwarded", f"for=203.0.113.7;host={quoted}".encode())]
    result = resolve(LOOPBACK, headers, scheme="http", server=SERVER, trust=TRUST)
    assert result.client == ("203.0.113.7", 0)  # the line parsed whatever the host held
    assert result.host in (host.strip(), "a")


def _split_into_lines(hops, cuts):
    lines, start = [], 0
    for cut in sorted(set(min(c, len(hops)) for c in cuts)) + [len(hops)]:
        if cut > start:
            lines.append(", ".join(hops[start:cut]))
            start = cut
    return lines


# -- root path ------------------------------------------------------------------------------

@pytest.mark.parametrize("path, split", [
    ("/api", ("/api", "")),
    ("/api/", ("/api", "/")),
    ("/api/users/1", ("/api", "/users/1")),
    ("/apix", ("", "/apix")),          # whole segments only
    ("/other", ("", "/other")),        # outside the root: the whole path, no root
    ("/", ("", "/")),
])
def test_split_root_path(path, split):
    assert split_root_path(path, "/api") == split


def test_split_root_path_without_a_root():
    assert split_root_path("/x", "") == ("", "/x")


@pytest.mark.parametrize("text, root", [("", ""), ("/", ""), ("/api", "/api"),
                                        ("/api/", "/api"), ("/a/b//", "/a/b")])
def test_parse_root_path(text, root):
    assert parse_root_path(text) == root


@pytest.mark.parametrize("text", ["api", "/a b", "/a?b", "/a#b", "/a%20b", "/\u00e9",
                                  "/a\x00", "http://x/a"])
def test_parse_root_path_refuses_what_is_not_a_path_in_one_line(text):
    with pytest.raises(RootPathError) as info:
        parse_root_path(text)
    assert repr(text) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, GracefulError)


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("ab/"), max_size=12), st.text(st.sampled_from("ab/"), max_size=8))
def test_split_root_path_joins_back_to_the_path(path, root_text):
    path = "/" + path
    root = parse_root_path("/" + root_text)
    script_name, path_info = split_root_path(path, root)
    assert script_name + path_info == path
    assert script_name in ("", root)
    assert path_info == "" or path_info.startswith("/")
