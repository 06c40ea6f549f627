"""graceful: restart, upgrade or move a server to new code without failing a single request.

The public API is re-exported here and imported lazily, so ``import graceful`` stays cheap for
programs that use one piece of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "GracefulError": "errors",
    "AddressError": "errors",
    "ListenerError": "errors",
    "PidfileError": "errors",
    "SignalError": "errors",
    "Address": "addresses",
    "TCPAddress": "addresses",
    "UnixAddress": "addresses",
    "FdAddress": "addresses",
    "parse_address": "addresses",
    "parse_bind": "addresses",
    "format_address": "addresses",
    "Listeners": "listeners",
    "bind": "listeners",
    "Pidfile": "pidfile",
    "read_pid": "pidfile",
    "SignalDispatcher": "signals",
    "Upgrader": "upgrader",
    "UpgradeError": "upgrader",
    "Lifecycle": "drain",
    "serve_socketserver": "socketserver_adapter",
    "AsyncioDrain": "asyncio_adapter",
    "WSGIServer": "wsgi",
    "ASGIServer": "asgi",
    "ServerOptions": "_options",
    "Limits": "http11",
    "Master": "master",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'graceful' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .addresses import (Address, FdAddress, TCPAddress, UnixAddress, format_address,
                            parse_address, parse_bind)
    from .errors import AddressError, GracefulError, ListenerError, PidfileError, SignalError
    from .listeners import Listeners, bind
    from .pidfile import Pidfile, read_pid
    from .signals import SignalDispatcher
    from .socketserver_adapter import serve_socketserver
    from .asyncio_adapter import AsyncioDrain
    from .drain import Lifecycle
    from .upgrader import Upgrader, UpgradeError
    from .wsgi import WSGIServer
    from .asgi import ASGIServer
    from ._options import ServerOptions
    from .http11 import Limits
    from .master import Master
