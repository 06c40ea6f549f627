"""HTTP/1.1 request parsing and response framing, without any I/O (the sans-IO core).

A server feeds received bytes to a ``RequestParser`` and pulls events from it::

    parser = RequestParser()
    parser.feed(data)
    event = parser.next_event()   # Request, Body(data), EndOfMessage(trailers), or NEED_DATA

After ``EndOfMessage`` the server answers, then calls ``parser.start_next()`` to parse the next
request on the connection (pipelined bytes already fed are kept). Anything malformed raises
``HTTPError`` with the status to answer (400, 413, 414, 417, 431, 501, 505); the connection must
then be closed, because its framing can no longer be trusted.

Framing is strict, against request smuggling: Content-Length together with Transfer-Encoding,
a repeated or non-numeric Content-Length, a transfer coding other than a final ``chunked``,
bad chunk sizes, obs-fold, whitespace before a header's colon, control characters, bare CR or
LF line ends, and a missing or repeated Host in HTTP/1.1 are all rejected.
"""

from __future__ import annotations

import re
import time
from typing import Dict, List, Optional, Tuple, Union

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
    """A parsed request head."""

    __slots__ = ("method", "target", "path", "query", "version", "headers", "keep_alive",
                 "expect_continue", "content_length", "chunked", "upgrade")

    def __init__(self, method: bytes, target: bytes, path: bytes, query: bytes, version: bytes,
                 headers: Headers, keep_alive: bool, expect_continue: bool,
                 content_length: Optional[int], chunked: bool) -> None:
        self.method = method
        self.target = target
        self.path = path  # still percent-encoded
        self.query = query
        self.version = version  # b"1.1" or b"1.0"
        self.headers = headers  # names lower-cased, in order, repeats kept
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.content_length = content_length  # None when chunked or no body
        self.chunked = chunked
        self.upgrade: Optional[bytes] = None  # the Upgrade header, lower-cased, if any

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

# RFC 9110 token characters, and field values: visible ASCII, obs-text, space and tab.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(rb"[0-9]{1,18}")

# Bytes never allowed in a request head (CR and LF are checked as line ends; tab is allowed).
_BAD_HEAD_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]").search
_COMMON_METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"))

_HEAD, _BODY_LENGTH, _BODY_CHUNKED, _DONE = range(4)
_MAX_CHUNK_LINE = 4096


class RequestParser:
    """Parses requests from one connection; see the module docstring."""

    def __init__(self, limits: Optional[Limits] = None) -> None:
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._state = _HEAD
        self._left = 0  # bytes left in the current Content-Length body or chunk
        self._chunk_crlf = False  # a chunk's data is done; its CRLF is next
        self._body_seen = 0
        self.request: Optional[Request] = None

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
        self.request = None

    # -- events --------------------------------------------------------------------------------

    def next_event(self) -> Event:
        state = self._state
        if state == _HEAD:
            return self._parse_head()
        if state == _BODY_LENGTH:
            return self._length_body()
        if state == _BODY_CHUNKED:
            return self._chunked_body()
        return NEED_DATA  # _DONE: waiting for start_next()

    def _parse_head(self) -> Event:
        buf = self._buf
        # Tolerate empty lines before a request (RFC 9112 2.2): some clients send a stray CRLF
        # after a POST body.
        while buf[:2] == b"\r\n":
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self._check_incomplete_head()
            return NEED_DATA
        limits = self.limits
        if end + 4 > limits.max_header_bytes + limits.max_request_line:
            raise HTTPError(431, "request head too large")
        head = bytes(buf[:end])
        del buf[:end + 4]
        request = _parse_request_head(head, limits)
        self.request = request
        self._body_seen = 0
        if request.chunked:
            self._state = _BODY_CHUNKED
            self._left = 0
            self._chunk_crlf = False
        elif request.content_length:
            self._state = _BODY_LENGTH
            self._left = request.content_length
        else:
            self._state = _BODY_LENGTH
            self._left = 0
        return request

    def _check_incomplete_head(self) -> None:
        buf = self._buf
        limits = self.limits
        line_end = buf.find(b"\r\n")
        if line_end < 0:
            if len(buf) > limits.max_request_line:
                raise HTTPError(414 if b" " in buf[:64] else 400, "request line too long")
        elif len(buf) > limits.max_header_bytes + limits.max_request_line:
            raise HTTPError(431, "request header fields too large")

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
            if self._left:
                if not buf:
                    return NEED_DATA
                body = self._take_body()
                if self._left == 0:
                    self._chunk_crlf = True
                return body
            if self._chunk_crlf:
                if len(buf) < 2:
                    return NEED_DATA
                if buf[:2] != b"\r\n":
                    raise HTTPError(400, "chunk data not followed by CRLF")
                del buf[:2]
                self._chunk_crlf = False
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if len(buf) > _MAX_CHUNK_LINE:
                    raise HTTPError(400, "chunk size line too long")
                return NEED_DATA
            line = bytes(buf[:line_end])
            size_text = line.split(b";", 1)[0].rstrip(b" \t")
            if not _HEX.fullmatch(size_text) or _BAD_VALUE.search(line):
                raise HTTPError(400, f"bad chunk size {line[:40]!r}")
            size = int(size_text, 16)
            if size == 0:
                return self._trailers(line_end)
            self._body_seen += size
            max_body = self.limits.max_body
            if max_body is not None and self._body_seen > max_body:
                raise HTTPError(413, f"body larger than {max_body} bytes")
            del buf[:line_end + 2]
            self._left = size

    def _trailers(self, line_end: int) -> Event:
        buf = self._buf
        start = line_end + 2
        if buf[start:start + 2] == b"\r\n":
            del buf[:start + 2]
            self._state = _DONE
            return EndOfMessage()
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buf) - start > self.limits.max_header_bytes:
                raise HTTPError(431, "trailer fields too large")
            return NEED_DATA
        block = bytes(buf[start:end])
        del buf[:end + 4]
        trailers = _parse_fields(block.split(b"\r\n"), self.limits)
        self._state = _DONE
        return EndOfMessage(trailers)


def _parse_request_head(head: bytes, limits: Limits) -> Request:
    lines = head.split(b"\r\n")
    request_line = lines[0]
    if len(request_line) > limits.max_request_line:
        raise HTTPError(414, "request line too long")
    breaks = len(lines) - 1
    if head.count(b"\r") != breaks or head.count(b"\n") != breaks:
        raise HTTPError(400, "bare CR or LF in the request head")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise HTTPError(400, f"malformed request line {request_line[:100]!r}")
    method, target, version_text = parts
    if method not in _COMMON_METHODS and not _TOKEN.fullmatch(method):
        raise HTTPError(400, f"bad method {method[:40]!r}")
    if not _TARGET.fullmatch(target):
        raise HTTPError(400, f"bad request target {target[:100]!r}")
    if version_text == b"HTTP/1.1":
        version = b"1.1"
    elif version_text == b"HTTP/1.0":
        version = b"1.0"
    elif re.fullmatch(rb"HTTP/[0-9]\.[0-9]", version_text):
        raise HTTPError(505, f"unsupported version {version_text!r}")
    else:
        raise HTTPError(400, f"bad version {version_text[:20]!r}")
    if len(lines) - 1 > limits.max_headers:
        raise HTTPError(431, f"more than {limits.max_headers} header fields")
    if len(head) - len(request_line) > limits.max_header_bytes:
        raise HTTPError(431, "request header fields too large")
    if _BAD_HEAD_BYTE(head):
        raise HTTPError(400, "control character in the request head")
    headers = _parse_fields(lines[1:], limits, checked=True)
    if method == b"CONNECT":
        raise HTTPError(501, "CONNECT is not supported")
    path, query = _split_target(target, method)
    return _frame(method, target, path, query, version, headers, limits)


def _parse_fields(lines: List[bytes], limits: Limits, checked: bool = False) -> Headers:
    """Header (or trailer) lines; ``checked``: the caller already refused control bytes."""
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
            lower = name.lower()
            if len(names) < 4096:  # names repeat from request to request: remember valid ones
                names[name] = lower
        value = value.strip(b" \t")
        if not checked and _BAD_VALUE.search(value):
            raise HTTPError(400, f"control character in header {name[:40]!r}")
        headers.append((lower, value))
    return headers


_known_names: Dict[bytes, bytes] = {}


def _split_target(target: bytes, method: bytes) -> Tuple[bytes, bytes]:
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
    elif target == b"*" and method == b"OPTIONS":
        return b"*", b""
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        path, _, query = (rest[slash:] if slash >= 0 else b"/").partition(b"?")
        if slash < 0 and b"?" in rest:
            path, query = b"/", rest.split(b"?", 1)[1]
    else:
        raise HTTPError(400, f"bad request target {target[:100]!r}")
    path = path.split(b"#", 1)[0]
    return path, query


def _frame(method: bytes, target: bytes, path: bytes, query: bytes, version: bytes,
           headers: Headers, limits: Limits) -> Request:
    content_length: Optional[int] = None
    transfer_encoding: Optional[bytes] = None
    connection = b""
    expect: Optional[bytes] = None
    upgrade: Optional[bytes] = None
    hosts = 0
    for name, value in headers:
        if name == b"content-length":
            if content_length is not None:
                raise HTTPError(400, "repeated Content-Length")
            if not _DIGITS.fullmatch(value):
                raise HTTPError(400, f"bad Content-Length {value[:40]!r}")
            content_length = int(value)
        elif name == b"transfer-encoding":
            if transfer_encoding is not None:
                transfer_encoding += b"," + value
            else:
                transfer_encoding = value
        elif name == b"connection":
            connection += b"," + value.lower()
        elif name == b"host":
            hosts += 1
        elif name == b"expect":
            expect = value.lower()
        elif name == b"upgrade":
            upgrade = value.lower()
    chunked = False
    if transfer_encoding is not None:
        if content_length is not None:
            raise HTTPError(400, "both Content-Length and Transfer-Encoding")
        if version == b"1.0":
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = [c.strip(b" \t").lower() for c in transfer_encoding.split(b",")]
        if codings != [b"chunked"]:
            raise HTTPError(501, f"unsupported Transfer-Encoding {transfer_encoding[:60]!r}")
        chunked = True
    if content_length is not None and limits.max_body is not None and content_length > limits.max_body:
        raise HTTPError(413, f"body larger than {limits.max_body} bytes")
    if version == b"1.1" and hosts != 1:
        raise HTTPError(400, "HTTP/1.1 needs exactly one Host header")
    tokens = {t.strip(b" \t") for t in connection.split(b",")} if connection else set()
    keep_alive = b"close" not in tokens if version == b"1.1" else b"keep-alive" in tokens
    expect_continue = False
    if expect is not None:
        if expect != b"100-continue":
            raise HTTPError(417, f"unsupported Expect {expect[:40]!r}")
        expect_continue = version == b"1.1" and (chunked or bool(content_length))
    request = Request(method, target, path, query, version, headers, keep_alive, expect_continue,
                      content_length, chunked)
    request.upgrade = upgrade
    return request


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
    headers = list(headers)
    chunked = False
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    elif not no_body_expected(request.method, status):
        if body_length is not None:
            length = body_length
            headers.append((b"content-length", b"%d" % length))
        elif request.version == b"1.1":
            chunked = True
            headers.append((b"transfer-encoding", b"chunked"))
        else:
            keep_alive = False  # an HTTP/1.0 body without a length ends at the close
    if draining:
        keep_alive = False
    if not keep_alive:
        headers.append((b"connection", b"close"))
    elif request.version == b"1.0":
        headers.append((b"connection", b"keep-alive"))
    headers.append((b"date", http_date()))
    return response_head(status_text, headers), length, chunked, keep_alive


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
            b"Content-Length: %d\r\n%s\r\n%s"
            % (status, reason, len(body), b"" if keep_alive else b"Connection: close\r\n", body))


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
