"""What a server reads off a new connection before HTTP: a PROXY protocol header (when the
listener is behind a load balancer that sends one) and the first byte of a TLS handshake (when
it serves HTTPS), on a non-blocking socket, without consuming a byte that follows them.

The bytes after a PROXY header often arrive in the same segment (the TLS ClientHello, or the
HTTP request), and TLS must find them in the kernel, so the header is read with ``MSG_PEEK``:
the peeked bytes go to the parser; while it needs more, every peeked byte is part of the header
and is consumed at once (a level-triggered selector would spin on bytes left peeked); once it is
complete, exactly the header's bytes are consumed.

Plain HTTP sent to a TLS port is answered as nginx does, 400 "The plain HTTP request was sent
to HTTPS port", and closed: a TLS connection starts with a handshake record, byte 0x16.

    preamble = Preamble(proxy=True, tls=True)
    while not preamble.step(sock):  # False: wait until the socket is readable, call again
        wait_readable(sock)
    peer = effective_peer(preamble.header, peer) if preamble.header else peer
"""

from __future__ import annotations

import socket
from typing import Optional

from .proxy_protocol import NEED_DATA, ProxyHeader, ProxyHeaderParser, ProxyProtocolError

__all__ = ["Preamble", "PreambleError", "PLAIN_HTTP_TO_TLS", "client_used_tls"]

_PEEK = 536  # more than a v1 header (107); a larger v2 header comes in several reads
_TLS_HANDSHAKE = 0x16  # the content type of the record a TLS connection starts with
_PP2_TYPE_SSL = 0x20  # a v2 TLV: the client's connection to the proxy, and whether it was TLS
_PP2_CLIENT_SSL = 0x01

_PLAIN_BODY = b"The plain HTTP request was sent to HTTPS port\n"
PLAIN_HTTP_TO_TLS = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (len(_PLAIN_BODY), _PLAIN_BODY))


class PreambleError(Exception):
    """The connection must be closed, after sending ``response`` (maybe empty)."""

    def __init__(self, reason: str, response: bytes = b"") -> None:
        super().__init__(reason)
        self.response = response


class Preamble:
    """The state of one connection's preamble; ``step`` advances it as bytes arrive."""

    def __init__(self, proxy: bool, tls: bool) -> None:
        self._proxy: Optional[ProxyHeaderParser] = ProxyHeaderParser() if proxy else None
        self._tls = tls
        self.header: Optional[ProxyHeader] = None  # the PROXY header, once read

    def step(self, sock: socket.socket) -> bool:
        """Read what has arrived: True when the preamble is over (what follows is TLS or HTTP,
        still unread), False to be called again when ``sock`` is readable. Raises
        ``PreambleError`` when the connection must be closed, ``OSError`` if it broke."""
        if self._proxy is not None and not self._read_proxy_header(sock):
            return False
        if self._tls:
            first = _peek(sock, 1)
            if first is None:
                return False
            if not first:
                raise PreambleError("closed before the TLS handshake")
            if first[0] != _TLS_HANDSHAKE:
                raise PreambleError("plain HTTP sent to the TLS port", PLAIN_HTTP_TO_TLS)
            self._tls = False
        return True

    def _read_proxy_header(self, sock: socket.socket) -> bool:
        parser = self._proxy
        assert parser is not None
        data = _peek(sock, _PEEK)
        if data is None:
            return False
        if not data:
            raise PreambleError("closed before its PROXY protocol header was complete")
        try:
            result = parser.feed(data)
        except ProxyProtocolError as exc:
            raise PreambleError(str(exc)) from None
        if result is NEED_DATA:
            _consume(sock, len(data))  # all of it is header: never leave peeked bytes behind
            return False
        _consume(sock, len(data) - len(parser.rest))  # the rest stays for TLS or HTTP
        self.header = result  # type: ignore[assignment]
        self._proxy = None
        return True


def client_used_tls(header: ProxyHeader) -> bool:
    """Whether the proxy says the client reached it over TLS (HAProxy ``send-proxy-v2-ssl``):
    then the request's scheme is https, as a TLS-terminating proxy's X-Forwarded-Proto says."""
    return any(kind == _PP2_TYPE_SSL and value[:1] and value[0] & _PP2_CLIENT_SSL
               for kind, value in header.tlvs)


def _peek(sock: socket.socket, size: int) -> Optional[bytes]:
    """Up to ``size`` bytes left in the kernel; None if nothing has arrived yet."""
    try:
        return sock.recv(size, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return None


def _consume(sock: socket.socket, count: int) -> None:
    """Take ``count`` bytes already peeked (so they are in the kernel: this never waits)."""
    while count > 0:
        data = sock.recv(count)
        if not data:
            raise PreambleError("closed during its PROXY protocol header")
        count -= len(data)
