"""Self re-exec: hand this process's listening sockets to a new copy of itself.

On an upgrade trigger (SIGHUP, SIGUSR2 or ``Upgrader.upgrade()``) the running generation starts
its successor with the same command, passing

- its listeners (the fds keep their numbers; ``GRACEFUL_FDS=name=fd,…`` names them),
- ``GRACEFUL_READY_FD``, the write end of a readiness pipe,
- ``GRACEFUL_PARENT_PID`` and ``GRACEFUL_ANCESTORS`` (older generations that may still drain).

The successor claims the listeners by name, starts serving, takes over the pidfile and calls
``ready()``, which writes its pid to the pipe. Only then does the predecessor tell systemd the new
``MAINPID``, stop accepting (the accept queue lives on in the successor) and drain. A successor
that exits, crashes or is not ready within ``ready_timeout`` is stopped and the predecessor keeps
serving: that is the rollback.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

from . import _proc, systemd
from .addresses import Address, parse_bind
from .drain import DRAINING, LAME_DUCK, SERVING, STARTING, STOPPED, Lifecycle
from .errors import GracefulError
from .listeners import Listeners, local_address
from .pidfile import Pidfile

__all__ = ["Upgrader", "UpgradeError"]

log = logging.getLogger("graceful")

ENV_READY_FD = "GRACEFUL_READY_FD"
ENV_PARENT_PID = "GRACEFUL_PARENT_PID"
ENV_ANCESTORS = "GRACEFUL_ANCESTORS"

_MAX_READY_MESSAGE = 64


class UpgradeError(GracefulError):
    """An upgrade that was refused or rolled back; the running generation keeps serving."""


class Upgrader:
    """Zero-downtime self re-exec for one server process.

    Typical use::

        upgrader = Upgrader(pidfile="/run/app.pid")
        sock = upgrader.listen("web", ":8000")    # inherited from the predecessor, or bound
        ... start serving on sock ...
        upgrader.ready()                          # the predecessor may now drain
        upgrader.wait()                           # until a successor took over, or SIGQUIT/TERM
        ... stop accepting, finish in-flight requests before upgrader.lifecycle.deadline ...
        upgrader.close()
    """

    def __init__(
        self,
        *,
        pidfile: Union[str, "os.PathLike[str]", None] = None,
        ready_timeout: float = 30.0,
        graceful_timeout: float = 30.0,
        shutdown_delay: float = 0.0,
        upgrade_signals: Sequence[int] = (signal.SIGHUP, signal.SIGUSR2),
        argv: Optional[Sequence[str]] = None,
        cwd: Optional[str] = None,
        max_generations: int = 4,
        idle_grace: float = 0.5,
        install_signals: bool = True,
        environ: Optional[Dict[str, str]] = None,
        handoff_socket: Optional[str] = None,
        takeover: Optional[str] = None,
        handoff_uids: Optional[Sequence[int]] = None,
        takeover_fds: bool = True,
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self.ready_timeout = ready_timeout
        self.shutdown_delay = shutdown_delay
        self.upgrade_signals = tuple(upgrade_signals)
        self.argv = list(argv) if argv is not None else _start_command()
        self.cwd = cwd if cwd is not None else _start_directory()
        self.max_generations = max_generations
        self.lifecycle = Lifecycle(graceful_timeout=graceful_timeout, idle_grace=idle_grace)
        self._upgrade_lock = threading.Lock()
        self._signals = None
        self._closed = False

        inherited = _take_inheritance(self._environ)
        self.parent_pid: Optional[int] = inherited.parent_pid
        self._ready_fd: Optional[int] = inherited.ready_fd
        self._ancestors: List[int] = inherited.ancestors
        self.listeners = Listeners.from_environ(self._environ)
        self.handoff_socket = handoff_socket
        self.handoff_uids = handoff_uids
        self._handoff_server = None
        self._takeover_conn = None
        self._takeover_pid: Optional[int] = None
        self._reuseport: List[socket.socket] = []  # bound here with SO_REUSEPORT
        if takeover is not None:
            self._take_over(takeover, fds=takeover_fds)
        self.pidfile = Pidfile(pidfile) if pidfile is not None else None
        if self.pidfile is not None and not self.has_parent and self._takeover_pid is None:
            # A first generation takes the pidfile at once, so a second copy started by mistake
            # fails before it binds anything.
            self.pidfile.acquire()
        if install_signals:
            self._install_signals()

    # -- the serving process's API -----------------------------------------------------------

    @property
    def has_parent(self) -> bool:
        """True when a predecessor started this process and waits for ``ready()``."""
        return self.parent_pid is not None

    @property
    def stop_event(self) -> threading.Event:
        """Set when this generation must stop accepting (successor ready, or asked to stop)."""
        return self.lifecycle.stop_event

    def listen(self, name: str, address: Union[Address, str, None] = None, **options) -> socket.socket:
        """The inherited listener called ``name``, or a new one bound to ``address``.

        ``reuse_port=True`` binds a new listener with SO_REUSEPORT beside an old process's: it
        takes no connection until ``ready()`` (see ``graceful.reuseport``)."""
        if address is None:
            name, address = parse_bind(name)
        claimed = self.listeners.get(name) is not None
        sock = self.listeners.listen(name, address, **options)
        if options.get("reuse_port") and not claimed and self.listeners.bound_here(name):
            from . import reuseport

            technique = reuseport.hold_traffic(sock)
            if technique:
                log.info("listener %s: SO_REUSEPORT handoff by %s", local_address(sock),
                         technique)
            self._reuseport.append(sock)
        return sock

    def ready(self) -> None:
        """Declare this generation ready: take the pidfile, then let the predecessor drain."""
        if self.lifecycle.state in (DRAINING, STOPPED):
            # Told to stop while starting (a SIGQUIT or SIGTERM that came early): do not take
            # over from a predecessor; the adapter's drain still serves what is already queued.
            log.info("not declaring ready: asked to stop before ready (%s)", self.lifecycle.reason)
            self._give_up_ready_fd()
            return
        if self.lifecycle.state != STARTING:
            raise UpgradeError(f"ready() called twice (state is {self.lifecycle.state})")
        closed = self.listeners.close_unclaimed()
        if closed:
            log.info("closed inherited listeners nobody claimed: %s", ", ".join(closed))
        predecessor = self.parent_pid if self.has_parent else self._takeover_pid
        if self.pidfile is not None and predecessor is not None:
            self.pidfile.handover(predecessor)
        self.lifecycle.serving()
        if self._reuseport:
            from .reuseport import take_traffic

            for sock in self._reuseport:
                take_traffic(sock)  # before the old process is told it may close
        if self._ready_fd is not None:
            _report_ready(self._ready_fd)
            self._ready_fd = None
        else:
            if self._takeover_conn is not None:
                self._confirm_takeover()
            systemd.ready()
        if self.handoff_socket is not None:
            self._serve_handoff()
        log.info("ready: pid %d serving %s", os.getpid(),
                 ", ".join(name for name, _ in self.listeners.items()) or "no listeners")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until this generation must stop serving; False on timeout."""
        return self.lifecycle.stop_event.wait(timeout)

    async def wait_async(self) -> None:
        """Await the moment this generation must stop serving (asyncio)."""
        import asyncio

        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def wake(state: str) -> None:
            if state in (DRAINING, STOPPED):
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        self.lifecycle.watch(wake)
        if self.lifecycle.stop_event.is_set():
            return
        await done

    def stop(self, delay: Optional[float] = None) -> None:
        """Begin shutting down: lame duck for ``delay`` (default ``shutdown_delay``), then drain."""
        systemd.stopping()
        if self.lifecycle.state == STARTING:
            self.lifecycle.drain("shutdown before ready")
        else:
            self.lifecycle.lame_duck(self.shutdown_delay if delay is None else delay)

    def close(self) -> None:
        """End of this generation: close listeners, give up the pidfile if it is still ours."""
        if self._closed:
            return
        self._closed = True
        if self._handoff_server is not None:
            self._handoff_server.close()
        if self._takeover_conn is not None:
            self._takeover_conn.close()
        self.lifecycle.stopped()
        self.listeners.close()
        if self.pidfile is not None:
            self.pidfile.release()
        self._give_up_ready_fd()
        if self._signals is not None:
            self._signals.close()
            self._signals = None

    # -- handoff to and from unrelated processes -------------------------------------------

    def _take_over(self, path: str, fds: bool) -> None:
        from .handoff import take_over

        conn, pid, pairs = take_over(path, self.ready_timeout, fds=fds)
        try:
            for name, fd in pairs:
                self.listeners.add_inherited(name, fd, source=f"handoff from pid {pid}")
        except BaseException:
            conn.close()
            raise
        self._takeover_conn, self._takeover_pid = conn, pid
        if fds:
            log.info("took %d listener(s) over from pid %d via %s", len(pairs), pid, path)
        else:
            log.info("taking over from pid %d via %s: binding beside its listeners "
                     "(SO_REUSEPORT)", pid, path)

    def _confirm_takeover(self) -> None:
        from .handoff import HandoffError, confirm_ready

        conn, self._takeover_conn = self._takeover_conn, None
        try:
            confirm_ready(conn, self.ready_timeout)
        except HandoffError as exc:
            log.warning("%s; serving anyway", exc)

    def _serve_handoff(self) -> None:
        from .handoff import HandoffServer

        def handed_over(pid: int, shared: bool) -> None:
            # Shared: the taker holds our very sockets. Otherwise it bound its own beside ours
            # (SO_REUSEPORT) and what is queued on ours is still ours to serve.
            self.lifecycle.drain(f"handed over to pid {pid}", last_holder=not shared)

        self._handoff_server = HandoffServer(
            self.handoff_socket, self.listeners.items, handed_over,  # type: ignore[arg-type]
            ready_timeout=self.ready_timeout, allowed_uids=self.handoff_uids)

    def _give_up_ready_fd(self) -> None:
        """Close the readiness pipe unused: the predecessor sees EOF and keeps serving."""
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None

    def __enter__(self) -> "Upgrader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- upgrades ------------------------------------------------------------------------------

    def upgrade(self) -> int:
        """Start a successor and hand over to it; returns its pid.

        Raises ``UpgradeError`` (and keeps serving) when the upgrade is refused or the successor
        fails: exits, crashes, or is not ready within ``ready_timeout``.
        """
        if not self._upgrade_lock.acquire(blocking=False):
            raise UpgradeError("an upgrade is already in progress")
        try:
            self._check_can_upgrade()
            systemd.reloading()
            try:
                pid = self._start_successor()
            except UpgradeError as exc:
                systemd.notify("READY=1", f"STATUS=upgrade failed: {exc}")
                raise
            systemd.mainpid(pid)
            systemd.ready()
            self.lifecycle.drain(f"handed over to pid {pid}", last_holder=False)
            return pid
        finally:
            self._upgrade_lock.release()

    def _check_can_upgrade(self) -> None:
        state = self.lifecycle.state
        if state == STARTING:
            raise UpgradeError("cannot upgrade before ready(): this generation is still starting")
        if state != SERVING:
            raise UpgradeError(f"cannot upgrade while {state.replace('_', ' ')}")
        draining = _live(self._ancestors)
        if len(draining) + 1 >= self.max_generations:
            raise UpgradeError(
                f"{len(draining)} older generations (pids {', '.join(map(str, draining))}) are "
                f"still draining; max_generations={self.max_generations}. Retry once they exit."
            )

    def _start_successor(self) -> int:
        read_fd, write_fd = os.pipe()
        try:
            child = self._spawn(write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        try:
            pid = _await_ready(read_fd, child, self.ready_timeout)
        except UpgradeError as exc:
            self._roll_back(child, str(exc))
            raise
        finally:
            os.close(read_fd)
        log.info("upgrade: successor pid %d is ready; draining pid %d", pid, os.getpid())
        return pid

    def _spawn(self, ready_fd: int) -> subprocess.Popen:
        fds = self.listeners.fds()
        env = dict(self._environ)
        env.update(self.listeners.child_env())
        env[ENV_READY_FD] = str(ready_fd)
        env[ENV_PARENT_PID] = str(os.getpid())
        env[ENV_ANCESTORS] = ",".join(str(p) for p in [os.getpid(), *_live(self._ancestors)])
        try:
            child = subprocess.Popen(self.argv, cwd=self.cwd, env=env,
                                     pass_fds=sorted([*fds.values(), ready_fd]))
        except OSError as exc:
            raise UpgradeError(f"cannot start successor {self.argv!r} in {self.cwd!r}: {exc}") from None
        log.info("upgrade: started successor pid %d: %s", child.pid, " ".join(self.argv))
        return child

    def _roll_back(self, child: subprocess.Popen, why: str) -> None:
        """Stop a failed successor (gently first: it may hold accepted connections)."""
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=min(5.0, self.lifecycle.graceful_timeout))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        log.error("upgrade rolled back, pid %d keeps serving: %s (successor %s)",
                  os.getpid(), why, _describe_exit(child.returncode))

    # -- signals -------------------------------------------------------------------------------

    def on_signal(self, signum: int, callback: Callable[[int], None]) -> None:
        """Also run ``callback(signum)`` (in the dispatcher thread) when ``signum`` arrives,
        e.g. SIGUSR1 to reopen log files. Main thread only, like the Upgrader itself."""
        if self._signals is None:
            raise UpgradeError("this Upgrader was made with install_signals=False")
        self._signals.on(signum, callback)
        self._signals.install()

    def _install_signals(self) -> None:
        from .signals import SignalDispatcher

        dispatcher = SignalDispatcher()
        for signum in self.upgrade_signals:
            dispatcher.on(signum, self._on_upgrade_signal)
        dispatcher.on(signal.SIGQUIT, self._on_quit)
        dispatcher.on(signal.SIGTERM, self._on_terminate)
        dispatcher.on(signal.SIGINT, self._on_terminate)
        dispatcher.install()
        dispatcher.start_thread()
        self._signals = dispatcher

    def _on_upgrade_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._upgrade_lock.locked():
            log.info("%s: an upgrade is already in progress; trigger coalesced", name)
            return
        threading.Thread(target=self._upgrade_logged, args=(name,), name="graceful-upgrade",
                         daemon=True).start()

    def _upgrade_logged(self, trigger: str) -> None:
        try:
            self.upgrade()
        except UpgradeError as exc:
            log.error("%s: upgrade not done: %s", trigger, exc)

    def _on_quit(self, signum: int) -> None:
        systemd.stopping()
        self.lifecycle.drain("SIGQUIT")

    def _on_terminate(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.lifecycle.state in (LAME_DUCK, DRAINING, STOPPED):
            if self.lifecycle.reason.startswith("handed over"):
                # Draining after a handover is routine; a TERM now means "finish up".
                log.info("%s while draining after handover: continuing the drain", name)
                return
            log.warning("%s again: closing everything now", name)
            self.lifecycle.force()
            return
        log.info("%s: shutting down", name)
        delay = self.shutdown_delay if signum == signal.SIGTERM else 0.0
        self.stop(delay)


# -- helpers ---------------------------------------------------------------------------------


class _Inheritance:
    def __init__(self, parent_pid: Optional[int], ready_fd: Optional[int], ancestors: List[int]):
        self.parent_pid = parent_pid
        self.ready_fd = ready_fd
        self.ancestors = ancestors


def _take_inheritance(environ: Dict[str, str]) -> _Inheritance:
    """Read (and remove) what a predecessor passed in the environment."""
    raw_fd = environ.pop(ENV_READY_FD, None)
    raw_parent = environ.pop(ENV_PARENT_PID, None)
    raw_ancestors = environ.pop(ENV_ANCESTORS, "")
    if raw_fd is None and raw_parent is None:
        return _Inheritance(None, None, [])
    try:
        ready_fd = int(raw_fd) if raw_fd is not None else None
        parent_pid = int(raw_parent) if raw_parent is not None else None
        ancestors = [int(p) for p in raw_ancestors.split(",") if p]
    except ValueError:
        raise UpgradeError(
            f"garbage in {ENV_READY_FD}={raw_fd!r} / {ENV_PARENT_PID}={raw_parent!r} / "
            f"{ENV_ANCESTORS}={raw_ancestors!r}: these are set by graceful for a successor; "
            f"unset them to start a first generation"
        ) from None
    if ready_fd is None or parent_pid is None:
        raise UpgradeError(f"{ENV_READY_FD} and {ENV_PARENT_PID} must be set together; unset both "
                           f"to start a first generation")
    try:
        os.set_inheritable(ready_fd, False)
    except OSError as exc:
        raise UpgradeError(f"{ENV_READY_FD}={ready_fd} is not an open file descriptor ({exc}); "
                           f"unset it to start a first generation") from None
    return _Inheritance(parent_pid, ready_fd, ancestors)


def _report_ready(fd: int) -> None:
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:  # the predecessor died: we simply are the only generation now
        log.warning("could not report readiness to the predecessor: %s", exc)
    finally:
        os.close(fd)


def _await_ready(fd: int, child: subprocess.Popen, timeout: float) -> int:
    """Wait for the successor's pid on the readiness pipe; UpgradeError on EOF or timeout."""
    deadline = time.monotonic() + timeout
    message = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not message.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise UpgradeError(f"successor pid {child.pid} was not ready within {timeout:g}s")
            chunk = os.read(fd, _MAX_READY_MESSAGE)
            if not chunk:
                raise UpgradeError(f"successor pid {child.pid} exited or closed its readiness "
                                   f"pipe before it was ready")
            message += chunk
            if len(message) > _MAX_READY_MESSAGE:
                break
    text = message.decode("ascii", "replace").strip()
    if not text.isdigit():
        raise UpgradeError(f"successor pid {child.pid} sent a malformed readiness message {text!r}")
    return int(text)


def _describe_exit(returncode: Optional[int]) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _live(pids: Sequence[int]) -> List[int]:
    """The pids of ``pids`` that still run (zombies count as gone)."""
    return [pid for pid in pids if _proc.running(pid)]


def _start_command() -> List[str]:
    """How this process was started, so the successor runs the code now on disk the same way."""
    orig = getattr(sys, "orig_argv", None)  # Python 3.10+: keeps -m, -X and -W options
    if orig:
        return [sys.executable, *orig[1:]]
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    if spec is not None and spec.name:
        module = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, *flags, "-m", module, *sys.argv[1:]]
    return [sys.executable, *flags, *sys.argv]


def _start_directory() -> str:
    """The start-up directory, keeping a symlinked path (``/srv/app/current``) when PWD names it.

    Deploys often swap a symlink; ``os.getcwd()`` returns the resolved, old release directory.
    """
    cwd = os.getcwd()
    pwd = os.environ.get("PWD")
    if pwd:
        try:
            if os.path.samefile(pwd, cwd):
                return pwd
        except OSError:
            pass
    return cwd

