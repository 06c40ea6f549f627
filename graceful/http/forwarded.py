"""Who the client really is behind a proxy: forwarded headers, believed only from trusted peers
(no I/O here).

``resolve(peer, headers, scheme=..., server=..., trust=...)`` returns an ``Origin``: the client
address, URL scheme, Host and server (name, port) a WSGI environ (``REMOTE_ADDR``,
``wsgi.url_scheme``, ``HTTP_HOST``, ``SERVER_NAME``/``SERVER_PORT``) or an ASGI scope
(``client``, ``scheme``, ``server``) should show. When the peer is not trusted (see
``graceful.http.trust``) the result is the connection's own values and the headers are merely
passed on to the application like any other.

From a trusted peer, one family of headers is read, never a mix:

* ``X-Forwarded-For``/``-Proto``/``-Host``/``-Port`` when any of them is present (what nginx,
  HAProxy ``option forwardfor``, AWS ALB, Traefik and Caddy send, and what uvicorn and gunicorn
  read). A proxy that sets only some of them must remove the others from what clients send:
  whatever it passes through unchanged is the client's word.
* otherwise RFC 7239 ``Forwarded``. It is not preferred when both are present because the common
  proxies above pass a client's ``Forwarded`` through untouched while they append to
  ``X-Forwarded-For``: preferring it would let any client choose its own address.

``X-Forwarded-For`` (every line, joined) is walked from the right: each hop was appended by the
proxy it reached, and the first hop that is not itself trusted is the client. When every hop is
trusted, the leftmost is. ``-Proto``, ``-Host`` and ``-Port`` lists are read at the same
position when they have as many entries as ``-For`` (each proxy appended one of each), else
their rightmost entry (the one our peer wrote) counts. ``Forwarded`` elements are walked the
same way by their ``for=``, and the chosen element's ``proto=`` and ``host=`` count with it
(``by=`` is not used: it names a proxy, not the client).

What the client address becomes: an IPv4 or IPv6 address (with a port when one was given, else
0). A hop that is not an address (``unknown``, an obfuscated ``_name``, garbage, a malformed
``Forwarded``) makes the client unknown, ``None``, like a Unix-socket peer: it is never the
proxy's own address, which an application could take for "local" and trust. Schemes are
``http``, ``https``, ``ws`` and ``wss`` (mapped to the request kind); a host must be an RFC 3986
authority (host and optional port 1-65535), a port 1-65535; anything else is ignored. Nothing
in any header raises.

Root path (``--root-path``): ``split_root_path`` splits a request path under the root where the
application is mounted, for WSGI ``SCRIPT_NAME``/``PATH_INFO`` and ASGI ``root_path`` (whose
``path`` includes the root, per the ASGI spec). The proxy forwards the full path; a path not
under the root is given to the application whole, with an empty root, so the URL it
reconstructs is the one requested. ``X-Forwarded-Prefix`` is deliberately not read: of the
common proxies only a few set it (Traefik's StripPrefix), so behind the others it arrives from
the client untouched, even from a trusted peer, and an application puts it into every URL it
generates (redirects, links): a client could point them at another site. The prefix is
configuration, so it is given by ``--root-path``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

from ..errors import GracefulError
from .trust import Trust

__all__ = ["Origin", "resolve", "split_root_path", "parse_root_path", "RootPathError"]

Headers = List[Tuple[bytes, bytes]]  # as graceful.http11.Request.headers: names lower-case
Client = Optional[Tuple[str, int]]  # None: unknown (a Unix socket, or hidden by a proxy)
Peer = Union[Tuple[Any, ...], str, bytes, None]
Server = Optional[Tuple[str, Optional[int]]]  # (name, port); a Unix listener: (path, None)

_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_WEBSOCKET = {"http": "ws", "https": "wss"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_X_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                b"x-forwarded-port")

# RFC 3986 authority without userinfo: IP-literal (IPv6 only) / IPv4address / reg-name, then
# an optional port. reg-name = *( unreserved / pct-encoded / sub-delims ), not empty here.
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_PORT = re.compile(r"[0-9]{1,5}")
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._\-]+")
# RFC 7239 / RFC 9110: token, and quoted-string with its quoted-pairs.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED = re.compile(r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x09\x20-\x7e\x80-\xff])*)"')
_OWS = re.compile(r"[ \t]*")
# The root path is compared with the decoded request path, so it is given decoded, and
# ASCII so the WSGI (latin-1) and ASGI (UTF-8) decodings of a path agree on it.
_ROOT_PATH = re.compile(r"[\x21\x22\x24\x26-\x3e\x40-\x7e]+")  # no space % ? #


class Origin(NamedTuple):
    """What the application should see as the request's origin (see the module docstring)."""

    client: Client
    scheme: str
    host: Optional[str]  # the Host header value to show (HTTP_HOST), None if there is none
    server: Server
    trusted: bool  # the peer was trusted, so the forwarded headers (if any) were read


def resolve(peer: Peer, headers: Headers, *, scheme: str, server: Server, trust: Trust,
            websocket: bool = False) -> Origin:
    """The request's origin. ``peer`` is the connection's (host, port) (or what ``accept()``
    returned: 4 fields for IPv6; "", bytes or None for a Unix socket);
    ``scheme`` and ``server`` are the listener's; ``websocket`` maps the scheme to ws/wss."""
    peer = _host_port(peer)
    host = _header(headers, b"host")
    base = Origin(peer, _request_scheme(scheme, websocket), host, server, False)
    if not trust.trusts(None if peer is None else peer[0]):
        return base
    base = base._replace(trusted=True)
    if any(name in _X_FORWARDED for name, _ in headers):
        origin = _from_x_forwarded(base, headers, trust)
    elif any(name == b"forwarded" for name, _ in headers):
        origin = _from_forwarded(base, headers, trust)
    else:
        return base
    return origin._replace(scheme=_request_scheme(origin.scheme, websocket))


# -- X-Forwarded-* ------------------------------------------------------------------------------

def _from_x_forwarded(base: Origin, headers: Headers, trust: Trust) -> Origin:
    hops = _list(headers, b"x-forwarded-for")
    origin = base
    index = len(hops) - 1
    if hops:
        nodes = [_node(hop) for hop in hops]
        index = _client_index(nodes, trust)
        origin = origin._replace(client=nodes[index])
    proto = _aligned(_list(headers, b"x-forwarded-proto"), len(hops), index)
    origin = _with_scheme(origin, proto)
    host = _aligned(_list(headers, b"x-forwarded-host"), len(hops), index)
    origin = _with_host(origin, host)
    port = _aligned(_list(headers, b"x-forwarded-port"), len(hops), index)
    return _with_port(origin, port)


def _aligned(values: List[str], hops: int, index: int) -> Optional[str]:
    """The entry that goes with hop ``index``, if each hop has one; else our peer's (the
    rightmost)."""
    if not values:
        return None
    if len(values) == hops:
        return values[index]
    return values[-1]


# -- Forwarded (RFC 7239) -----------------------------------------------------------------------

def _from_forwarded(base: Origin, headers: Headers, trust: Trust) -> Origin:
    elements: List[Optional[Dict[str, str]]] = []
    for name, value in headers:
        if name == b"forwarded":
            elements += _forwarded_elements(value.decode("latin-1"))
    if not elements:
        return base
    nodes = [None if element is None else _node(element.get("for", "")) for element in elements]
    index = _client_index(nodes, trust)
    element = elements[index]
    origin = base._replace(client=nodes[index])
    if element is None:
        return origin  # a malformed element: its proto and host cannot be read either
    return _with_host(_with_scheme(origin, element.get("proto")), element.get("host"))


def _forwarded_elements(line: str) -> List[Optional[Dict[str, str]]]:
    """The elements of one Forwarded line, each a dict of lower-case parameter names; a line
    that does not parse is one element, None (unknown), so the walk stops there."""
    elements: List[Optional[Dict[str, str]]] = []
    element: Dict[str, str] = {}
    at = _OWS.match(line).end()  # type: ignore[union-attr]
    end = len(line)
    while at < end:
        char = line[at]
        if char in ",;":
            if char == ",":
                elements.append(element)
                element = {}
            at = _OWS.match(line, at + 1).end()  # type: ignore[union-attr]
            continue
        pair = _forwarded_pair(line, at)
        if pair is None:
            return [None]
        name, value, at = pair
        if name in element:
            return [None]  # RFC 7239 4: a parameter occurs at most once per element
        element[name] = value
        at = _OWS.match(line, at).end()  # type: ignore[union-attr]
        if at < end and line[at] not in ",;":
            return [None]
    elements.append(element)
    return [e for e in elements if e]  # empty elements (", ,") are allowed and say nothing


def _forwarded_pair(line: str, at: int) -> Optional[Tuple[str, str, int]]:
    name = _TOKEN.match(line, at)
    if name is None or line[name.end():name.end() + 1] != "=":
        return None
    at = name.end() + 1
    token = _TOKEN.match(line, at)
    if token is not None:
        return name.group().lower(), token.group(), token.end()
    quoted = _QUOTED.match(line, at)
    if quoted is None:
        return None
    value = re.sub(r"\\(.)", r"\1", quoted.group(1))
    return name.group().lower(), value, quoted.end()


# -- the pieces ---------------------------------------------------------------------------------

def _client_index(nodes: List[Client], trust: Trust) -> int:
    """Walk from the right past trusted hops; the first other one is the client."""
    for index in range(len(nodes) - 1, -1, -1):
        node = nodes[index]
        if node is None or not trust.trusts(node[0]):
            return index
    return 0


def _node(text: str) -> Client:
    """An address with an optional port ("192.0.2.1", "192.0.2.1:80", "2001:db8::1",
    "[2001:db8::1]:80"); None for "unknown", an obfuscated name, or anything else."""
    if text[:1] == "[":
        address, bracket, port = text[1:].partition("]")
        if not bracket or (port and port[:1] != ":"):
            return None
        return _address_port(address, port[1:] if port else None, version=6)
    if text.count(":") == 1:
        address, _, port = text.partition(":")
        return _address_port(address, port, version=4)
    return _address_port(text, None, version=None)


def _address_port(address: str, port: Optional[str], version: Optional[int]) -> Client:
    if "%" in address:
        return None  # a zone means nothing beyond the proxy's host
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if version is not None and ip.version != version:
        return None
    if port is None or _OBFUSCATED.fullmatch(port):
        return (str(ip), 0)
    number = _port(port)
    return None if number is None else (str(ip), number)


def _port(text: Optional[str]) -> Optional[int]:
    if text is None or not _PORT.fullmatch(text):
        return None
    number = int(text)
    return number if 1 <= number <= 65535 else None


def _with_scheme(origin: Origin, proto: Optional[str]) -> Origin:
    scheme = _SCHEMES.get((proto or "").strip().lower())
    return origin if scheme is None else origin._replace(scheme=scheme)


def _with_host(origin: Origin, text: Optional[str]) -> Origin:
    authority = _authority(text.strip()) if text else None
    if authority is None:
        return origin
    name, port = authority
    if port is None:
        port = _DEFAULT_PORTS.get(_SCHEMES.get(origin.scheme, origin.scheme), 80)
    return origin._replace(host=text.strip(), server=(name, port))  # type: ignore[union-attr]


def _with_port(origin: Origin, text: Optional[str]) -> Origin:
    port = _port(text.strip()) if text else None
    if port is None:
        return origin
    name = None
    if origin.host is not None:
        authority = _authority(origin.host)
        if authority is not None:
            name = authority[0]
    if name is None:
        name = origin.server[0] if origin.server else ""
        return origin._replace(server=(name, port))
    scheme = _SCHEMES.get(origin.scheme, origin.scheme)
    shown = f"[{name}]" if ":" in name else name
    if port != _DEFAULT_PORTS.get(scheme):
        shown = f"{shown}:{port}"
    return origin._replace(host=shown, server=(name, port))


def _authority(text: str) -> Optional[Tuple[str, Optional[int]]]:
    """(host, port or None) of an RFC 3986 authority without userinfo, else None. An IPv6
    literal's host is given without its brackets."""
    if len(text) > 300:
        return None
    if text[:1] == "[":
        literal, bracket, rest = text[1:].partition("]")
        if not bracket or "%" in literal:
            return None
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        name = literal
    else:
        name = text.split(":", 1)[0]
        rest = text[len(name):]
        if not _REG_NAME.fullmatch(name):
            return None
    if not rest:
        return name, None
    port = _port(rest[1:]) if rest[:1] == ":" else None
    return None if port is None else (name, port)


def _host_port(peer: Peer) -> Client:
    """(host, port) of a peer as ``accept()`` gives it (an IPv6 peer has 4 fields); None for
    anything else (a Unix socket peer is "" or bytes)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return None


def _request_scheme(scheme: str, websocket: bool) -> str:
    base = _SCHEMES.get(scheme, scheme)
    return _WEBSOCKET.get(base, base) if websocket else base


def _header(headers: Headers, name: bytes) -> Optional[str]:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _list(headers: Headers, name: bytes) -> List[str]:
    """Every comma-separated entry of every ``name`` line, in order, empty ones dropped."""
    entries: List[str] = []
    for key, value in headers:
        if key == name:
            entries += (entry.strip(" \t") for entry in value.decode("latin-1").split(","))
    return [entry for entry in entries if entry]


# -- root path ----------------------------------------------------------------------------------

class RootPathError(GracefulError, ValueError):
    """A ``--root-path`` that is not an absolute URL path."""


def parse_root_path(text: str) -> str:
    """A root path as ``split_root_path`` wants it: "" or "/a/b" (no trailing slash).
    Raises ``RootPathError`` naming the value when it is not an absolute path."""
    if text in ("", "/"):
        return ""
    if text[:1] != "/" or not _ROOT_PATH.fullmatch(text):
        raise RootPathError(f"root path {text!r} must be an absolute URL path such as /api: "
                            "starting with /, printable ASCII, without space, %, ? or #")
    return text.rstrip("/")


def split_root_path(path: str, root_path: str) -> Tuple[str, str]:
    """(root, rest) for a request ``path`` under ``root_path`` (from ``parse_root_path``):
    WSGI ``SCRIPT_NAME`` and ``PATH_INFO``; ASGI ``root_path`` is the first and ``path`` stays
    the whole ``path``. Only whole segments match ("/api" is not the root of "/apix"); a path
    outside the root gives ("", path)."""
    if not root_path:
        return "", path
    if path == root_path or path.startswith(root_path + "/"):
        return root_path, path[len(root_path):]
    return "", path
