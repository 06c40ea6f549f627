"""The GRACEFUL_FDS codec: any names round-trip; any text decodes or raises ListenerError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graceful.errors import ListenerError
from graceful.fdenv import ENV_FDS, decode_fds, encode_fds

any_name = st.text(st.characters(), min_size=1, max_size=30)  # includes , = % and surrogates


@st.composite
def mappings(draw):
    keys = draw(st.lists(any_name, unique=True, max_size=8))
    fds = draw(st.lists(st.integers(0, 2**31 - 1), unique=True, min_size=len(keys),
                        max_size=len(keys)))
    return dict(zip(keys, fds))


@given(mappings())
def test_round_trip(mapping):
    encoded = encode_fds(mapping)
    assert encoded.isascii()
    assert decode_fds(encoded) == mapping
    assert encoded.count(",") == max(0, len(mapping) - 1)
    assert encoded.count("=") == len(mapping)


@given(st.one_of(st.text(max_size=50), st.text(st.sampled_from(list("web=3,%2C:ZZé")), max_size=30)))
def test_any_text_decodes_or_raises_listener_error(text):
    try:
        result = decode_fds(text)
    except ListenerError as exc:
        assert ENV_FDS in str(exc) and repr(text) in str(exc)
    else:
        assert all(name and fd >= 0 for name, fd in result.items())


def test_readable_for_common_names():
    assert encode_fds({"web": 3, ":8000": 4, "unix:/run/a.sock": 5}) == \
        "web=3,:8000=4,unix:/run/a.sock=5"
    assert encode_fds({"a,b=c d": 3}) == "a%2Cb%3Dc%20d=3"
    assert decode_fds("") == {}


@pytest.mark.parametrize("value, why", [
    ("web", "not NAME=FD"),
    ("=3", "not NAME=FD"),
    ("web=x", "not a file descriptor number"),
    ("web=-1", "not a file descriptor number"),
    ("web=3,web=4", "appears twice"),
    ("a=3,b=3", "fd 3 appears twice"),
    ("a%2=3", "bad percent escape"),
    ("a%FF=3", "not UTF-8"),
    ("a b=3", "must be percent-encoded"),
    ("web=3,", "not NAME=FD"),
])
def test_garbage_is_a_clear_error(value, why):
    with pytest.raises(ListenerError, match=why):
        decode_fds(value)


def test_encode_refuses_what_cannot_be_a_listener():
    with pytest.raises(ValueError):
        encode_fds({"": 3})
    with pytest.raises(ValueError):
        encode_fds({"web": -1})
