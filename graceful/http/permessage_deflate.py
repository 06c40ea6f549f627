"""permessage-deflate (RFC 7692): negotiating the offer, and compressing one message at a time.

    offers = parse_extensions(values_of_sec_websocket_extensions)
    accepted = negotiate(offers)            # None: the client offered nothing we can accept
    if accepted: response header "Sec-WebSocket-Extensions: " + accepted.header()
    deflate = accepted.codec(max_size)      # compress(message) / decompressor for a message

Decompression is bounded: a message that would inflate past ``max_size`` raises
``MessageTooBig`` as soon as the bound is passed, never after inflating it all (a zip bomb costs
at most ``max_size`` bytes of memory). No I/O here.
"""

from __future__ import annotations

import re
import zlib
from typing import Dict, List, Optional, Tuple

__all__ = ["Offer", "parse_extensions", "negotiate", "DeflateParams", "Deflate",
           "MessageTooBig", "DeflateError"]

NAME = "permessage-deflate"
# zlib's fastest level: measured here on 128 KB of text, 1.4 ms a message against 4.8 ms at the
# default level 6, for output 15% larger. Compressing every outgoing message is a server's
# largest per-message cost once deflate is on (Autobahn's groups 12 and 13 spent most of the
# server's CPU in it), so speed wins; gorilla/websocket defaults to level 1 too.
_LEVEL = 1
_TAIL = b"\x00\x00\xff\xff"  # the empty stored block a sync flush ends with; RFC 7692 7.2.1
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

Offer = Tuple[str, Dict[str, Optional[str]]]  # (extension name, {parameter: value or None})


class MessageTooBig(Exception):
    """A message inflates past the size bound (close code 1009)."""


class DeflateError(Exception):
    """The compressed data is not valid deflate (close code 1007)."""


def parse_extensions(values: List[str]) -> List[Offer]:
    """The offers of the ``Sec-WebSocket-Extensions`` headers, in order; malformed ones skipped.

    RFC 6455 9.1: ``name *( ";" param [ "=" value ] )``, offers separated by commas, values
    tokens or quoted strings.
    """
    offers: List[Offer] = []
    for value in values:
        for item in _split_outside_quotes(value, ","):
            parts = [p.strip(" \t") for p in _split_outside_quotes(item, ";")]
            if not parts[0]:
                continue
            offer = _parse_offer(parts)
            if offer is not None:
                offers.append(offer)
    return offers


def _parse_offer(parts: List[str]) -> Optional[Offer]:
    if not _TOKEN.fullmatch(parts[0]):
        return None
    params: Dict[str, Optional[str]] = {}
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        name = name.strip(" \t").lower()
        value = value.strip(" \t")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if not _TOKEN.fullmatch(name) or (eq and not _TOKEN.fullmatch(value)):
            return None
        if name in params:
            return None  # a repeated parameter makes the offer invalid (RFC 7692 7)
        params[name] = value if eq else None
    return parts[0].lower(), params


def _split_outside_quotes(text: str, sep: str) -> List[str]:
    pieces, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


class DeflateParams:
    """What was agreed for one connection."""

    def __init__(self, server_no_context_takeover: bool = False,
                 client_no_context_takeover: bool = False,
                 server_max_window_bits: Optional[int] = None,
                 client_max_window_bits: Optional[int] = None) -> None:
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits

    def header(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value of the server's answer."""
        parts = [NAME]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits is not None:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits is not None:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)

    def codec(self, max_size: int) -> "Deflate":
        return Deflate(self, max_size)


def negotiate(offers: List[Offer]) -> Optional[DeflateParams]:
    """Accept the first permessage-deflate offer whose parameters we support (RFC 7692 5)."""
    for name, params in offers:
        if name == NAME:
            accepted = _accept(params)
            if accepted is not None:
                return accepted
    return None


def _accept(params: Dict[str, Optional[str]]) -> Optional[DeflateParams]:
    accepted = DeflateParams()
    for name, value in params.items():
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
            setattr(accepted, name, True)
        elif name == "server_max_window_bits":
            bits = _window_bits(value)
            # zlib cannot compress raw deflate with a 256-byte window (it would use 512).
            if bits is None or bits == 8:
                return None
            accepted.server_max_window_bits = bits
        elif name == "client_max_window_bits":
            if value is None:
                continue  # the client may limit itself; we inflate any window up to 15
            bits = _window_bits(value)
            if bits is None:
                return None
            accepted.client_max_window_bits = bits
        else:
            return None  # an unknown parameter: decline this offer
    return accepted


def _window_bits(value: Optional[str]) -> Optional[int]:
    if value is None or not value.isdigit() or value.startswith("0"):
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


class Deflate:
    """Compress outgoing and inflate incoming messages of one connection."""

    def __init__(self, params: DeflateParams, max_size: int) -> None:
        self.params = params
        self.max_size = max_size
        self._wbits = -(params.server_max_window_bits or 15)
        self._compressor = self._new_compressor()
        self._decompressor = zlib.decompressobj(wbits=-15)
        self._inflated = 0  # bytes of the current incoming message so far

    def _new_compressor(self) -> "zlib._Compress":
        return zlib.compressobj(_LEVEL, zlib.DEFLATED, self._wbits)

    def compress(self, data: bytes) -> bytes:
        """One whole message, compressed (RFC 7692 7.2.1: sync flush, tail removed)."""
        out = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if self.params.server_no_context_takeover:
            self._compressor = self._new_compressor()
        if out.endswith(_TAIL):
            out = out[:-4]
        return out or b"\x00"

    def inflate(self, data: bytes, final: bool) -> bytes:
        """Inflate the next piece of an incoming message; ``final`` for its last piece."""
        if final:
            data += _TAIL
        room = self.max_size - self._inflated
        try:
            out = self._decompressor.decompress(data, room + 1)
        except zlib.error as exc:
            raise DeflateError(f"bad compressed data: {exc}") from None
        self._inflated += len(out)
        if self._inflated > self.max_size or self._decompressor.unconsumed_tail:
            raise MessageTooBig(f"a message inflates past {self.max_size} bytes")
        if final:
            self._inflated = 0
            # A block with BFINAL set ends the deflate stream: the next message starts anew.
            if self.params.client_no_context_takeover or self._decompressor.eof:
                self._decompressor = zlib.decompressobj(wbits=-15)
        return out
