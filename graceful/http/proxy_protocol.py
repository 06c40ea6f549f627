"""The PROXY protocol, versions 1 and 2: the header a load balancer (HAProxy, AWS NLB, ...)
sends before anything else on a connection, to say who the real client is (no I/O here).

Version 1 is one text line of at most 107 bytes::

    PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n
    PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n
    PROXY UNKNOWN[ anything]\r\n           (the sender does not know: use the real peer)

Version 2 is binary: the 12-byte signature ``\\r\\n\\r\\n\\0\\r\\nQUIT\\n``, a byte of version (2)
and command (0 LOCAL: a health check from the proxy itself, use the real peer; 1 PROXY), a byte
of address family (0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport (0 UNSPEC, 1 STREAM), a
2-byte big-endian length, then that many bytes: the addresses (12, 36 or 216 bytes) and
type-length-value extensions (TLVs), which are bounds-checked and handed back uninterpreted.
A LOCAL or UNSPEC header's block is skipped whole, as the spec says (its family is ignored).

A server feeds what it receives to a ``ProxyHeaderParser`` until it returns a ``ProxyHeader``;
the bytes after the header (often the start of the HTTP request, in the same segment) are in
``parser.rest`` and go to the HTTP parser::

    parser = ProxyHeaderParser()
    result = parser.feed(data)      # NEED_DATA, or a ProxyHeader
    if result is not NEED_DATA:
        peer = effective_peer(result, real_peer)
        http_parser.feed(parser.rest)

The version is recognised from the first byte and every byte is checked as it arrives, so a
connection that sends something else (a plain ``GET``) fails at once with
``ProxyProtocolError`` instead of waiting for a timeout; the connection must then be closed.
The work is linear in the bytes received, and the header is at most 107 bytes (v1) or
16 + 65535 (v2).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Any, Optional, Tuple, Union

__all__ = ["ProxyHeader", "ProxyHeaderParser", "ProxyProtocolError", "NEED_DATA", "encode",
           "effective_peer",
           "V2_SIGNATURE", "V1_MAX", "PROXY", "LOCAL", "INET", "INET6", "UNIX", "UNSPEC"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (the spec's bound)

PROXY, LOCAL = "PROXY", "LOCAL"
INET, INET6, UNIX, UNSPEC = "inet", "inet6", "unix", "unspec"  # as in graceful.handoff_protocol

_V2_HEAD = struct.Struct("!12sBBH")
_V2_COMMANDS = {0: LOCAL, 1: PROXY}
_V2_FAMILIES = {0: UNSPEC, 1: INET, 2: INET6, 3: UNIX}
_V2_FAMILY_CODES = {name: code for code, name in _V2_FAMILIES.items()}
_V2_ADDRESS_SIZES = {UNSPEC: 0, INET: 12, INET6: 36, UNIX: 216}
_V2_STREAM = 1
_UNIX_PATH = 108
_TLV_HEAD = struct.Struct("!BH")
_V1_PROTOCOLS = (b"TCP4", b"TCP6", b"UNKNOWN")
_V1_WORD = re.compile(rb"[^ \r]*")
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")  # a v1 line is printable US-ASCII

# A TCP peer is (host, port); a Unix one is its path ("@name" for an abstract socket).
Address = Union[Tuple[str, int], str, None]


class ProxyProtocolError(ValueError):
    """The connection did not start with a valid PROXY protocol header: close it."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class ProxyHeader:
    """What a PROXY header said. ``source`` is the client, ``destination`` the address it
    connected to; both are None when the header carries no addresses (v1 UNKNOWN, v2 LOCAL or
    UNSPEC), and then ``proxied`` is False: the connection's own peer is the one to use."""

    __slots__ = ("version", "command", "family", "source", "destination", "tlvs")

    def __init__(self, version: int, command: str, family: str, source: Address = None,
                 destination: Address = None, tlvs: Tuple[Tuple[int, bytes], ...] = ()) -> None:
        self.version = version
        self.command = command
        self.family = family
        self.source = source
        self.destination = destination
        self.tlvs = tlvs  # v2 (type, value) extensions, in order, not interpreted

    @property
    def proxied(self) -> bool:
        return self.command == PROXY and self.source is not None

    def _key(self) -> tuple:
        return (self.version, self.command, self.family, self.source, self.destination,
                self.tlvs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProxyHeader) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"ProxyHeader(v{self.version} {self.command} {self.family} "
                f"{self.source!r} -> {self.destination!r}, {len(self.tlvs)} TLVs)")


def effective_peer(header: ProxyHeader, real_peer: Any) -> Any:
    """The peer to treat the connection as coming from: the header's TCP source (host, port);
    None, as for a Unix socket peer, when the client reached the proxy over a Unix socket;
    ``real_peer`` when the header names no client (v1 UNKNOWN, v2 LOCAL or UNSPEC)."""
    if not header.proxied:
        return real_peer
    return header.source if header.family in (INET, INET6) else None


class ProxyHeaderParser:
    """Reads one PROXY header from the start of a connection; see the module docstring."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._checked = 0  # v1: bytes of _buf already found printable (not searched again)
        self.header: Optional[ProxyHeader] = None
        self.rest = b""  # what followed the header, once it is complete

    def feed(self, data: bytes) -> Union[ProxyHeader, _NeedData]:
        """Add received bytes; returns the header once complete, else ``NEED_DATA``. Raises
        ``ProxyProtocolError`` as soon as the bytes cannot be the start of a header."""
        if self.header is not None:
            raise RuntimeError("feed() after the PROXY header was complete: use .rest")
        self._buf += data
        buf = self._buf
        if not buf:
            return NEED_DATA
        if buf[0] == V1_PREFIX[0]:
            header = self._v1()
        elif buf[0] == V2_SIGNATURE[0]:
            header = self._v2()
        else:
            raise ProxyProtocolError(f"the connection did not start with a PROXY protocol "
                                     f"header (it sent {bytes(buf[:16])!r})")
        if header is None:
            return NEED_DATA
        self.header = header
        return header

    def _v1(self) -> Optional[ProxyHeader]:
        buf = self._buf
        if buf[:len(V1_PREFIX)] != V1_PREFIX[:len(buf)]:
            raise ProxyProtocolError(f"not a PROXY protocol header: {bytes(buf[:16])!r}")
        # Every byte before the CRLF must be printable ASCII; bytes before _checked were.
        scan = bytes(buf[:V1_MAX])
        _check_v1_protocol(scan)
        other = _V1_NOT_PRINTABLE.search(scan, self._checked)
        if other is None:
            if len(buf) >= V1_MAX:
                raise ProxyProtocolError(f"PROXY v1 line longer than {V1_MAX} bytes")
            self._checked = len(buf)
            return None
        end = other.start()
        self._checked = end
        if scan[end:end + 1] != b"\r":
            raise ProxyProtocolError(f"PROXY v1 line has a byte {scan[end:end + 1]!r} that is "
                                     "not printable ASCII")
        if end + 1 == len(scan):
            if len(scan) == V1_MAX:
                raise ProxyProtocolError(f"PROXY v1 line longer than {V1_MAX} bytes")
            return None  # the LF may come in the next piece
        if scan[end + 1:end + 2] != b"\n":
            raise ProxyProtocolError("PROXY v1 line has a CR not followed by LF")
        header = _parse_v1(scan[:end])
        self.rest = bytes(buf[end + 2:])
        return header

    def _v2(self) -> Optional[ProxyHeader]:
        buf = self._buf
        signature = len(V2_SIGNATURE)
        if buf[:signature] != V2_SIGNATURE[:len(buf)]:
            raise ProxyProtocolError(f"not a PROXY protocol header: {bytes(buf[:16])!r}")
        if len(buf) > signature:
            _check_v2_version(buf[signature])
        if len(buf) > signature + 1 and buf[signature] & 0x0F == 1:
            _check_v2_family(buf[signature + 1])
        if len(buf) < _V2_HEAD.size:
            return None
        _, version_command, family_transport, length = _V2_HEAD.unpack_from(buf)
        total = _V2_HEAD.size + length
        if len(buf) < total:
            return None
        header = _parse_v2(version_command, family_transport,
                           bytes(buf[_V2_HEAD.size:total]))
        self.rest = bytes(buf[total:])
        return header


# -- version 1 ----------------------------------------------------------------------------------

def _check_v1_protocol(scan: bytes) -> None:
    """Fail on the first byte that makes the protocol word other than the three there are."""
    word = _V1_WORD.match(scan, len(V1_PREFIX)).group()  # type: ignore[union-attr]
    complete = len(V1_PREFIX) + len(word) < len(scan)
    if (word in _V1_PROTOCOLS) if complete else any(p.startswith(word) for p in _V1_PROTOCOLS):
        return
    raise ProxyProtocolError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, not "
                             f"{word[:16]!r}")


def _parse_v1(line: bytes) -> ProxyHeader:
    parts = line.split(b" ")
    protocol = parts[1] if len(parts) > 1 else b""
    if protocol == b"UNKNOWN":
        return ProxyHeader(1, PROXY, UNSPEC)  # the rest of the line is to be ignored
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, not "
                                 f"{protocol[:16]!r}")
    if len(parts) != 6:
        raise ProxyProtocolError(f"PROXY v1 {protocol.decode()} line needs 4 fields after "
                                 f"the protocol, separated by single spaces: {line!r}")
    family = INET if protocol == b"TCP4" else INET6
    source = (_v1_address(parts[2], family), _v1_port(parts[4]))
    destination = (_v1_address(parts[3], family), _v1_port(parts[5]))
    return ProxyHeader(1, PROXY, family, source, destination)


def _v1_address(text: bytes, family: str) -> str:
    kind = ipaddress.IPv4Address if family == INET else ipaddress.IPv6Address
    try:
        if b"%" in text:
            raise ValueError("zone")
        return str(kind(text.decode("ascii")))
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 address {text[:45]!r} is not an "
                                 f"{'IPv4' if family == INET else 'IPv6'} address") from None


def _v1_port(text: bytes) -> int:
    if not _V1_PORT.fullmatch(text) or int(text) > 65535:
        raise ProxyProtocolError(f"PROXY v1 port {text[:8]!r} is not 0-65535")
    return int(text)


# -- version 2 ----------------------------------------------------------------------------------

def _check_v2_version(version_command: int) -> None:
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header with version {version_command >> 4} "
                                 "(only 2 exists)")
    if version_command & 0x0F not in _V2_COMMANDS:
        raise ProxyProtocolError(f"PROXY v2 command {version_command & 0x0F} is neither "
                                 "LOCAL (0) nor PROXY (1)")


def _check_v2_family(family_transport: int) -> None:
    """For the PROXY command (LOCAL ignores the family byte, as the spec says)."""
    if family_transport >> 4 not in _V2_FAMILIES:
        raise ProxyProtocolError(f"PROXY v2 address family {family_transport >> 4} is unknown")
    transport = family_transport & 0x0F
    if transport > _V2_STREAM:
        raise ProxyProtocolError(f"PROXY v2 transport {transport} is not a stream "
                                 "(this is a TCP server)")


def _parse_v2(version_command: int, family_transport: int, payload: bytes) -> ProxyHeader:
    # LOCAL (the proxy's own connection, a health check) and UNSPEC carry no addresses
    # worth reading: the spec says to use the real endpoints and discard the block.
    if version_command & 0x0F == 0:
        return ProxyHeader(2, LOCAL, UNSPEC)  # its family byte is ignored, even an unknown one
    family = _V2_FAMILIES[family_transport >> 4]  # checked as the byte arrived
    if family == UNSPEC:
        return ProxyHeader(2, PROXY, UNSPEC)
    size = _V2_ADDRESS_SIZES[family]
    if len(payload) < size:
        raise ProxyProtocolError(f"PROXY v2 {family} header needs {size} address bytes, the "
                                 f"length says {len(payload)}")
    source, destination = _v2_addresses(family, payload)
    return ProxyHeader(2, PROXY, family, source, destination, _parse_tlvs(payload, size))


def _v2_addresses(family: str, payload: bytes) -> Tuple[Address, Address]:
    if family == INET:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", payload)
        return ((str(ipaddress.IPv4Address(src)), sport),
                (str(ipaddress.IPv4Address(dst)), dport))
    if family == INET6:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", payload)
        return ((str(ipaddress.IPv6Address(src)), sport),
                (str(ipaddress.IPv6Address(dst)), dport))
    return (_unix_path(payload[:_UNIX_PATH]), _unix_path(payload[_UNIX_PATH:2 * _UNIX_PATH]))


def _unix_path(raw: bytes) -> str:
    if raw[:1] == b"\0":  # an abstract socket: the name follows the NUL
        return "@" + raw[1:].rstrip(b"\0").decode("utf-8", "surrogateescape")
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _parse_tlvs(payload: bytes, start: int) -> Tuple[Tuple[int, bytes], ...]:
    tlvs = []
    at = start
    end = len(payload)
    while at < end:
        if end - at < _TLV_HEAD.size:
            raise ProxyProtocolError(f"PROXY v2 TLV header cut short at byte {at} of {end}")
        kind, length = _TLV_HEAD.unpack_from(payload, at)
        at += _TLV_HEAD.size
        if length > end - at:
            raise ProxyProtocolError(f"PROXY v2 TLV 0x{kind:02x} of {length} bytes overruns "
                                     f"the header ({end - at} left)")
        tlvs.append((kind, payload[at:at + length]))
        at += length
    return tuple(tlvs)


# -- encoding (for test clients, and for forwarding to another server) --------------------------

def encode(header: ProxyHeader) -> bytes:
    """The bytes of ``header`` in its ``version``; it must be representable there (v1 has no
    LOCAL, Unix addresses or TLVs). Raises ``ProxyProtocolError`` otherwise."""
    if header.version == 1:
        return _encode_v1(header)
    if header.version == 2:
        return _encode_v2(header)
    raise ProxyProtocolError(f"PROXY protocol version {header.version} does not exist")


def _encode_v1(header: ProxyHeader) -> bytes:
    if header.command != PROXY or header.tlvs:
        raise ProxyProtocolError("PROXY v1 has no LOCAL command and no TLVs")
    if header.family == UNSPEC:
        return b"PROXY UNKNOWN\r\n"
    if header.family not in (INET, INET6):
        raise ProxyProtocolError(f"PROXY v1 cannot carry {header.family} addresses")
    if header.source is None or header.destination is None:
        raise ProxyProtocolError(f"a PROXY v1 {header.family} header needs both addresses")
    (src, sport), (dst, dport) = header.source, header.destination  # type: ignore[misc]
    protocol = "TCP4" if header.family == INET else "TCP6"
    line = f"PROXY {protocol} {src} {dst} {sport} {dport}\r\n".encode("ascii")
    _parse_v1(line[:-2])  # refuse to send what a receiver would refuse
    return line


def _encode_v2(header: ProxyHeader) -> bytes:
    family = header.family
    if family not in _V2_FAMILY_CODES:
        raise ProxyProtocolError(f"PROXY v2 has no address family {family!r}")
    if header.command == LOCAL or family == UNSPEC:
        addresses = b""
        family = UNSPEC  # a receiver ignores the family of a LOCAL header
    else:
        addresses = _encode_v2_addresses(family, header)
    tlvs = b"".join(_TLV_HEAD.pack(kind, len(value)) + value for kind, value in header.tlvs)
    payload = addresses + tlvs
    if len(payload) > 0xFFFF:
        raise ProxyProtocolError(f"PROXY v2 header of {len(payload)} bytes; the limit is 65535")
    command = 0 if header.command == LOCAL else 1
    transport = 0 if family == UNSPEC else _V2_STREAM
    return _V2_HEAD.pack(V2_SIGNATURE, 0x20 | command,
                         _V2_FAMILY_CODES[family] << 4 | transport, len(payload)) + payload


def _encode_v2_addresses(family: str, header: ProxyHeader) -> bytes:
    if header.source is None or header.destination is None:
        raise ProxyProtocolError(f"a PROXY v2 {family} header needs both addresses")
    if family == UNIX:
        return _unix_bytes(header.source) + _unix_bytes(header.destination)  # type: ignore
    (src, sport), (dst, dport) = header.source, header.destination  # type: ignore[misc]
    kind = ipaddress.IPv4Address if family == INET else ipaddress.IPv6Address
    try:
        return kind(src).packed + kind(dst).packed + struct.pack("!HH", sport, dport)
    except (ValueError, struct.error) as exc:
        raise ProxyProtocolError(f"cannot encode {family} addresses {header.source!r}, "
                                 f"{header.destination!r}: {exc}") from None


def _unix_bytes(path: str) -> bytes:
    raw = path.encode("utf-8", "surrogateescape")
    if raw[:1] == b"@":
        raw = b"\0" + raw[1:]
    if len(raw) > _UNIX_PATH:
        raise ProxyProtocolError(f"Unix socket path {path!r} is longer than {_UNIX_PATH} bytes")
    return raw.ljust(_UNIX_PATH, b"\0")
