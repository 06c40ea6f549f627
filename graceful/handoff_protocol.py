"""The handoff protocol, version 1: messages between a serving process and a new, unrelated
process that takes its listening sockets over a Unix socket (no I/O here).

Every message is one frame::

    length   4 bytes, big-endian: the number of bytes that follow (2 .. 65536)
    version  1 byte: 1
    kind     1 byte: 1 HELLO, 2 LISTENERS, 3 READY, 4 DONE, 5 ERROR
    body     UTF-8 JSON object (may be empty: {})

The exchange, after the server authenticated the client by SO_PEERCRED:

    client -> HELLO     {"pid": P, "fds": true}
    server -> LISTENERS {"batch": i, "batches": n, "listeners": [{"name", "family", "address"}]}
              (one frame per batch of at most 250 listeners; the batch's fds ride on the
              frame by SCM_RIGHTS, in the order of "listeners")
    client -> READY     {"pid": P}          (it serves on them now; the server may drain)
    server -> DONE      {}                  (draining; the client may take the handoff socket)
    either -> ERROR     {"message": "..."}  (and closes the connection)

``"fds": false`` in HELLO (SO_REUSEPORT handoff) asks for the listeners' names and addresses
only: no fds ride on LISTENERS, the client binds its own sockets beside the server's, and after
READY the server accepts what is left in its own queues before it closes them. A HELLO without
"fds" means true.

Anything malformed raises ``HandoffProtocolError``; the receiver closes that one connection.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Dict, List, Optional

__all__ = ["HandoffProtocolError", "Message", "FrameDecoder", "encode", "VERSION",
           "HELLO", "LISTENERS", "READY", "DONE", "ERROR", "MAX_FDS_PER_FRAME"]

VERSION = 1
HELLO, LISTENERS, READY, DONE, ERROR = 1, 2, 3, 4, 5
KIND_NAMES = {HELLO: "HELLO", LISTENERS: "LISTENERS", READY: "READY", DONE: "DONE",
              ERROR: "ERROR"}
MAX_FRAME = 65536
MAX_FDS_PER_FRAME = 250  # SCM_RIGHTS allows 253 per message on Linux; keep a margin
FAMILIES = ("inet", "inet6", "unix")
_HEADER = struct.Struct(">IBB")


class HandoffProtocolError(ValueError):
    """A frame that does not follow protocol version 1."""


class Message:
    """One protocol message: ``kind`` and its JSON ``body``."""

    __slots__ = ("kind", "body")

    def __init__(self, kind: int, body: Optional[Dict[str, Any]] = None) -> None:
        self.kind = kind
        self.body = body if body is not None else {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and (self.kind, self.body) == (other.kind, other.body)

    def __repr__(self) -> str:
        return f"<{KIND_NAMES.get(self.kind, self.kind)} {self.body!r}>"


def encode(message: Message) -> bytes:
    """The frame for ``message`` (which must be valid: it is checked as a receiver would)."""
    _check(message.kind, message.body)
    try:
        body = json.dumps(message.body, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        raise HandoffProtocolError("a name or address is not valid Unicode text "
                                   "(lone surrogate)") from None
    if 2 + len(body) > MAX_FRAME:
        raise HandoffProtocolError(f"{KIND_NAMES[message.kind]} message is {len(body)} bytes; "
                                   f"the limit is {MAX_FRAME - 2}")
    return _HEADER.pack(2 + len(body), VERSION, message.kind) + body


class FrameDecoder:
    """Turns received bytes into messages: ``feed(data)`` returns the complete ones."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered."""
        return len(self._buffer)

    def feed(self, data: bytes) -> List[Message]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= 4:
            length = int.from_bytes(self._buffer[:4], "big")
            if length < 2 or length > MAX_FRAME:
                raise HandoffProtocolError(f"frame length {length} is outside 2..{MAX_FRAME}")
            if len(self._buffer) < 4 + length:
                break
            frame = bytes(self._buffer[4:4 + length])
            del self._buffer[:4 + length]
            messages.append(_decode(frame))
        return messages


def _decode(frame: bytes) -> Message:
    version, kind = frame[0], frame[1]
    if version != VERSION:
        raise HandoffProtocolError(f"protocol version {version}; this side speaks {VERSION}")
    if kind not in KIND_NAMES:
        raise HandoffProtocolError(f"unknown message kind {kind}")
    try:
        body = json.loads(frame[2:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HandoffProtocolError(f"{KIND_NAMES[kind]} body is not UTF-8 JSON") from None
    _check(kind, body)
    return Message(kind, body)


def _check(kind: int, body: Any) -> None:
    name = KIND_NAMES.get(kind)
    if name is None:
        raise HandoffProtocolError(f"unknown message kind {kind}")
    if not isinstance(body, dict):
        raise HandoffProtocolError(f"{name} body must be a JSON object")
    if kind in (HELLO, READY):
        _require_int(name, body, "pid", 1, 2**31 - 1)
        if kind == HELLO and not isinstance(body.get("fds", True), bool):
            raise HandoffProtocolError("HELLO \"fds\" must be true or false")
    elif kind == ERROR:
        if not isinstance(body.get("message"), str):
            raise HandoffProtocolError("ERROR needs a text \"message\"")
    elif kind == LISTENERS:
        batches = _require_int(name, body, "batches", 1, 4096)
        _require_int(name, body, "batch", 0, batches - 1)
        listeners = body.get("listeners")
        if not isinstance(listeners, list) or len(listeners) > MAX_FDS_PER_FRAME:
            raise HandoffProtocolError(f"LISTENERS needs a list of at most {MAX_FDS_PER_FRAME} "
                                       f"\"listeners\"")
        for entry in listeners:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                    or not entry["name"] or entry.get("family") not in FAMILIES \
                    or not isinstance(entry.get("address"), str):
                raise HandoffProtocolError(
                    "each listener needs a non-empty \"name\", a \"family\" "
                    f"({', '.join(FAMILIES)}) and an \"address\"")


def _require_int(name: str, body: Dict[str, Any], key: str, low: int, high: int) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise HandoffProtocolError(f"{name} needs an integer \"{key}\" in {low}..{high}")
    return value
