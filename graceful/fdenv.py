"""The ``GRACEFUL_FDS`` codec: which inherited file descriptor carries which named listener.

Format: comma-separated ``NAME=FD`` entries, for example ``web=3,admin=4``. A name may be any
non-empty string: bytes outside ``A-Z a-z 0-9 _ . - : / @ [ ]`` are percent-encoded as UTF-8, so
``:8000`` stays readable and ``a,b`` becomes ``a%2Cb``. An empty value means no listeners.
Pure: no I/O; ``decode_fds(encode_fds(m)) == m`` for every mapping it accepts.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping

from .errors import ListenerError

__all__ = ["ENV_FDS", "decode_fds", "encode_fds"]

ENV_FDS = "GRACEFUL_FDS"

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-:/@[]")
_FD = re.compile(r"[0-9]{1,10}\Z")
_MAX_FD = 2**31 - 1


def _quote(name: str) -> str:
    raw = name.encode("utf-8", "surrogatepass")
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)


def _unquote(text: str, value: str) -> str:
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%":
            pair = text[i + 1:i + 3]
            if len(pair) != 2 or not all(h in "0123456789abcdefABCDEF" for h in pair):
                raise _error(value, f"bad percent escape in name {text!r}")
            out.append(int(pair, 16))
            i += 3
        elif ord(c) < 128 and ord(c) in _SAFE:
            out.append(ord(c))
            i += 1
        else:
            raise _error(value, f"character {c!r} must be percent-encoded in name {text!r}")
    try:
        return out.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise _error(value, f"name {text!r} is not UTF-8 once decoded") from None


def _error(value: str, why: str) -> ListenerError:
    return ListenerError(
        f"invalid {ENV_FDS}={value!r}: {why}; expected NAME=FD entries separated by commas, "
        f"such as 'web=3,admin=4' (unset the variable if no listeners are inherited)"
    )


def encode_fds(fds: Mapping[str, int]) -> str:
    """Encode a name → fd mapping for the environment of the next generation."""
    entries = []
    for name, fd in fds.items():
        if not name:
            raise ValueError("a listener name must not be empty")
        if not 0 <= fd <= _MAX_FD:
            raise ValueError(f"not a file descriptor: {fd!r}")
        entries.append(f"{_quote(name)}={fd}")
    return ",".join(entries)


def decode_fds(value: str) -> Dict[str, int]:
    """Decode ``GRACEFUL_FDS``; garbage raises ``ListenerError`` naming the value."""
    fds: Dict[str, int] = {}
    if value == "":
        return fds
    seen_fds = set()
    for entry in value.split(","):
        quoted, sep, fd_text = entry.rpartition("=")
        if not sep or not quoted:
            raise _error(value, f"entry {entry!r} is not NAME=FD")
        if not _FD.match(fd_text) or int(fd_text) > _MAX_FD:
            raise _error(value, f"{fd_text!r} in entry {entry!r} is not a file descriptor number")
        name, fd = _unquote(quoted, value), int(fd_text)
        if name in fds:
            raise _error(value, f"name {name!r} appears twice")
        if fd in seen_fds:
            raise _error(value, f"fd {fd} appears twice")
        fds[name] = fd
        seen_fds.add(fd)
    return fds
