"""Listen addresses: parse and format them, with no I/O.

Accepted forms (see ``ACCEPTED_FORMS``)::

    HOST:PORT   :PORT   [V6]:PORT           TCP; ':PORT' means every IPv4 interface
    tcp://HOST:PORT  tcp4://…  tcp6://…     TCP, optionally pinned to one IP version
    unix:/PATH   unix:@NAME                 a Unix socket path, or a Linux abstract name
    fd://N                                  a listening socket already open as fd N

Any of them may carry a name, ``web=:8000``. A listener's name is how the next generation finds
it again; without one the name is the address text itself.

``parse_address(format_address(a)) == a`` holds for every address, and arbitrary text only ever
raises ``AddressError``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Tuple, Union

from .errors import AddressError

__all__ = [
    "ACCEPTED_FORMS",
    "Address",
    "FdAddress",
    "TCPAddress",
    "UnixAddress",
    "format_address",
    "format_bind",
    "is_valid_name",
    "parse_address",
    "parse_bind",
]

ACCEPTED_FORMS = (
    "HOST:PORT, :PORT, [IPV6]:PORT, tcp://HOST:PORT, tcp4://HOST:PORT, tcp6://[IPV6]:PORT, "
    "unix:/PATH, unix:@ABSTRACT, fd://N, each optionally prefixed by NAME="
)

# sun_path is 108 bytes; keep one for the terminating NUL the kernel may expect.
MAX_UNIX_PATH_BYTES = 107
MAX_FD = 2**31 - 1
MAX_NAME_LENGTH = 255

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?)*\.?\Z"
)
_NUMERIC_HOST = re.compile(r"[0-9.]+\Z")
_FD = re.compile(r"[0-9]{1,10}\Z")


@dataclass(frozen=True)
class TCPAddress:
    """A TCP address. ``host`` is '' for every interface, an IP literal (IPv6 without brackets)
    or a host name; ``version`` is 4 or 6 when the scheme pinned it (tcp4://, tcp6://), else 0."""

    host: str
    port: int
    version: int = 0

    def __str__(self) -> str:
        return format_address(self)


@dataclass(frozen=True)
class UnixAddress:
    """A Unix stream socket: a filesystem ``path``, or a Linux abstract name when ``abstract``."""

    path: str
    abstract: bool = False

    def __str__(self) -> str:
        return format_address(self)


@dataclass(frozen=True)
class FdAddress:
    """A listening socket that is already open as file descriptor ``fd``."""

    fd: int

    def __str__(self) -> str:
        return format_address(self)


Address = Union[TCPAddress, UnixAddress, FdAddress]


def _error(text: object, why: str) -> AddressError:
    return AddressError(f"invalid listen address {text!r}: {why}; accepted forms: {ACCEPTED_FORMS}")


def parse_address(text: str) -> Address:
    """Parse one listen address (without a ``NAME=`` prefix)."""
    if not isinstance(text, str):
        raise _error(text, "expected a string")
    try:
        return _parse(text)
    except _Invalid as exc:
        raise _error(text, str(exc)) from None


class _Invalid(Exception):
    """Why a piece of an address is wrong; the caller names the whole input."""


def _parse(text: str) -> Address:
    if text.startswith("fd://"):
        return _parse_fd(text)
    if text.startswith("unix:"):
        return _parse_unix(text)
    for scheme, version in (("tcp://", 0), ("tcp4://", 4), ("tcp6://", 6)):
        if text.startswith(scheme):
            return _parse_tcp(text[len(scheme):], version)
    if "://" in text:
        raise _Invalid("unknown scheme")
    return _parse_tcp(text, 0)


def _parse_fd(text: str) -> FdAddress:
    digits = text[len("fd://"):]
    if not _FD.match(digits) or int(digits) > MAX_FD:
        raise _Invalid("fd:// needs a file descriptor number such as fd://3")
    return FdAddress(int(digits))


def _parse_unix(text: str) -> UnixAddress:
    rest = text[len("unix:"):]
    abstract = rest.startswith("@")
    if abstract:
        rest = rest[1:]
    elif rest.startswith("///"):  # unix:///tmp/x, the URL spelling of unix:/tmp/x
        rest = rest[2:]
    if not rest:
        raise _Invalid("the socket path is empty")
    if "\0" in rest:
        raise _Invalid("the socket path contains a NUL character")
    size = len(rest.encode("utf-8", "surrogateescape")) + (1 if abstract else 0)
    if size > MAX_UNIX_PATH_BYTES:
        raise _Invalid(f"the socket path is {size} bytes; Unix sockets allow {MAX_UNIX_PATH_BYTES}")
    return UnixAddress(rest, abstract)


def _parse_tcp(hostport: str, version: int) -> TCPAddress:
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0 or hostport[close + 1:close + 2] != ":":
            raise _Invalid("an IPv6 address is written [ADDRESS]:PORT")
        host, port_text = hostport[1:close], hostport[close + 2:]
        _check_ipv6(host, version)
    else:
        host, sep, port_text = hostport.rpartition(":")
        if not sep:
            raise _Invalid("the port is missing (write HOST:PORT or :PORT)")
        if ":" in host:
            raise _Invalid("an IPv6 address must be in brackets, as [::1]:8000")
        _check_host(host, version)
    if not _PORT.match(port_text) or int(port_text) > 65535:
        raise _Invalid(f"port {port_text!r} is not a number from 0 to 65535")
    return TCPAddress(host, int(port_text), version)


def _check_ipv6(host: str, version: int) -> None:
    if version == 4:
        raise _Invalid("tcp4:// cannot take an IPv6 address")
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise _Invalid(f"{host!r} is not an IPv6 address") from None


def _check_host(host: str, version: int) -> None:
    if host == "":
        return
    if _NUMERIC_HOST.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _Invalid(f"{host!r} is not an IPv4 address") from None
        if version == 6:
            raise _Invalid("tcp6:// cannot take an IPv4 address")
        return
    if not _HOSTNAME.match(host):
        raise _Invalid(f"{host!r} is not a host name or IP address")


def format_address(address: Address) -> str:
    """The canonical text of an address; ``parse_address`` reads it back unchanged."""
    if isinstance(address, FdAddress):
        return f"fd://{address.fd}"
    if isinstance(address, UnixAddress):
        if address.abstract:
            return f"unix:@{address.path}"
        if address.path.startswith(("@", "///")):
            # unix:@x means the abstract name x; unix:///x means /x.
            raise AddressError(f"the socket path {address.path!r} cannot be written as an "
                               f"address; write it as ./{address.path}")
        return f"unix:{address.path}"
    if isinstance(address, TCPAddress):
        host = f"[{address.host}]" if ":" in address.host else address.host
        scheme = {0: "", 4: "tcp4://", 6: "tcp6://"}[address.version]
        return f"{scheme}{host}:{address.port}"
    raise TypeError(f"not an address: {address!r}")


def is_valid_name(name: str) -> bool:
    """Whether ``name`` may be written as the ``NAME=`` prefix of a bind spec."""
    return len(name) <= MAX_NAME_LENGTH and bool(_NAME.match(name))


def parse_bind(text: str) -> Tuple[str, Address]:
    """Parse ``[NAME=]ADDRESS`` into (name, address); the default name is the address text."""
    if not isinstance(text, str):
        raise _error(text, "expected a string")
    name, sep, rest = text.partition("=")
    try:
        if sep and is_valid_name(name):
            return name, _parse(rest)
        address = _parse(text)
    except _Invalid as exc:
        raise _error(text, str(exc)) from None
    return format_address(address), address


def format_bind(name: str, address: Address) -> str:
    """The text ``parse_bind`` reads back as (name, address)."""
    text = format_address(address)
    if name == text:
        return text
    if not is_valid_name(name):
        raise AddressError(
            f"invalid listener name {name!r}: use letters, digits, '_', '.' and '-' "
            f"(at most {MAX_NAME_LENGTH} characters, not starting with '.' or '-')"
        )
    return f"{name}={text}"
