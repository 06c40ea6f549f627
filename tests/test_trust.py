"""The allow-list of peers that may speak for their clients (graceful.http.trust)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful.errors import GracefulError
from graceful.http.trust import (DEFAULT_ALLOW, ENV_FORWARDED_ALLOW_IPS, TrustListError,
                                 allow_list_text, parse_trust)


def test_default_trusts_loopback_and_unix_sockets_only():
    trust = parse_trust(DEFAULT_ALLOW)
    for peer in ("127.0.0.1", "::1", "::ffff:127.0.0.1", None, ""):
        assert trust.trusts(peer), peer
    for peer in ("127.0.0.2", "10.0.0.1", "::2", "::ffff:10.0.0.1", "192.168.1.1", "fe80::1"):
        assert not trust.trusts(peer), peer


def test_networks_and_single_addresses():
    trust = parse_trust(" 10.0.0.0/8 , 2001:db8::/32,192.0.2.7,[::1]")
    assert trust.trusts("10.255.0.1") and trust.trusts("::ffff:10.1.2.3")
    assert trust.trusts("2001:db8:1::5") and trust.trusts("192.0.2.7") and trust.trusts("::1")
    assert not trust.trusts("11.0.0.1") and not trust.trusts("192.0.2.8")
    assert not trust.trusts("2001:db9::1")
    assert not trust.trusts(None)  # unix was not listed


def test_ipv4_mapped_network_entries_match_both_forms():
    trust = parse_trust("::ffff:10.0.0.0/104")
    assert trust.trusts("::ffff:10.9.9.9")
    assert not trust.trusts("::ffff:11.0.0.1")


def test_zone_of_a_link_local_peer_is_ignored():
    assert parse_trust("fe80::/10").trusts("fe80::1%eth0")


def test_star_trusts_everyone_including_unix_and_garbage():
    trust = parse_trust("*")
    assert trust.everyone
    for peer in ("203.0.113.9", "2001:db8::1", None, "", "not an address"):
        assert trust.trusts(peer)


def test_unix_token_is_case_insensitive_and_alone_trusts_no_address():
    trust = parse_trust("UNIX")
    assert trust.trusts(None) and trust.trusts("")
    assert not trust.trusts("127.0.0.1")


def test_empty_list_trusts_no_one():
    trust = parse_trust("")
    assert not trust.trusts("127.0.0.1") and not trust.trusts(None)
    assert not parse_trust(" , ,").trusts(None)


def test_peers_that_are_not_addresses_are_not_trusted():
    trust = parse_trust("0.0.0.0/0,::/0")
    for peer in ("localhost", "1.2.3", "01.2.3.4", "1.2.3.4:80", "[::1]", "unknown", "_hidden",
                 b"\x7f\x00\x00\x01", 2130706433):
        assert not trust.trusts(peer), peer  # type: ignore[arg-type]


@pytest.mark.parametrize("entry, hint", [
    ("localhost", "host names are not resolved"),
    ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
    ("1.2.3.4/33", "not an IP address"),
    ("::1%lo", "zone"),
    ("unix:/run/app.sock", "not an IP address"),
    ("[::1", "not an IP address"),
    ("host bits set", "not an IP address"),  # words of ipaddress's own message, on 3.9
])
def test_bad_entries_name_the_entry_and_the_fix(entry, hint):
    with pytest.raises(TrustListError) as info:
        parse_trust(f"127.0.0.1,{entry}")
    message = str(info.value)
    assert repr(entry) in message and hint in message and "\n" not in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, GracefulError)


def test_allow_list_text_prefers_command_line_then_environment_then_default():
    env = {ENV_FORWARDED_ALLOW_IPS: "10.0.0.0/8"}
    assert allow_list_text("192.0.2.1", env) == "192.0.2.1"
    assert allow_list_text("", env) == ""  # given empty: trust no one, not the environment
    assert allow_list_text(None, env) == "10.0.0.0/8"
    assert allow_list_text(None, {}) == DEFAULT_ALLOW
    assert allow_list_text(None, {"PROXY_ALLOW_FROM": "*"}, "PROXY_ALLOW_FROM") == "*"


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=4), st.integers(0, 32), st.ip_addresses(v=4))
def test_ipv4_membership_matches_the_arithmetic(base, prefix, peer):
    network = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
    trust = parse_trust(str(network))
    inside = int(network.network_address) <= int(peer) <= int(network.broadcast_address)
    assert trust.trusts(str(peer)) is inside
    assert trust.trusts(f"::ffff:{peer}") is inside


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=6), st.integers(0, 128), st.ip_addresses(v=6))
def test_ipv6_membership_matches_the_arithmetic(base, prefix, peer):
    network = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
    trust = parse_trust(str(network))
    inside = int(network.network_address) <= int(peer) <= int(network.broadcast_address)
    if peer.ipv4_mapped is None:
        assert trust.trusts(str(peer)) is inside
    elif inside:
        assert trust.trusts(str(peer))


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_any_list_text_parses_or_gives_a_one_line_trust_list_error(text):
    try:
        trust = parse_trust(text)
    except TrustListError as exc:
        assert "allow-list entry" in str(exc)
    else:
        assert isinstance(trust.trusts("127.0.0.1"), bool)


# Addresses are also covered by the two membership properties above: 200 examples here.
@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), st.none(),
                 st.ip_addresses().map(str)))
def test_any_peer_text_gives_a_bool(peer):
    for text in (DEFAULT_ALLOW, "", "10.0.0.0/8,::/0", "*"):
        assert isinstance(parse_trust(text).trusts(peer), bool)
