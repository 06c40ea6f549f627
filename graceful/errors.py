"""The exceptions graceful raises on purpose.

Every error a user can cause (a bad address, garbage in an inherited environment variable, a
pidfile held by a live process) is one of these, with a message that names the input and says
how to fix it. Anything else escaping from graceful is a bug.
"""

from __future__ import annotations

__all__ = ["GracefulError", "AddressError", "ListenerError", "PidfileError", "SignalError"]


class GracefulError(Exception):
    """Base class of every error graceful raises deliberately."""


class AddressError(GracefulError, ValueError):
    """A listen address (or a name=address pair) that cannot be parsed."""


class ListenerError(GracefulError):
    """A listener that cannot be bound, or an inherited one that is not usable."""


class PidfileError(GracefulError):
    """A pidfile that cannot be taken: held by a live process, a symlink, unwritable."""


class SignalError(GracefulError):
    """Signal handlers that cannot be installed (for example from a non-main thread)."""
