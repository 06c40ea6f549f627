"""Listen addresses: every form round-trips; any text gives an address or an AddressError."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful.addresses import (ACCEPTED_FORMS, MAX_UNIX_PATH_BYTES, FdAddress, TCPAddress,
                                UnixAddress, format_address, format_bind, is_valid_name,
                                parse_address, parse_bind)
from graceful.errors import AddressError

label = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,20}[A-Za-z0-9_]|[A-Za-z_]", fullmatch=True)
hostnames = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


@st.composite
def tcp_addresses(draw):
    version = draw(st.sampled_from([0, 4, 6]))
    if version == 4:
        host = draw(st.one_of(st.just(""), ipv4, hostnames))
    elif version == 6:
        host = draw(st.one_of(st.just(""), ipv6, hostnames))
    else:
        host = draw(st.one_of(st.just(""), ipv4, ipv6, hostnames))
    return TCPAddress(host, draw(ports), version)


def _fits(path: str, abstract: bool) -> bool:
    return len(path.encode("utf-8", "surrogateescape")) + abstract <= MAX_UNIX_PATH_BYTES


unix_addresses = st.builds(
    UnixAddress,
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
             min_size=1, max_size=60),
    st.booleans(),
).filter(lambda a: _fits(a.path, a.abstract) and (a.abstract or not a.path.startswith(("@", "///"))))
fd_addresses = st.builds(FdAddress, st.integers(0, 2**31 - 1))
addresses = st.one_of(tcp_addresses(), unix_addresses, fd_addresses)
names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,30}", fullmatch=True)


@given(addresses)
@settings(max_examples=200)  # the two bind-spec round trips below parse the same addresses too
def test_format_then_parse_is_identity(address):
    text = format_address(address)
    assert parse_address(text) == address
    assert str(address) == text


@given(names, addresses)
def test_named_bind_spec_round_trips(name, address):
    assert parse_bind(format_bind(name, address)) == (name, address)


@given(addresses)
def test_unnamed_bind_spec_is_named_by_its_address(address):
    text = format_address(address)
    assert parse_bind(text) == (text, address)
    assert format_bind(text, address) == text


ADDRESSY = st.text(st.sampled_from(list(":[]/@=%0123456789.abcdefunixtcp46 -_\0é")), max_size=40)


@given(st.one_of(st.text(max_size=60), ADDRESSY))
@settings(max_examples=1000)
def test_any_text_parses_or_raises_address_error(text):
    for parse in (parse_address, parse_bind):
        try:
            parse(text)
        except AddressError as exc:
            assert isinstance(exc, ValueError)
            assert repr(text) in str(exc)
            assert ACCEPTED_FORMS in str(exc)


@pytest.mark.parametrize("text, expected", [
    (":8000", TCPAddress("", 8000)),
    ("127.0.0.1:80", TCPAddress("127.0.0.1", 80)),
    ("localhost:0", TCPAddress("localhost", 0)),
    ("[::1]:8000", TCPAddress("::1", 8000)),
    ("[::]:8000", TCPAddress("::", 8000)),
    ("tcp://example.com:443", TCPAddress("example.com", 443)),
    ("tcp4://:8000", TCPAddress("", 8000, 4)),
    ("tcp6://[::1]:8000", TCPAddress("::1", 8000, 6)),
    ("tcp6://localhost:1", TCPAddress("localhost", 1, 6)),
    ("unix:/run/app.sock", UnixAddress("/run/app.sock")),
    ("unix:relative.sock", UnixAddress("relative.sock")),
    ("unix:///run/app.sock", UnixAddress("/run/app.sock")),
    ("unix:@app", UnixAddress("app", abstract=True)),
    ("fd://3", FdAddress(3)),
])
def test_documented_forms(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text, why", [
    ("", "port is missing"),
    ("8000", "port is missing"),
    ("localhost", "port is missing"),
    (":65536", "not a number from 0 to 65535"),
    (":-1", "not a number"),
    (":80a", "not a number"),
    ("::1:8000", "must be in brackets"),
    ("[1.2.3.4]:80", "not an IPv6 address"),
    ("[::1]8000", "written [ADDRESS]:PORT"),
    ("[::1:80", "written [ADDRESS]:PORT"),
    ("1.2.3.400:80", "not an IPv4 address"),
    ("tcp4://[::1]:80", "cannot take an IPv6 address"),
    ("tcp6://127.0.0.1:80", "cannot take an IPv4 address"),
    ("bad host:80", "not a host name"),
    ("unix:", "path is empty"),
    ("unix:@", "path is empty"),
    ("unix:/a\0b", "NUL"),
    ("unix:/" + "x" * 200, "Unix sockets allow 107"),
    ("fd://-1", "file descriptor number"),
    ("fd://abc", "file descriptor number"),
    ("fd://", "file descriptor number"),
    ("fd://99999999999", "file descriptor number"),
    ("http://x:80", "unknown scheme"),
    ("web=", "port is missing"),
])
def test_errors_name_the_input_and_the_reason(text, why):
    with pytest.raises(AddressError) as info:
        parse_bind(text)
    message = str(info.value)
    assert why in message
    assert repr(text) in message


def test_names():
    assert parse_bind("web=:8000") == ("web", TCPAddress("", 8000))
    assert parse_bind("api.v2=unix:/s") == ("api.v2", UnixAddress("/s"))
    # '=' inside an address is not a name unless the left part is a valid name.
    assert parse_bind("unix:/tmp/a=b") == ("unix:/tmp/a=b", UnixAddress("/tmp/a=b"))
    assert not is_valid_name("-x") and not is_valid_name("") and not is_valid_name("a b")
    with pytest.raises(AddressError, match="invalid listener name"):
        format_bind("not valid", TCPAddress("", 1))


def test_unwritable_unix_paths_are_refused_when_formatting():
    # unix:@x is the abstract name x and unix:///x is /x, so these paths need a ./ prefix.
    for path in ("@x", "///x"):
        with pytest.raises(AddressError, match=r"write it as \./"):
            format_address(UnixAddress(path))


def test_ipv6_hosts_keep_their_canonical_text():
    for host in ("::1", "fe80::1", "2001:db8::8:800:200c:417a"):
        address = parse_address(f"[{host}]:1")
        assert ipaddress.IPv6Address(address.host) == ipaddress.IPv6Address(host)
