"""Which peers may tell us about a connection's real client: an allow-list of addresses.

Forwarded headers (``X-Forwarded-For``, ``Forwarded``) and PROXY protocol headers are believed
only when the connection comes from a peer on such a list; from anyone else they change nothing.
The list is text, a comma-separated list of:

    127.0.0.1          one IPv4 address
    ::1                one IPv6 address (brackets are allowed: [::1])
    10.0.0.0/8         an IPv4 or IPv6 network (CIDR; the address must be the network's own)
    unix               every peer on a Unix socket (such a socket is guarded by file
                       permissions, and its peers have no address to check)
    *                  every peer, Unix sockets included

The default, ``127.0.0.1,::1,unix``, trusts loopback and Unix sockets: a proxy on the same
host. An empty list trusts no one. Host names are refused rather than resolved: trust that
changes with DNS is not trust. An IPv4-mapped IPv6 peer (``::ffff:10.1.2.3``, what a dual-stack
listener reports for an IPv4 client) is checked as the IPv4 address it carries.

Uvicorn and gunicorn call this ``--forwarded-allow-ips`` and read ``FORWARDED_ALLOW_IPS`` from
the environment; ``allow_list_text`` gives that precedence (command line, then environment, then
the default).
"""

from __future__ import annotations

import ipaddress
from typing import Dict, List, Mapping, Optional, Union

from ..errors import GracefulError

__all__ = ["Trust", "TrustListError", "parse_trust", "allow_list_text", "DEFAULT_ALLOW",
           "ENV_FORWARDED_ALLOW_IPS", "UNIX"]

DEFAULT_ALLOW = "127.0.0.1,::1,unix"
ENV_FORWARDED_ALLOW_IPS = "FORWARDED_ALLOW_IPS"
UNIX = "unix"  # the token for peers on Unix sockets

_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
_Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class TrustListError(GracefulError, ValueError):
    """An allow-list entry that is not an address, a network, ``unix`` or ``*``."""


class Trust:
    """A parsed allow-list; ``trusts(peer)`` says whether a peer may speak for its clients."""

    __slots__ = ("text", "everyone", "unix", "_networks", "_known")

    def __init__(self, networks: List[_Network], unix: bool, everyone: bool, text: str) -> None:
        self.text = text
        self.everyone = everyone
        self.unix = unix or everyone
        self._networks = tuple(networks)
        # Answers for peers seen before: parsing an address costs more than the rest of a
        # request's origin. Bounded, since header text (X-Forwarded-For hops) is asked too.
        self._known: Dict[str, bool] = {}

    def trusts(self, peer: Optional[str]) -> bool:
        """Whether ``peer`` is on the list: an IPv4 or IPv6 address text, or None or "" for a
        Unix socket peer. Anything that is not an address is simply not trusted (never an
        error): this is called on text from request headers."""
        if self.everyone:
            return True
        if not peer:
            return self.unix
        if not isinstance(peer, str):
            return False  # ip_address() would read 4 or 16 bytes as a packed address
        known = self._known.get(peer)
        if known is None:
            known = any(address in network for address in _addresses(peer)
                        for network in self._networks if network.version == address.version)
            if len(self._known) < _KNOWN_PEERS:
                self._known[peer] = known
        return known

    def __repr__(self) -> str:
        return f"Trust({self.text!r})"


_KNOWN_PEERS = 4096


def parse_trust(text: str) -> Trust:
    """The allow-list in ``text`` (see the module docstring); an entry that is none of the
    accepted forms raises ``TrustListError`` naming it."""
    networks: List[_Network] = []
    unix = everyone = False
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue  # "a,,b" and a trailing comma are harmless
        if entry == "*":
            everyone = True
        elif entry.lower() == UNIX:
            unix = True
        else:
            networks.append(_parse_network(entry))
    return Trust(networks, unix, everyone, text)


def allow_list_text(given: Optional[str], environ: Mapping[str, str],
                    variable: str = ENV_FORWARDED_ALLOW_IPS) -> str:
    """The allow-list to use: ``given`` (the command line) if not None, else the environment
    variable if set, else ``DEFAULT_ALLOW``."""
    if given is not None:
        return given
    return environ.get(variable, DEFAULT_ALLOW)


def _parse_network(entry: str) -> _Network:
    text = entry[1:-1] if entry[:1] == "[" and entry[-1:] == "]" else entry
    if "%" in text:
        raise TrustListError(f"allow-list entry {entry!r} has a zone (%...); "
                             "write the address or network without it")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise TrustListError(f"allow-list entry {entry!r} is not an IP address, a network "
                             f"(10.0.0.0/8), {UNIX!r} or '*' (host names are not "
                             "resolved)") from None
    raise TrustListError(f"allow-list entry {entry!r} is not a network's own address; "
                         f"did you mean {network}?")


def _addresses(text: str) -> List[_Address]:
    """The addresses a peer text stands for: none if it is not an address, and for an
    IPv4-mapped IPv6 address both forms (a list may name either)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return []
    if address.version == 4:
        return [address]
    if address.scope_id:  # type: ignore[union-attr]
        # fe80::1%eth0: the zone says which link; the list names the address
        address = ipaddress.IPv6Address(text.split("%", 1)[0])
    mapped = address.ipv4_mapped  # type: ignore[union-attr]
    return [address] if mapped is None else [mapped, address]
