"""HTTP/1.1 request parsing and response framing, without any I/O (the sans-IO core).

A server feeds received bytes to a ``RequestParser`` and pulls events from it::

    parser = RequestParser()
    parser.feed(data)
    event = parser.next_event()   # Request, Body(data), EndOfMessage(trailers), or NEED_DATA

After ``EndOfMessage`` the server answers, then calls ``parser.start_next()`` to parse the next
request on the connection (pipelined bytes already fed are kept). Anything malformed raises
``HTTPError`` with the status to answer (400, 413, 414, 417, 431, 501, 505); the connection must
then be closed, because its framing can no longer be trusted.

The grammar is RFC 9112 (messages) and RFC 9110 (semantics), applied strictly where a lenient
reading lets two parsers in a chain disagree about where a request ends (request smuggling):
Content-Length together with Transfer-Encoding, a repeated or non-numeric Content-Length, a
transfer coding other than one final ``chunked``, chunk-size lines outside the chunk-ext grammar,
obs-fold, whitespace before a header's colon, control characters, bare CR or LF line ends, a
request-target outside RFC 3986, and a missing, repeated or invalid Host are all refused.

Every byte is examined a bounded number of times however the input is split: a client sending
one byte at a time (slow loris) costs CPU linear in what it sends. A head that can no longer
become valid (a bare LF, binary garbage where a request line should be) is refused as soon as
the offending byte arrives, not when the head would have ended.
"""

from __future__ import annotations

import ipaddress
import re
import time
from typing import Dict, List, Optional, Set, Tuple, Union

__all__ = ["Limits", "HTTPError", "Request", "Body", "EndOfMessage", "NEED_DATA",
           "RequestParser", "response_head", "REASONS"]

Headers = List[Tuple[bytes, bytes]]


class Limits:
    """Bounds on what one request may use; exceeding them answers 414, 431 or 413."""

    __slots__ = ("max_request_line", "max_header_bytes", "max_headers", "max_body")

    def __init__(self, max_request_line: int = 8190, max_header_bytes: int = 65536,
                 max_headers: int = 100, max_body: Optional[int] = None) -> None:
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body = max_body


class HTTPError(Exception):
    """A request we must refuse: answer ``status`` and close the connection."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status} {REASONS.get(status, '')}: {detail}")
        self.status = status
        self.detail = detail


class Request:
    """A parsed request head.

    ``host`` is the authority the request is for: the absolute-form target's when there is one
    (RFC 9112 3.2.2: it overrides the Host field, and ``headers`` then carry it as ``host`` too,
    so applications see one answer), else the Host field's, else None (HTTP/1.0 without Host).
    """

    __slots__ = ("method", "target", "path", "query", "version", "headers", "keep_alive",
                 "expect_continue", "content_length", "chunked", "upgrade", "host", "forwarded")

    def __init__(self, method: bytes, target: bytes, path: bytes, query: bytes, version: bytes,
                 headers: Headers, keep_alive: bool, expect_continue: bool,
                 content_length: Optional[int], chunked: bool) -> None:
        self.method = method
        self.target = target
        self.path = path  # still percent-encoded
        self.query = query
        self.version = version  # b"1.1" (also for HTTP/1.2 and later minors) or b"1.0"
        self.headers = headers  # names lower-cased, in order, repeats kept
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.content_length = content_length  # None when chunked or no body
        self.chunked = chunked
        self.upgrade: Optional[bytes] = None  # the Upgrade header, lower-cased, if any
        self.host: Optional[bytes] = None
        # It carries a Forwarded or X-Forwarded-* field: only then is graceful.http.forwarded
        # worth asking (servers cache the answer per connection otherwise).
        self.forwarded = False

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def __repr__(self) -> str:
        return f"<Request {self.method!r} {self.target!r} HTTP/{self.version.decode()}>"


class Body:
    """A piece of the request body."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"<Body {len(self.data)} bytes>"


class EndOfMessage:
    """The request (head and body) is complete; ``trailers`` of a chunked body, if any."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: Optional[Headers] = None) -> None:
        self.trailers = trailers or []


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
Event = Union[Request, Body, EndOfMessage, _NeedData]

# -- grammar (RFC 9110 5.6, RFC 9112 2-7, RFC 3986) ---------------------------------------------

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(b"[" + _TCHAR + b"]+")
_QUOTED_STRING = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(rb"[0-9]{1,18}")

# Request-target bytes: RFC 3986's unreserved, sub-delims, ":@/?[]" and "%" (a fragment's "#"
# never travels in a request). Also "{}|^`", which RFC 3986 excludes but browsers send
# unencoded in query strings (the WHATWG URL query percent-encode set leaves them alone):
# refusing them would refuse real traffic, and none of them delimits anything in HTTP.
_TARGET_CHAR = rb"A-Za-z0-9\-._~!$&'()*+,;=:@/?\[\]%{}|^`"
_METHOD_RUN = re.compile(b"[" + _TCHAR + b"]*").match
_TARGET_RUN = re.compile(b"[" + _TARGET_CHAR + b"]*").match
_VERSION_LINE = re.compile(rb"HTTP/[0-9]\.[0-9]\r\n").match
_REQUEST_LINE = re.compile(b"([" + _TCHAR + b"]+) ([" + _TARGET_CHAR + rb"]+) HTTP/[0-9]\.[0-9]\r\n").match
# The common request's whole head in one match: a request line, field lines whose names are
# tokens and whose values hold only visible bytes, spaces and tabs, and the blank line. Anything
# else (a head not all here yet, a folded line, a control byte) takes the incremental scan,
# which finds and names the error. Every repetition stops at a byte it cannot take, so the
# match is linear in the head.
_WHOLE_HEAD = re.compile(b"([" + _TCHAR + b"]+) ([" + _TARGET_CHAR + rb"]+) "
                         rb"(HTTP/[0-9]\.[0-9])\r\n"
                         rb"((?:[" + _TCHAR + rb"]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)\r\n").match
_VERSION_PREFIX = re.compile(rb"(?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.(?:[0-9]\r?)?)?)?)?)?)?)?)?").fullmatch

# Host = uri-host [ ":" port ] (RFC 9110 7.2, RFC 3986 3.2.2): an IP-literal in brackets or a
# reg-name (which an IPv4 address also is); no userinfo.
_REG_NAME = rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
_AUTHORITY = re.compile(rb"(?:\[([^\]]*)\]|(" + _REG_NAME + rb"))(?::[0-9]*)?").fullmatch
_IP_FUTURE = re.compile(rb"v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+").fullmatch

# chunk = chunk-size [ chunk-ext ] CRLF; chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
# with value a token or a quoted-string (RFC 9112 7.1.1). Whitespace is allowed only before ";"
# and around "=", never after a bare size.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*[" + _TCHAR + rb"]+(?:[ \t]*=[ \t]*(?:["
                         + _TCHAR + rb"]+|" + _QUOTED_STRING + rb"))?)*").fullmatch

# Bytes never allowed in a field block (CR and LF are checked as line ends; tab is allowed).
_BAD_FIELD_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]").search

_HEAD, _BODY_LENGTH, _CHUNK_LINE_STATE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _DONE = range(7)
_METHOD, _TARGET, _VERSION, _FIELDS = range(4)  # where the head scan is
_MAX_CHUNK_LINE = 4096
_MAX_CHUNK_SIZE = 1 << 62


class RequestParser:
    """Parses requests from one connection; see the module docstring."""

    def __init__(self, limits: Optional[Limits] = None) -> None:
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._state = _HEAD
        self._left = 0  # bytes left in the current Content-Length body or chunk
        self._body_seen = 0
        self._start_head()
        self.request: Optional[Request] = None
        self._examined = 0  # bytes covered by searches, so tests can see the scan is linear

    def _start_head(self) -> None:
        self._part = _METHOD
        self._scan = 0  # bytes of the buffer already checked in this head, line or trailer
        self._method_end = self._target_end = self._line_end = 0

    # -- input ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed (a pipelined next request, for example)."""
        return len(self._buf)

    def start_next(self) -> None:
        """After ``EndOfMessage``: parse the next request on this connection."""
        if self._state != _DONE:
            raise RuntimeError("start_next() before the request was complete")
        self._state = _HEAD
        self._start_head()
        self.request = None

    # -- events --------------------------------------------------------------------------------

    def next_event(self) -> Event:
        state = self._state
        if state == _HEAD:
            return self._parse_head()
        if state == _BODY_LENGTH:
            return self._length_body()
        if state == _DONE:
            return NEED_DATA  # waiting for start_next()
        return self._chunked_body()

    # -- the head ------------------------------------------------------------------------------

    def _parse_head(self) -> Event:
        buf = self._buf
        if self._part == _METHOD and self._scan == 0:
            # Tolerate empty lines before a request (RFC 9112 2.2): some clients send a stray
            # CRLF after a POST body.
            if buf.startswith(b"\r"):
                while buf[:2] == b"\r\n":
                    del buf[:2]
                if buf == b"\r":
                    return NEED_DATA
            request = self._whole_head()
            if request is not None:
                return request
        if self._part != _FIELDS and not self._scan_request_line():
            return NEED_DATA
        fields_start = self._line_end
        end = self._field_block_end(fields_start)
        limits = self.limits
        if end < 0:
            if len(buf) - fields_start > limits.max_header_bytes:
                raise HTTPError(431, "request header fields too large")
            return NEED_DATA
        if end - fields_start > limits.max_header_bytes + 2:
            raise HTTPError(431, "request header fields too large")
        request = self._build_request(bytes(buf[:end]))
        del buf[:end]
        return self._started(request)

    def _whole_head(self) -> Optional[Request]:
        """The request, if a complete well-formed head within the limits is buffered: one
        match instead of the scan (tried once per head, so it adds at most one pass)."""
        match = _WHOLE_HEAD(self._buf)
        if match is None:
            self._examined += len(self._buf)
            return None
        end = match.end()
        self._examined += end
        method, target, version_text, fields = match.groups()
        line_length = len(method) + len(target) + len(version_text) + 2
        limits = self.limits
        if line_length > limits.max_request_line or len(fields) > limits.max_header_bytes:
            return None  # the scan says which limit
        # In _build_request's order, so errors agree.
        version = b"1.1" if version_text == b"HTTP/1.1" else _version(version_text)
        headers = _matched_fields(fields[:-2].split(b"\r\n"), limits) if fields else []
        if method == b"CONNECT":
            raise HTTPError(501, "CONNECT is not supported")
        if target.startswith(b"/"):  # origin-form, as _split_target would find
            path, _, query = target.partition(b"?")
            authority = None
        else:
            path, query, authority = _split_target(target, method)
        request = _frame(method, target, path, query, version, headers, authority, limits)
        del self._buf[:end]
        return self._started(request)

    def _started(self, request: Request) -> Request:
        self._scan = 0
        self.request = request
        self._body_seen = 0
        if request.chunked:
            self._state = _CHUNK_LINE_STATE
        else:
            self._state = _BODY_LENGTH
            self._left = request.content_length or 0
        return request

    def _scan_request_line(self) -> bool:
        """Check the request line as far as it has arrived; True once it is complete.

        Each call resumes where the last one stopped, so a line fed byte by byte is still
        scanned once, and a byte that no request line can contain is refused when it arrives.
        """
        buf = self._buf
        size = len(buf)
        pos = self._scan
        limit = self.limits.max_request_line
        if pos == 0 and self._part == _METHOD:
            # The usual case, a whole request line in the first bytes: one match. (Tried once
            # per head, so it adds at most one pass over the line.)
            line = _REQUEST_LINE(buf)
            if line is not None and line.end() - 2 <= limit:  # else the scan names the limit
                self._examined += line.end()
                self._method_end, self._target_end = line.end(1), line.end(2)
                self._line_end = self._scan = line.end()
                self._part = _FIELDS
                return True
        if self._part == _METHOD:
            pos = _METHOD_RUN(buf, pos).end()
            self._examined += pos - self._scan + 1
            if pos == size:
                self._scan = pos
                if pos > limit:
                    raise HTTPError(400, "request method too long")
                return False
            if buf[pos] != 0x20 or pos == 0:
                raise HTTPError(400, _not_a_request_line(bytes(buf[:pos + 1])))
            self._method_end = pos
            self._part = _TARGET
            self._scan = pos = pos + 1
        if self._part == _TARGET:
            pos = _TARGET_RUN(buf, pos).end()
            self._examined += pos - self._scan + 1
            if pos == size:
                self._scan = pos
                if pos > limit:
                    raise HTTPError(414, "request target too long")
                return False
            if buf[pos] != 0x20 or pos == self._method_end + 1:
                target = bytes(buf[self._method_end + 1:pos + 1])
                raise HTTPError(400, f"bad byte in the request target {target[-100:]!r}")
            if pos > limit:
                raise HTTPError(414, "request target too long")
            self._target_end = pos
            self._part = _VERSION
            self._scan = pos + 1
        tail = bytes(buf[self._scan:self._scan + 10])
        self._examined += len(tail)
        if _VERSION_LINE(tail):
            self._line_end = self._scan + 10
            self._part = _FIELDS
            self._scan = self._line_end
            return True
        if len(tail) < 10 and _VERSION_PREFIX(tail):
            return False
        raise HTTPError(400, f"bad HTTP version {tail!r} in the request line")

    def _field_block_end(self, start: int) -> int:
        """Where the field block that begins at ``start`` ends (past its blank line), or -1.

        Only bytes not checked before are searched and checked: control characters and CR or LF
        outside a CRLF pair are refused as soon as they arrive.
        """
        buf = self._buf
        if buf[start:start + 2] == b"\r\n":
            return start + 2
        scan = max(start, self._scan)
        search_from = max(start, scan - 3)
        end = buf.find(b"\r\n\r\n", search_from)
        self._examined += len(buf) - search_from
        stop = end + 2 if end >= 0 else len(buf)
        if end < 0 and buf[stop - 1:stop] == b"\r":
            stop -= 1  # its LF may be next
        if stop > scan:
            # Control bytes, and any CR or LF not in a CRLF pair (no pair is split at ``scan``
            # or ``stop``: a CR at the end waits for the next call).
            if _BAD_FIELD_BYTE(buf, scan, stop):
                raise HTTPError(400, "control character in the request head")
            pairs = buf.count(b"\r\n", scan, stop)
            if buf.count(b"\r", scan, stop) != pairs or buf.count(b"\n", scan, stop) != pairs:
                raise HTTPError(400, "bare CR or LF in the request head")
            self._examined += stop - scan
            self._scan = stop
        return end + 4 if end >= 0 else -1

    def _build_request(self, head: bytes) -> Request:
        limits = self.limits
        if self._line_end - 2 > limits.max_request_line:
            raise HTTPError(414, "request line too long")
        method = head[:self._method_end]
        target = head[self._method_end + 1:self._target_end]
        version = _version(head[self._target_end + 1:self._line_end - 2])
        lines = head[self._line_end:-4].split(b"\r\n") if len(head) > self._line_end + 2 else []
        headers = _parse_fields(lines, limits)
        if method == b"CONNECT":
            raise HTTPError(501, "CONNECT is not supported")
        path, query, authority = _split_target(target, method)
        return _frame(method, target, path, query, version, headers, authority, limits)

    # -- bodies --------------------------------------------------------------------------------

    def _take_body(self) -> Body:
        """Up to ``_left`` buffered body bytes (the caller checked some are buffered)."""
        buf = self._buf
        n = min(self._left, len(buf))
        data = bytes(buf[:n])
        del buf[:n]
        self._left -= n
        return Body(data)

    def _length_body(self) -> Event:
        if self._left == 0:
            self._state = _DONE
            return EndOfMessage()
        if not self._buf:
            return NEED_DATA
        return self._take_body()

    def _chunked_body(self) -> Event:
        buf = self._buf
        while True:
            state = self._state
            if state == _CHUNK_DATA:
                if not buf:
                    return NEED_DATA
                body = self._take_body()
                if self._left == 0:
                    self._state = _CHUNK_END
                return body
            if state == _CHUNK_END:
                if len(buf) < 2:
                    if buf[:1] not in (b"", b"\r"):
                        raise HTTPError(400, "chunk data not followed by CRLF")
                    return NEED_DATA
                if buf[:2] != b"\r\n":
                    raise HTTPError(400, "chunk data not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_LINE_STATE
            elif state == _CHUNK_LINE_STATE:
                if not self._chunk_size_line():
                    return NEED_DATA
            else:
                return self._trailers()

    def _chunk_size_line(self) -> bool:
        """Parse the next chunk-size line; True once it is complete (and consumed)."""
        buf = self._buf
        lf = buf.find(b"\n", self._scan)
        self._examined += len(buf) - self._scan
        if lf < 0:
            if len(buf) > _MAX_CHUNK_LINE:
                raise HTTPError(400, "chunk size line too long")
            self._scan = len(buf)
            return False
        if lf == 0 or buf[lf - 1] != 0x0d:
            raise HTTPError(400, "bare LF in a chunk size line")
        if lf > _MAX_CHUNK_LINE:
            raise HTTPError(400, "chunk size line too long")
        line = bytes(buf[:lf - 1])
        match = _CHUNK_LINE(line)
        if match is None:
            raise HTTPError(400, f"bad chunk size line {line[:60]!r}")
        size = int(match.group(1), 16)
        if size > _MAX_CHUNK_SIZE:
            raise HTTPError(400, f"chunk size too large {line[:60]!r}")
        del buf[:lf + 1]
        self._scan = 0
        if size == 0:
            self._state = _TRAILERS
            return True
        self._body_seen += size
        max_body = self.limits.max_body
        if max_body is not None and self._body_seen > max_body:
            raise HTTPError(413, f"body larger than {max_body} bytes")
        self._left = size
        self._state = _CHUNK_DATA
        return True

    def _trailers(self) -> Event:
        buf = self._buf
        end = self._field_block_end(0)
        if end < 0:
            if len(buf) > self.limits.max_header_bytes:
                raise HTTPError(431, "trailer fields too large")
            return NEED_DATA
        if end > self.limits.max_header_bytes + 2:
            raise HTTPError(431, "trailer fields too large")
        block = bytes(buf[:end - 4]) if end > 2 else b""
        del buf[:end]
        self._scan = 0
        trailers = _parse_fields(block.split(b"\r\n"), self.limits) if block else []
        self._state = _DONE
        return EndOfMessage(trailers)


def _not_a_request_line(start: bytes) -> str:
    if start[:2] == b"\x16\x03":
        return "a TLS handshake on a plain-HTTP port"
    return f"not an HTTP request line (starts {start[:40]!r})"


def _version(text: bytes) -> bytes:
    """b"1.0" or b"1.1" from ``HTTP/x.y``; a later HTTP/1 minor is served as 1.1 (RFC 9110 2.5)."""
    if text == b"HTTP/1.1":
        return b"1.1"
    major, minor = text[5:6], text[7:8]
    if major != b"1":
        raise HTTPError(505, f"unsupported version {text!r}")
    return b"1.0" if minor == b"0" else b"1.1"


def _parse_fields(lines: List[bytes], limits: Limits) -> Headers:
    """Header (or trailer) lines, whose bytes the scan already checked."""
    if len(lines) > limits.max_headers:
        raise HTTPError(431, f"more than {limits.max_headers} header fields")
    headers: Headers = []
    names = _known_names
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise HTTPError(400, "obsolete line folding in a header")
        name, colon, value = line.partition(b":")
        lower = names.get(name)
        if lower is None:
            if not colon or not _TOKEN.fullmatch(name):
                raise HTTPError(400, f"malformed header line {line[:100]!r}")
            lower = _remember_name(name)
        headers.append((lower, value.strip(b" \t")))
    return headers


def _matched_fields(lines: List[bytes], limits: Limits) -> Headers:
    """``_parse_fields`` for lines ``_WHOLE_HEAD`` matched: each is already a token, a colon
    and a value of allowed bytes, so only the names' case and the count are left to do."""
    if len(lines) > limits.max_headers:
        raise HTTPError(431, f"more than {limits.max_headers} header fields")
    headers: Headers = []
    names = _known_names
    for line in lines:
        name, _, value = line.partition(b":")
        lower = names.get(name)
        if lower is None:
            lower = _remember_name(name)
        headers.append((lower, value.strip(b" \t")))
    return headers


_known_names: Dict[bytes, bytes] = {}


def _remember_name(name: bytes) -> bytes:
    """The lower-case form of a valid field name, kept in ``_known_names`` (bounded): names
    repeat from request to request."""
    lower = name.lower()
    if len(_known_names) < 4096:
        _known_names[name] = lower
    return lower


def _split_target(target: bytes, method: bytes) -> Tuple[bytes, bytes, Optional[bytes]]:
    """``(path, query, authority)``: authority only for the absolute form (RFC 9112 3.2)."""
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        return path, query, None
    if target == b"*" and method == b"OPTIONS":
        return b"*", b"", None
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise HTTPError(400, f"bad request target {target[:100]!r}")
    cut = len(rest)
    for delimiter in (b"/", b"?"):
        found = rest.find(delimiter)
        if 0 <= found < cut:
            cut = found
    authority, rest = rest[:cut], rest[cut:]
    if not authority or b"@" in authority:  # RFC 9110 4.2.1 and 4.2.4
        raise HTTPError(400, f"bad authority in the request target {target[:100]!r}")
    path, _, query = rest.partition(b"?")
    return path or b"/", query, authority


def _valid_authority(value: bytes) -> bool:
    if value in _valid_hosts:  # a server sees the same few hosts again and again
        return True
    match = _AUTHORITY(value)
    if match is None:
        return False
    literal = match.group(1)
    if literal is not None and not _IP_FUTURE(literal):
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return False
    if len(_valid_hosts) < 256:
        _valid_hosts.add(value)
    return True


_valid_hosts: Set[bytes] = set()


def _list_elements(values: List[bytes]) -> List[bytes]:
    """The non-empty, lower-cased elements of a comma-separated field (RFC 9110 5.6.1)."""
    elements = []
    for value in values:
        for element in value.split(b","):
            element = element.strip(b" \t")
            if element:
                elements.append(element.lower())
    return elements


def _frame(method: bytes, target: bytes, path: bytes, query: bytes, version: bytes,
           headers: Headers, authority: Optional[bytes], limits: Limits) -> Request:
    content_length: Optional[int] = None
    transfer_encodings: List[bytes] = []
    connection: List[bytes] = []
    expect: List[bytes] = []
    upgrade: Optional[bytes] = None
    forwarded = False
    host_at = -1
    for index, (name, value) in enumerate(headers):
        kind = _FRAMING_FIELDS.get(name)
        if kind is None:
            continue  # most fields: nothing for the framing to do
        if kind is _CONTENT_LENGTH:
            if content_length is not None:
                raise HTTPError(400, "repeated Content-Length")
            if not _DIGITS.fullmatch(value):
                raise HTTPError(400, f"bad Content-Length {value[:40]!r}")
            content_length = int(value)
        elif kind is _HOST:
            if host_at >= 0:
                raise HTTPError(400, "more than one Host header")  # RFC 9112 3.2
            if not _valid_authority(value):
                raise HTTPError(400, f"bad Host {value[:100]!r}: it must be host[:port]")
            host_at = index
        elif kind is _TRANSFER_ENCODING:
            transfer_encodings.append(value)
        elif kind is _CONNECTION:
            connection.append(value)
        elif kind is _EXPECT:
            expect.append(value)
        elif kind is _UPGRADE:
            upgrade = value.lower()
        else:
            forwarded = True
    chunked = False
    if transfer_encodings:
        if content_length is not None:
            raise HTTPError(400, "both Content-Length and Transfer-Encoding")
        if version == b"1.0":
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        _check_transfer_codings(_list_elements(transfer_encodings))
        chunked = True
    if content_length is not None and limits.max_body is not None and content_length > limits.max_body:
        raise HTTPError(413, f"body larger than {limits.max_body} bytes")
    if version == b"1.1" and host_at < 0:
        raise HTTPError(400, "HTTP/1.1 needs a Host header")
    host = headers[host_at][1] if host_at >= 0 else None
    if authority is not None:
        host = _take_authority(headers, host_at, authority, target)
    if connection:
        tokens = _list_elements(connection)
        # "close" wins in every version (RFC 9112 9.6); HTTP/1.0 stays open only when asked.
        keep_alive = b"close" not in tokens and (version == b"1.1" or b"keep-alive" in tokens)
    else:
        keep_alive = version == b"1.1"
    expect_continue = bool(expect) and _expects_continue(expect) and version == b"1.1" and (
        chunked or bool(content_length))
    request = Request(method, target, path, query, version, headers, keep_alive, expect_continue,
                      content_length, chunked)
    request.upgrade = upgrade
    request.host = host
    request.forwarded = forwarded
    return request


_FORWARDED_FIELDS = frozenset((b"forwarded", b"x-forwarded-for", b"x-forwarded-proto",
                               b"x-forwarded-host", b"x-forwarded-port"))

# The fields _frame looks at, each to its kind (one lookup per field; the rest pass by).
_CONTENT_LENGTH, _HOST, _TRANSFER_ENCODING, _CONNECTION, _EXPECT, _UPGRADE, _FORWARDING = (
    "content-length", "host", "transfer-encoding", "connection", "expect", "upgrade",
    "forwarding")
_FRAMING_FIELDS = {b"content-length": _CONTENT_LENGTH, b"host": _HOST,
                   b"transfer-encoding": _TRANSFER_ENCODING, b"connection": _CONNECTION,
                   b"expect": _EXPECT, b"upgrade": _UPGRADE,
                   **dict.fromkeys(_FORWARDED_FIELDS, _FORWARDING)}


def _take_authority(headers: Headers, host_at: int, authority: bytes, target: bytes) -> bytes:
    """An absolute-form target's authority is the request's host, whatever Host says
    (RFC 9112 3.2.2); put it in the headers too, so every reader of them agrees."""
    if not _valid_authority(authority):
        raise HTTPError(400, f"bad authority in the request target {target[:100]!r}")
    if host_at >= 0:
        headers[host_at] = (b"host", authority)
    else:
        headers.append((b"host", authority))
    return authority


def _check_transfer_codings(codings: List[bytes]) -> None:
    """Refuse a Transfer-Encoding other than one final ``chunked`` (RFC 9112 6.1, 6.3)."""
    if codings[-1:] == [b"chunked"] and codings.count(b"chunked") == 1:
        if len(codings) > 1:  # gzip, chunked: a coding we do not decode
            raise HTTPError(501, f"unsupported transfer coding {b', '.join(codings)[:60]!r}")
        return
    # Chunked not final (a lone gzip included): the body's end cannot be known, and 6.3 (4)
    # says 400 and close; the 501 of 6.1 is for a coding before a final chunked, above.
    raise HTTPError(400, "Transfer-Encoding must end with one chunked")


def _expects_continue(values: List[bytes]) -> bool:
    """Whether the Expect lines ask for 100-continue; any other expectation is 417
    (RFC 9110 10.1.1: 100-continue is the only one defined, and it has no parameters)."""
    elements = _list_elements(values)
    for element in elements:
        if element != b"100-continue":
            raise HTTPError(417, f"unsupported expectation {element[:40]!r}")
    return bool(elements)


# -- responses ----------------------------------------------------------------------------------

REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    206: "Partial Content", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed",
    422: "Unprocessable Content", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}


def frame_response(request: Request, status: int, status_text: bytes, headers: Headers,
                   length: Optional[int], body_length: Optional[int], keep_alive: bool,
                   draining: bool) -> Tuple[bytes, Optional[int], bool, bool]:
    """Decide how a response body is framed, and build the head.

    ``length`` is the Content-Length the application declared (None if it did not);
    ``body_length`` the size of the whole body when it is already known (one write). Returns
    ``(head, length, chunked, keep_alive)``: a known length is sent as Content-Length, an
    unknown one is chunked in HTTP/1.1 and ends at the close in HTTP/1.0.
    """
    chunked = False
    framing = b""
    if length is not None:
        framing = b"content-length: %d\r\n" % length
    elif not no_body_expected(request.method, status):
        if body_length is not None:
            length = body_length
            framing = b"content-length: %d\r\n" % length
        elif request.version == b"1.1":
            chunked = True
            framing = b"transfer-encoding: chunked\r\n"
        else:
            keep_alive = False  # an HTTP/1.0 body without a length ends at the close
    if draining:
        keep_alive = False
    if not keep_alive:
        framing += b"connection: close\r\n"
    elif request.version == b"1.0":
        framing += b"connection: keep-alive\r\n"
    parts = [b"HTTP/1.1 ", status_text, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (framing, b"date: ", http_date(), b"\r\n\r\n")
    return b"".join(parts), length, chunked, keep_alive


def response_head(status_line: bytes, headers: Headers) -> bytes:
    """``HTTP/1.1 <status_line>`` and the header lines, ending with the blank line."""
    parts = [b"HTTP/1.1 ", status_line, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


_status_lines: Dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """``b"200 OK"`` for 200 (remembered)."""
    line = _status_lines.get(status)
    if line is None:
        line = b"%d %s" % (status, REASONS.get(status, "").encode())
        if len(_status_lines) < 1000:
            _status_lines[status] = line
    return line


def error_response(status: int, keep_alive: bool = False) -> bytes:
    """A small complete plain-text response for ``status``."""
    reason = REASONS.get(status, "Error").encode()
    body = reason + b"\n"
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n%sDate: %s\r\n\r\n%s"
            % (status, reason, len(body), b"" if keep_alive else b"Connection: close\r\n",
               http_date(), body))


def no_body_expected(method: bytes, status: int) -> bool:
    """Responses that carry no body whatever their headers say (RFC 9110 6.4.1)."""
    return method == b"HEAD" or status < 200 or status in (204, 304)


def is_valid_header(name: bytes, value: bytes) -> bool:
    """Whether an application's response header may be sent as is (no injection)."""
    return bool(_TOKEN.fullmatch(name)) and not _BAD_VALUE.search(value)


_date_cache = [0, b""]


def http_date() -> bytes:
    """The current time as an HTTP date (recomputed at most once a second)."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[1] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
        _date_cache[0] = now
    return _date_cache[1]  # type: ignore[return-value]
