"""Handoff protocol v1 frames: round trips in any split, and garbage that only ever gives
HandoffProtocolError."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful.handoff_protocol import (DONE, ERROR, HELLO, LISTENERS, MAX_FDS_PER_FRAME, READY,
                                       FrameDecoder, HandoffProtocolError, Message, encode)

pids = st.integers(1, 2**31 - 1)
text = st.characters(blacklist_categories=("Cs",))  # JSON over UTF-8: no lone surrogates
names = st.text(text, min_size=1, max_size=30)
listeners = st.fixed_dictionaries({"name": names,
                                   "family": st.sampled_from(["inet", "inet6", "unix"]),
                                   "address": st.text(text, max_size=40)})


@st.composite
def messages(draw):
    kind = draw(st.sampled_from([HELLO, LISTENERS, READY, DONE, ERROR]))
    if kind == HELLO and draw(st.booleans()):
        return Message(kind, {"pid": draw(pids), "fds": draw(st.booleans())})
    if kind in (HELLO, READY):
        return Message(kind, {"pid": draw(pids)})
    if kind == ERROR:
        return Message(kind, {"message": draw(names)})
    if kind == DONE:
        return Message(kind, {})
    batches = draw(st.integers(1, 5))
    return Message(kind, {"batch": draw(st.integers(0, batches - 1)), "batches": batches,
                          "listeners": draw(st.lists(listeners, max_size=5))})


@settings(max_examples=300)
@given(st.lists(messages(), min_size=1, max_size=6), st.lists(st.integers(0, 2000), max_size=6))
def test_round_trip_in_any_split(sent, cuts):
    data = b"".join(encode(m) for m in sent)
    decoder = FrameDecoder()
    received = []
    start = 0
    for cut in sorted(min(c, len(data)) for c in cuts) + [len(data)]:
        received += decoder.feed(data[start:cut])
        start = cut
    assert received == sent
    assert decoder.pending == 0


@settings(max_examples=500)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=4))
def test_arbitrary_bytes_give_messages_or_a_protocol_error(data, cuts):
    decoder = FrameDecoder()
    start = 0
    try:
        for cut in sorted(min(c, len(data)) for c in cuts) + [len(data)]:
            for message in decoder.feed(data[start:cut]):
                encode(message)  # whatever was accepted is a valid message
            start = cut
    except HandoffProtocolError:
        pass


def _frame(version, kind, body: bytes) -> bytes:
    return struct.pack(">IBB", 2 + len(body), version, kind) + body


@pytest.mark.parametrize("frame, message", [
    (struct.pack(">I", 1) + b"\x01", "frame length 1"),
    (struct.pack(">I", 70000), "frame length 70000"),
    (_frame(2, HELLO, b'{"pid": 1}'), "protocol version 2"),
    (_frame(1, 9, b"{}"), "unknown message kind 9"),
    (_frame(1, HELLO, b"\xff"), "not UTF-8 JSON"),
    (_frame(1, HELLO, b"[1]"), "must be a JSON object"),
    (_frame(1, HELLO, b'{"pid": 0}'), "integer \"pid\""),
    (_frame(1, READY, b'{"pid": true}'), "integer \"pid\""),
    (_frame(1, HELLO, b'{"pid": 1, "fds": 1}'), "\"fds\" must be true or false"),
    (_frame(1, ERROR, b'{"message": 3}'), "text \"message\""),
    (_frame(1, LISTENERS, b'{"batch": 1, "batches": 1, "listeners": []}'), "\"batch\""),
    (_frame(1, LISTENERS, json.dumps({"batch": 0, "batches": 1, "listeners": [
        {"name": "", "family": "inet", "address": ":80"}]}).encode()), "non-empty \"name\""),
    (_frame(1, LISTENERS, json.dumps({"batch": 0, "batches": 1, "listeners": [
        {"name": "web", "family": "x25", "address": ":80"}]}).encode()), "\"family\""),
    (_frame(1, LISTENERS, json.dumps({"batch": 0, "batches": 1, "listeners": [
        {"name": "w", "family": "inet", "address": ":1"}] * (MAX_FDS_PER_FRAME + 1)}).encode()),
     "at most 250"),
])
def test_malformed_frames_name_the_problem(frame, message):
    with pytest.raises(HandoffProtocolError, match=message):
        FrameDecoder().feed(frame)


def test_encode_refuses_what_a_receiver_would_refuse():
    with pytest.raises(HandoffProtocolError):
        encode(Message(HELLO, {"pid": -1}))
    with pytest.raises(HandoffProtocolError, match="the limit is"):
        encode(Message(ERROR, {"message": "x" * 70000}))
    with pytest.raises(HandoffProtocolError, match="lone surrogate"):
        encode(Message(ERROR, {"message": "\udc80"}))
