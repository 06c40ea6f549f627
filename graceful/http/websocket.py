"""The WebSocket protocol (RFC 6455, with RFC 7692 compression), without any I/O.

A server checks the upgrade request, answers it, then drives one ``WebSocket`` per connection::

    handshake = check_handshake(request)         # raises HandshakeError(400 or 426, ...)
    head = accept_response(handshake, subprotocol=None)
    ws = WebSocket(max_size=16 << 20, deflate=handshake.deflate)
    for event in ws.feed(data):                  # Message, Ping, Pong, Close, ProtocolError
        ...
    transport.write(ws.send(text_or_bytes))      # encoded frames, ready to write
    transport.write(ws.close(1000, "bye"))       # the close frame; ws.closed once both sent one

Everything is incremental and linear in the bytes fed: a payload is unmasked, size-checked,
UTF-8 checked and inflated as it arrives, so an invalid text prefix, an oversized length or a
zip bomb is refused as soon as it shows, with the close code to send (1002, 1007, 1009).
After a ``ProtocolError`` or a received ``Close`` the connection reads nothing more.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import os
import struct
from typing import List, Optional, Sequence, Tuple, Union

from ..http11 import Request
from .permessage_deflate import (Deflate, DeflateError, DeflateParams, MessageTooBig,
                                 negotiate, parse_extensions)

__all__ = ["HandshakeError", "Handshake", "check_handshake", "accept_key", "accept_response",
           "WebSocket", "Message", "Ping", "Pong", "Close", "ProtocolError", "encode_frame",
           "valid_close_code", "OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING",
           "OP_PONG"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPS = (OP_CONT, OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)
_MAX_CONTROL = 125
_MIN_COMPRESS = 64  # smaller messages are sent as they are: deflate would not pay

Headers = List[Tuple[bytes, bytes]]

# -- the handshake ------------------------------------------------------------------------------


class HandshakeError(Exception):
    """An upgrade request we refuse: answer ``status`` with ``headers``, as plain HTTP."""

    def __init__(self, status: int, detail: str, headers: Headers = ()) -> None:  # type: ignore[assignment]
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.headers = list(headers)


class Handshake:
    """A valid opening handshake: what the client asked for."""

    def __init__(self, key: bytes, subprotocols: List[str],
                 deflate: Optional[DeflateParams]) -> None:
        self.key = key
        self.subprotocols = subprotocols  # in the client's order of preference
        self.deflate = deflate  # the permessage-deflate parameters we accept, if any


def check_handshake(request: Request, per_message_deflate: bool = True) -> Handshake:
    """Validate an opening handshake (RFC 6455 4.2.1) or raise ``HandshakeError``."""
    if request.method != b"GET":
        raise HandshakeError(400, "a WebSocket handshake must be a GET")
    if request.version != b"1.1":
        raise HandshakeError(400, "a WebSocket handshake needs HTTP/1.1")
    if request.has_body:
        raise HandshakeError(400, "a WebSocket handshake has no body")
    if b"websocket" not in _tokens(request.headers, b"upgrade"):
        raise HandshakeError(400, "the Upgrade header does not name websocket")
    if b"upgrade" not in _tokens(request.headers, b"connection"):
        raise HandshakeError(400, "the Connection header has no upgrade token")
    versions = _values(request.headers, b"sec-websocket-version")
    if versions != [b"13"]:
        raise HandshakeError(426, f"unsupported Sec-WebSocket-Version {versions!r}; use 13",
                             [(b"sec-websocket-version", b"13")])
    keys = _values(request.headers, b"sec-websocket-key")
    if len(keys) != 1 or not _valid_key(keys[0]):
        raise HandshakeError(400, "Sec-WebSocket-Key must be one base64-encoded 16-byte nonce")
    subprotocols = [t.decode("latin-1") for t in
                    _tokens(request.headers, b"sec-websocket-protocol", lower=False)]
    deflate = None
    if per_message_deflate:
        offers = [v.decode("latin-1") for v in _values(request.headers, b"sec-websocket-extensions")]
        deflate = negotiate(parse_extensions(offers))
    return Handshake(keys[0], subprotocols, deflate)


def _values(headers: Headers, name: bytes) -> List[bytes]:
    return [value.strip(b" \t") for key, value in headers if key == name]


def _tokens(headers: Headers, name: bytes, lower: bool = True) -> List[bytes]:
    tokens = []
    for value in _values(headers, name):
        for token in value.split(b","):
            token = token.strip(b" \t")
            if token:
                tokens.append(token.lower() if lower else token)
    return tokens


def _valid_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def accept_response(handshake: Handshake, subprotocol: Optional[str] = None,
                    headers: Sequence[Tuple[bytes, bytes]] = ()) -> bytes:
    """The ``101 Switching Protocols`` head that accepts ``handshake``.

    ``subprotocol`` must be one the client offered (ASGI leaves the choice to the
    application); ``headers`` are the application's extra headers.
    """
    if subprotocol is not None and subprotocol not in handshake.subprotocols:
        raise ValueError(f"subprotocol {subprotocol!r} was not offered by the client "
                         f"(it offered {handshake.subprotocols})")
    lines = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade",
             b"Sec-WebSocket-Accept: " + accept_key(handshake.key)]
    if subprotocol is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1"))
    if handshake.deflate is not None:
        lines.append(b"Sec-WebSocket-Extensions: " + handshake.deflate.header().encode())
    for name, value in headers:
        lines.append(bytes(name) + b": " + bytes(value))
    return b"\r\n".join(lines) + b"\r\n\r\n"


# -- events -------------------------------------------------------------------------------------


class Message:
    """A complete data message: ``data`` is ``str`` for text, ``bytes`` for binary."""

    __slots__ = ("data",)

    def __init__(self, data: Union[str, bytes]) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"<Message {type(self.data).__name__} {len(self.data)}>"


class Ping:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Pong:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Close:
    """The peer's close frame; ``code`` is 1005 when it carried none."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"<Close {self.code} {self.reason!r}>"


class ProtocolError:
    """The peer broke the protocol: close with ``code`` (1002, 1007 or 1009), then hang up."""

    __slots__ = ("code", "detail")

    def __init__(self, code: int, detail: str) -> None:
        self.code = code
        self.detail = detail

    def __repr__(self) -> str:
        return f"<ProtocolError {self.code} {self.detail}>"


Event = Union[Message, Ping, Pong, Close, ProtocolError]


class _Fail(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# -- frames -------------------------------------------------------------------------------------


def encode_frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False,
                 mask: Optional[bytes] = None) -> bytes:
    """One frame; ``mask`` (4 bytes) for frames a client sends."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mask_bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + _unmask(payload, mask, 0)


def _unmask(data: bytes, mask: bytes, offset: int, start: int = 0,
            end: Optional[int] = None) -> bytes:
    """XOR ``data[start:end]`` with the mask, starting at ``offset`` into the payload.

    Linear in C, no Python loop per byte: one big-int XOR for short payloads, where it costs
    least; above ``_TRANSLATE_FROM`` bytes, one ``translate`` per mask byte over every fourth
    byte, about three times faster than the big int there (int.from_bytes and to_bytes
    convert to 30-bit digits and back).
    """
    if end is None:
        end = len(data)
    n = end - start
    if n <= 0:
        return b""
    shift = offset % 4
    key = mask[shift:] + mask[:shift]
    if n < _TRANSLATE_FROM:
        repeated = key * (n // 4 + 1)
        return (int.from_bytes(data[start:end], "little") ^
                int.from_bytes(repeated[:n], "little")).to_bytes(n, "little")
    out = bytearray(n)
    for k in range(4):  # strided slices of the original: the payload is not copied first
        out[k::4] = data[start + k:end:4].translate(_xor_table(key[k]))
    return bytes(out)


_TRANSLATE_FROM = 512  # measured: below this the big-int XOR is faster
_XOR_TABLES: List[Optional[bytes]] = [None] * 256


def _xor_table(byte: int) -> bytes:
    """The ``translate`` table mapping every byte b to b ^ ``byte`` (built once, on demand)."""
    table = _XOR_TABLES[byte]
    if table is None:
        identity = int.from_bytes(bytes(range(256)), "little")
        table = _XOR_TABLES[byte] = (identity ^ int.from_bytes(bytes([byte]) * 256, "little")
                                     ).to_bytes(256, "little")
    return table


def valid_close_code(code: int) -> bool:
    """Codes a close frame may carry (RFC 6455 7.4, and the IANA registry up to 1014)."""
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


class _Frame:
    __slots__ = ("fin", "rsv1", "opcode", "mask", "length", "seen")

    def __init__(self, fin: bool, rsv1: bool, opcode: int, mask: Optional[bytes],
                 length: int) -> None:
        self.fin = fin
        self.rsv1 = rsv1
        self.opcode = opcode
        self.mask = mask
        self.length = length
        self.seen = 0  # payload bytes consumed so far


class _Assembly:
    """A data message being received, possibly over several frames."""

    def __init__(self, text: bool, compressed: bool) -> None:
        self.text = text
        self.compressed = compressed
        self.parts: List[bytes] = []
        self.size = 0  # wire payload bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")() if text else None
        self.chars: List[str] = []


# -- the connection -----------------------------------------------------------------------------


class WebSocket:
    """One connection's protocol state: parse what arrives, encode what we send.

    ``client=False`` (a server) requires masked frames and sends unmasked ones.
    """

    def __init__(self, *, max_size: int = 16 << 20, deflate: Optional[DeflateParams] = None,
                 client: bool = False) -> None:
        self.max_size = max_size
        self.client = client
        self._deflate: Optional[Deflate] = deflate.codec(max_size) if deflate else None
        self._buf = bytearray()
        self._pos = 0  # bytes of _buf already parsed
        self._frame: Optional[_Frame] = None
        self._control = bytearray()  # the payload of a control frame being received
        self._message: Optional[_Assembly] = None
        self._fast = not client  # servers take _whole_frames; False: the general parser only
        self.close_sent = False
        self.close_received = False
        self.failed = False  # a ProtocolError was reported
        self.received_close: Optional[Close] = None

    @property
    def closed(self) -> bool:
        """Both sides sent a close frame (or the peer broke the protocol)."""
        return self.failed or (self.close_sent and self.close_received)

    # -- input ----------------------------------------------------------------------------------

    def feed(self, data: bytes) -> List[Event]:
        """The events completed by ``data`` (possibly none)."""
        if self.failed or self.close_received:
            return []  # nothing after a close frame means anything (RFC 6455 5.5.1)
        events: List[Event] = []
        try:
            if self._fast and self._frame is None and not self._buf:
                data = self._whole_frames(data, events)
            if data:
                self._buf += data
                while not self.close_received and self._step(events):
                    pass
        except _Fail as fail:
            self.failed = True
            events.append(ProtocolError(fail.code, fail.detail))
        except MessageTooBig as exc:
            self.failed = True
            events.append(ProtocolError(1009, str(exc)))
        except DeflateError as exc:
            self.failed = True
            events.append(ProtocolError(1007, str(exc)))
        self._compact()
        return events

    def _whole_frames(self, data: bytes, events: List[Event]) -> bytes:
        """The fast path: parse the complete, plain, unfragmented data frames at the start of
        ``data`` straight from it; return the rest, for the general parser.

        Taken only for frames the general parser would accept as they are (a masked client
        frame with FIN and no RSV bit, text or binary, its length in the shortest form and
        within ``max_size``, no message in progress), so it yields what that parser yields,
        without a frame or message object, an incremental decoder or a copy into the buffer.
        Anything else (control frames, fragments, compression, errors, a frame cut short)
        stops it, and the general parser takes over from that byte.
        """
        n = len(data)
        pos = 0
        while self._message is None:
            if n - pos < 6:
                break
            first, second = data[pos], data[pos + 1]
            if first != 0x81 and first != 0x82 or second < 0x80:
                break
            length = second & 0x7F
            if length < 126:
                start = pos + 6
            elif length == 126:
                start = pos + 8
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
                if length < 126:
                    break
            else:
                start = pos + 14
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                if length >> 63 or length < 1 << 16:
                    break
            end = start + length
            if end > n or length > self.max_size:
                break
            payload = _unmask(data, data[start - 4:start], 0, start, end)
            if first == 0x81:
                try:
                    events.append(Message(payload.decode("utf-8")))
                except UnicodeDecodeError:
                    raise _Fail(1007, "a text message that is not valid UTF-8") from None
            else:
                events.append(Message(payload))
            pos = end
        return data[pos:] if pos else data

    def _compact(self) -> None:
        if self.failed or self.close_received:
            self._buf = bytearray()
            self._pos = 0
        elif self._pos > 65536 or self._pos == len(self._buf):
            del self._buf[:self._pos]  # amortised: a large prefix at a time
            self._pos = 0

    def _step(self, events: List[Event]) -> bool:
        """Parse one header or one piece of payload; False when more bytes are needed."""
        if self._frame is None:
            frame = self._parse_header()
            if frame is None:
                return False
            self._frame = frame
            self._start_frame(frame)
        frame = self._frame
        available = min(len(self._buf) - self._pos, frame.length - frame.seen)
        if available == 0 and frame.seen < frame.length:
            return False
        pos = self._pos
        self._pos += available
        if frame.mask is not None:
            chunk = _unmask(self._buf, frame.mask, frame.seen, pos, pos + available)
        else:
            chunk = bytes(self._buf[pos:pos + available])
        frame.seen += available
        done = frame.seen == frame.length
        if frame.opcode in _CONTROL_OPS:
            self._control += chunk
            if done:
                self._frame = None
                event = self._control_event(frame.opcode, bytes(self._control))
                self._control = bytearray()
                events.append(event)
        else:
            self._data(chunk, frame.fin and done, events)
            if done:
                self._frame = None
        return True

    def _parse_header(self) -> Optional[_Frame]:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 2:
            return None
        first, second = buf[pos], buf[pos + 1]
        masked = bool(second & 0x80)
        length = second & 0x7F
        need = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if masked else 0)
        if len(buf) - pos < need:
            return None
        offset = pos + 2
        if length == 126:
            (length,) = struct.unpack_from("!H", buf, offset)
            offset += 2
            if length < 126:
                raise _Fail(1002, "a frame length not in its shortest form")
        elif length == 127:
            (length,) = struct.unpack_from("!Q", buf, offset)
            offset += 8
            if length >> 63:
                raise _Fail(1002, "a frame length with its most significant bit set")
            if length < 1 << 16:
                raise _Fail(1002, "a frame length not in its shortest form")
        mask = bytes(buf[offset:offset + 4]) if masked else None
        self._pos = pos + need
        if masked == self.client:
            raise _Fail(1002, "frames from a client must be masked" if not self.client else
                        "frames from a server must not be masked")
        if first & 0x30:
            raise _Fail(1002, "RSV2 or RSV3 set without an extension that defines them")
        return _Frame(bool(first & 0x80), bool(first & 0x40), first & 0x0F, mask, length)

    def _start_frame(self, frame: _Frame) -> None:
        opcode = frame.opcode
        if opcode in _CONTROL_OPS:
            if not frame.fin:
                raise _Fail(1002, "a fragmented control frame")
            if frame.length > _MAX_CONTROL:
                raise _Fail(1002, "a control frame longer than 125 bytes")
            if frame.rsv1:
                raise _Fail(1002, "RSV1 set on a control frame")
            return
        if opcode not in _DATA_OPS:
            raise _Fail(1002, f"unknown opcode {opcode:#x}")
        message = self._message
        if opcode == OP_CONT:
            if message is None:
                raise _Fail(1002, "a continuation frame without a message to continue")
            if frame.rsv1:
                raise _Fail(1002, "RSV1 set on a continuation frame")
        else:
            if message is not None:
                raise _Fail(1002, "a new data message before the last one's final fragment")
            if frame.rsv1 and self._deflate is None:
                raise _Fail(1002, "RSV1 set but no extension was negotiated")
            message = self._message = _Assembly(opcode == OP_TEXT, frame.rsv1)
        message.size += frame.length
        if message.size > self.max_size:
            raise MessageTooBig(f"a message larger than {self.max_size} bytes")

    def _data(self, chunk: bytes, final: bool, events: List[Event]) -> None:
        message = self._message
        assert message is not None
        if message.compressed:
            assert self._deflate is not None
            chunk = self._deflate.inflate(chunk, final)
        if message.decoder is not None:
            try:
                message.chars.append(message.decoder.decode(chunk, final))
            except UnicodeDecodeError:
                raise _Fail(1007, "a text message that is not valid UTF-8") from None
            if not final and _surrogate_prefix(message.decoder):
                raise _Fail(1007, "a text message that is not valid UTF-8")
        else:
            message.parts.append(chunk)
        if final:
            self._message = None
            data: Union[str, bytes] = "".join(message.chars) if message.text else b"".join(
                message.parts)
            events.append(Message(data))

    def _control_event(self, opcode: int, payload: bytes) -> Event:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        close = _parse_close(payload)
        self.close_received = True
        self.received_close = close
        return close

    # -- output ---------------------------------------------------------------------------------

    def send(self, data: Union[str, bytes]) -> bytes:
        """One data message (text for ``str``), compressed when that was negotiated."""
        self._check_open()
        if isinstance(data, str):
            opcode, payload = OP_TEXT, data.encode("utf-8")
        else:
            opcode, payload = OP_BINARY, bytes(data)
        compress = self._deflate is not None and len(payload) >= _MIN_COMPRESS
        if compress:
            assert self._deflate is not None
            payload = self._deflate.compress(payload)
        elif len(payload) < 126 and not self.client:
            return bytes((0x80 | opcode, len(payload))) + payload  # the common small frame
        return encode_frame(opcode, payload, rsv1=compress, mask=self._mask())

    def ping(self, payload: bytes = b"") -> bytes:
        return self._control_frame(OP_PING, payload)

    def pong(self, payload: bytes = b"") -> bytes:
        return self._control_frame(OP_PONG, payload)

    def close(self, code: int = 1000, reason: str = "") -> bytes:
        """Our close frame (once). The reason is cut to fit 123 bytes of UTF-8."""
        if self.close_sent:
            return b""
        self.close_sent = True
        if code == 1005:
            return encode_frame(OP_CLOSE, b"", mask=self._mask())
        if not valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent (use 1000-1014 or 3000-4999)")
        encoded = reason.encode("utf-8")[:_MAX_CONTROL - 2].decode("utf-8", "ignore").encode()
        return encode_frame(OP_CLOSE, struct.pack("!H", code) + encoded, mask=self._mask())

    def _control_frame(self, opcode: int, payload: bytes) -> bytes:
        self._check_open()
        if len(payload) > _MAX_CONTROL:
            raise ValueError("a control frame payload is at most 125 bytes")
        return encode_frame(opcode, payload, mask=self._mask())

    def _check_open(self) -> None:
        if self.close_sent:
            raise RuntimeError("the WebSocket close frame was already sent")

    def _mask(self) -> Optional[bytes]:
        return os.urandom(4) if self.client else None


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(1005, "")
    if len(payload) == 1:
        raise _Fail(1002, "a close frame with a one-byte payload")
    (code,) = struct.unpack("!H", payload[:2])
    if not valid_close_code(code):
        raise _Fail(1002, f"close code {code} is not allowed on the wire")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise _Fail(1007, "a close reason that is not valid UTF-8") from None
    return Close(code, reason)


def _surrogate_prefix(decoder: codecs.IncrementalDecoder) -> bool:
    """The decoder holds ED A0-BF: the start of a UTF-16 surrogate, invalid in UTF-8.

    CPython's incremental decoder rejects every other invalid prefix as soon as it sees it,
    but waits for the third byte of these.
    """
    pending = decoder.getstate()[0]
    return len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0
