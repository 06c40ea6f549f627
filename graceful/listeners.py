"""Listening sockets: bind them, or adopt the ones a predecessor or systemd passed us.

``Listeners`` is a registry keyed by name. ``listen("web", ":8000")`` returns the inherited
listener called "web" when there is one (even if the previous generation bound it elsewhere),
else binds ``:8000``. Inherited listeners come from, in this order:

- ``GRACEFUL_FDS=name=fd,…``, set by a predecessor generation (see ``graceful.fdenv``);
- systemd socket activation: ``LISTEN_PID`` (must be our pid), ``LISTEN_FDS`` (a count; the fds
  start at 3) and ``LISTEN_FDNAMES`` (colon-separated names; without it each listener is named
  by its address, and ``listen`` also matches inherited listeners by address).

The variables are removed once read, so grandchildren do not misread them. Every listener is
non-blocking (both generations accept from one queue, so ``accept`` must never block) and
close-on-exec (it is passed on deliberately, with ``pass_fds``).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Dict, Iterable, List, MutableMapping, Optional, Set, Tuple, Union

from .addresses import (Address, FdAddress, TCPAddress, UnixAddress, format_address,
                        parse_address, parse_bind)
from .errors import GracefulError, ListenerError
from .fdenv import ENV_FDS, decode_fds, encode_fds

__all__ = ["Listeners", "adopt", "bind", "default_backlog", "local_address"]

SD_LISTEN_FDS_START = 3
_SYSTEMD_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_MAX_LISTEN_FDS = 4096


def default_backlog() -> int:
    """net.core.somaxconn, kept within [128, 4096]."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        value = socket.SOMAXCONN
    return max(128, min(value, 4096))


# -- binding ------------------------------------------------------------------------------------


def bind(address: Union[Address, str], *, reuse_port: bool = False,
         backlog: Optional[int] = None, mode: Optional[int] = None) -> socket.socket:
    """A new listening socket on ``address``: non-blocking and close-on-exec."""
    if isinstance(address, str):
        address = parse_address(address)
    if isinstance(address, FdAddress):
        return adopt(address.fd, source=format_address(address))
    backlog = default_backlog() if backlog is None else backlog
    if isinstance(address, TCPAddress):
        sock = _bind_tcp(address, reuse_port, backlog)
    else:
        sock = _bind_unix(address, backlog, mode)
    sock.setblocking(False)
    return sock


def _bind_tcp(address: TCPAddress, reuse_port: bool, backlog: int) -> socket.socket:
    family = {0: socket.AF_UNSPEC, 4: socket.AF_INET, 6: socket.AF_INET6}[address.version]
    host: Optional[str] = address.host
    if host == "":
        host = "::" if address.version == 6 else "0.0.0.0"
    text = format_address(address)
    try:
        infos = socket.getaddrinfo(host, address.port, family, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenerError(f"cannot resolve {text}: {exc.strerror}; check the host name") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise ListenerError(f"cannot bind {text} with SO_REUSEPORT: not supported here")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # Explicit, whatever the sysctl says: [::]:P and 0.0.0.0:P are separate listeners.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _bind_error(text, exc) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(address: UnixAddress, backlog: int, mode: Optional[int]) -> socket.socket:
    text = format_address(address)
    if address.abstract:
        target: Union[str, bytes] = b"\0" + address.path.encode("utf-8", "surrogateescape")
    else:
        target = address.path
        _remove_stale_socket(address.path, text)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(target)
        if mode is not None and not address.abstract:
            os.chmod(address.path, mode)  # before listen(): nobody can connect yet
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _bind_error(text, exc) from None
    return sock


def _remove_stale_socket(path: str, text: str) -> None:
    """Unlink a socket file left by a dead server; refuse anything else at the path."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenerError(f"cannot bind {text}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenerError(f"cannot bind {text}: {path} exists and is not a socket; "
                            f"refusing to remove it (choose another path or remove it yourself)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody answers: a stale socket file
        return
    except OSError as exc:
        if exc.errno in (errno.ENOENT,):
            return
        raise ListenerError(f"cannot bind {text}: {path} is a socket we cannot probe "
                            f"({exc.strerror})") from None
    finally:
        probe.close()
    raise ListenerError(f"cannot bind {text}: a running process is listening on {path}; "
                        f"stop it first, or take its sockets over")


def _bind_error(text: str, exc: OSError) -> ListenerError:
    hints = {
        errno.EADDRINUSE: "is another server running on it?",
        errno.EACCES: "ports below 1024 need privileges; directories need write permission",
        errno.EADDRNOTAVAIL: "that address is not configured on this machine",
    }
    hint = hints.get(exc.errno or 0, "")
    return ListenerError(f"cannot bind {text}: {exc.strerror}" + (f"; {hint}" if hint else ""))


# -- adopting inherited fds ---------------------------------------------------------------------


def adopt(fd: int, *, source: str) -> socket.socket:
    """Wrap an inherited listening socket without changing its fd number.

    ``source`` says where the fd came from, for error messages. On error the fd is left as it
    was (open, not closed by us).
    """
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ListenerError(f"{source}: fd {fd} is not open ({exc.strerror}); was it passed to "
                            f"this process?") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenerError(f"{source}: fd {fd} is not a socket")
    sock = socket.socket(fileno=fd)  # detects family and type; fromfd would dup the fd
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_STREAM:
            raise ListenerError(f"{source}: fd {fd} is not a stream socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ListenerError(f"{source}: fd {fd} is a socket that is not listening")
    except (ListenerError, OSError) as exc:
        sock.detach()  # leave the caller's fd alone
        if isinstance(exc, ListenerError):
            raise
        raise ListenerError(f"{source}: fd {fd} cannot be inspected ({exc})") from None
    os.set_inheritable(fd, False)
    sock.setblocking(False)  # shared with the other generation: never block in accept
    return sock


def local_address(sock: socket.socket) -> Address:
    """The address a listening socket is bound to."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):
            if name.startswith(b"\0"):
                return UnixAddress(name[1:].decode("utf-8", "surrogateescape"), abstract=True)
            name = name.decode("utf-8", "surrogateescape")
        return UnixAddress(name)
    return TCPAddress(name[0].split("%", 1)[0], name[1])


# -- the registry -------------------------------------------------------------------------------


class Listeners:
    """Listeners keyed by name: claimed ones, and inherited ones not yet claimed."""

    def __init__(self, inherited: Iterable[Tuple[str, socket.socket]] = ()) -> None:
        self._unclaimed: List[Tuple[str, socket.socket]] = list(inherited)
        self._claimed: Dict[str, socket.socket] = {}
        self._bound_here: Set[str] = set()

    def add_inherited(self, name: str, fd: int, *, source: str) -> None:
        """Adopt ``fd`` (received from elsewhere, e.g. a handoff) as the inherited ``name``."""
        self._unclaimed.append((name, adopt(fd, source=source)))

    @classmethod
    def from_environ(cls, environ: Optional[MutableMapping[str, str]] = None) -> "Listeners":
        """Adopt the listeners named in the environment, and remove those variables."""
        env = os.environ if environ is None else environ
        try:
            ours = _from_graceful_env(env.get(ENV_FDS))
            # A graceful master sets both for its workers (a worker may read either): an fd
            # listed in both is one listener, named as GRACEFUL_FDS names it.
            named = {fd for _, fd, _ in ours}
            if ours and _decimal(env.get("LISTEN_PID", "")) != os.getpid():
                # LISTEN_PID names another process: the master's worker was a wrapper (a shell
                # that did not exec) and we are its child. GRACEFUL_FDS is not tied to a pid.
                systemd = []
            else:
                systemd = [entry for entry in _from_systemd_env(env) if entry[1] not in named]
            inherited = ours + systemd
            adopted = []
            try:
                for name, fd, source in inherited:
                    adopted.append((name, adopt(fd, source=source)))
            except GracefulError:
                for _, sock in adopted:
                    sock.detach()
                raise
            return cls(_name_unnamed(adopted))
        finally:
            for var in (ENV_FDS, *_SYSTEMD_VARS):
                env.pop(var, None)

    # -- claiming --

    def listen(self, name: str, address: Union[Address, str, None] = None, *,
               reuse_port: bool = False, backlog: Optional[int] = None,
               mode: Optional[int] = None) -> socket.socket:
        """The listener called ``name``: already claimed, inherited, or newly bound."""
        if address is None:
            name, address = parse_bind(name)
        elif isinstance(address, str):
            address = parse_address(address)
        if name in self._claimed:
            return self._claimed[name]
        sock = self._take_inherited(name, address)
        if sock is None:
            sock = bind(address, reuse_port=reuse_port, backlog=backlog, mode=mode)
            self._bound_here.add(name)
        self._claimed[name] = sock
        return sock

    def bound_here(self, name: str) -> bool:
        """True when the listener ``name`` was bound by this process (not inherited)."""
        return name in self._bound_here

    def _take_inherited(self, name: str, address: Address) -> Optional[socket.socket]:
        for i, (inherited_name, sock) in enumerate(self._unclaimed):
            if inherited_name == name:
                return self._unclaimed.pop(i)[1]
        for i, (_, sock) in enumerate(self._unclaimed):
            if _matches(sock, address):
                return self._unclaimed.pop(i)[1]
        return None  # (an fd://N nobody passed by name is adopted by bind())

    def get(self, name: str) -> Optional[socket.socket]:
        return self._claimed.get(name)

    def items(self) -> List[Tuple[str, socket.socket]]:
        """Claimed listeners, in the order they were claimed."""
        return list(self._claimed.items())

    @property
    def unclaimed(self) -> List[str]:
        return [name for name, _ in self._unclaimed]

    def close_unclaimed(self) -> List[str]:
        """Close inherited listeners nobody asked for; returns their names."""
        names = self.unclaimed
        for _, sock in self._unclaimed:
            sock.close()
        self._unclaimed = []
        return names

    def fds(self) -> Dict[str, int]:
        """name → fd of the claimed listeners, to pass to the next generation."""
        return {name: sock.fileno() for name, sock in self._claimed.items() if sock.fileno() >= 0}

    def child_env(self) -> Dict[str, str]:
        return {ENV_FDS: encode_fds(self.fds())}

    def close(self) -> None:
        """Close every listener, claimed or not."""
        self.close_unclaimed()
        for sock in self._claimed.values():
            sock.close()


def _from_graceful_env(value: Optional[str]) -> List[Tuple[str, int, str]]:
    if not value:
        return []
    return [(name, fd, f"{ENV_FDS} entry {name}={fd}") for name, fd in decode_fds(value).items()]


def _from_systemd_env(env: MutableMapping[str, str]) -> List[Tuple[str, int, str]]:
    count_text = env.get("LISTEN_FDS")
    if count_text is None:
        return []
    pid_text = env.get("LISTEN_PID", "")
    if _decimal(pid_text) != os.getpid():
        raise ListenerError(
            f"LISTEN_PID={pid_text!r} but this process is {os.getpid()}: the systemd socket "
            f"activation variables were meant for another process; unset LISTEN_FDS, "
            f"LISTEN_PID and LISTEN_FDNAMES (or exec this program directly from the activator)"
        )
    count = _decimal(count_text)
    if count is None or count > _MAX_LISTEN_FDS:
        raise ListenerError(f"LISTEN_FDS={count_text!r} is not a count of file descriptors "
                            f"(0 to {_MAX_LISTEN_FDS})")
    names_text = env.get("LISTEN_FDNAMES")
    names: List[Optional[str]] = [None] * count
    if names_text is not None:
        given = names_text.split(":") if names_text else []
        if len(given) != count:
            raise ListenerError(f"LISTEN_FDNAMES={names_text!r} has {len(given)} names but "
                                f"LISTEN_FDS={count}; they must match")
        names = [name or None for name in given]
    return [(name or "", SD_LISTEN_FDS_START + i,
             f"LISTEN_FDS fd {SD_LISTEN_FDS_START + i}" + (f" (name {name!r})" if name else ""))
            for i, name in enumerate(names)]


def _decimal(text: str) -> Optional[int]:
    """A plain ASCII decimal number, else None (str.isdigit also accepts "²" and "٣")."""
    if not text or len(text) > 10 or not all("0" <= c <= "9" for c in text):
        return None
    return int(text)


def _name_unnamed(adopted: List[Tuple[str, socket.socket]]) -> List[Tuple[str, socket.socket]]:
    """Listeners systemd passed without a name are named by their address."""
    return [(name or format_address(local_address(sock)), sock) for name, sock in adopted]


def _matches(sock: socket.socket, address: Address) -> bool:
    """Whether an inherited listener is bound to the address that was asked for."""
    if isinstance(address, FdAddress):
        return sock.fileno() == address.fd
    try:
        bound = local_address(sock)
    except OSError:
        return False
    if isinstance(address, UnixAddress):
        return bound == address
    if not isinstance(bound, TCPAddress) or bound.port != address.port or address.port == 0:
        return False
    wildcard = {"", "0.0.0.0", "::"}
    if address.host in wildcard:
        return bound.host in wildcard
    try:
        wanted = {info[4][0] for info in socket.getaddrinfo(address.host, address.port,
                                                            type=socket.SOCK_STREAM)}
    except socket.gaierror:
        return False
    return bound.host in wanted
