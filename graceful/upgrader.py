"""Self re-exec: hand this process's listening sockets to a new copy of itself.

On an upgrade trigger (SIGHUP, SIGUSR2 or ``Upgrader.upgrade()``) the running generation starts
its successor with the same command, passing

- its listeners (the fds keep their numbers; ``GRACEFUL_FDS=name=fd,…`` names them),
- ``GRACEFUL_READY_FD``, the write end of a readiness pipe,
- ``GRACEFUL_PARENT_PID`` and ``GRACEFUL_ANCESTORS`` (older generations that may still drain).

The successor claims the listeners by name, starts serving and calls ``ready()``, which takes
over the pidfile and writes its pid to the pipe. Only then does the predecessor tell systemd the
new ``MAINPID``, stop accepting (the accept queue lives on in the successor) and drain. A
successor that exits, crashes or is not ready within ``ready_timeout`` is stopped and the
predecessor keeps serving: that is the rollback. A successor that fails before it is ready says
why on the pipe (``failed <reason>``), so the rollback is logged with its reason; the
predecessor then waits for its exit status rather than stopping it. After a rollback the
predecessor takes the pidfile back, so the pidfile always names the process that serves.

A successor that dies *after* it reported ready leaves nothing serving: the predecessor has
already stopped accepting. The pidfile then keeps naming the dead successor, which makes it
stale (its lock is free): ``graceful status`` says "not running", and a supervisor or operator
can start a new first generation at once. The draining predecessor logs the death and finishes.
An upgrade trigger that reaches a generation which has handed over is passed on to the
generation it handed over to. One that comes while an upgrade is under way is kept (however
many come, as one): once that upgrade ends, one more follows, here after a rollback, or in the
successor it is passed on to: the code on disk may have changed after the successor started.
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
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import _proc, systemd
from .addresses import Address, parse_bind
from .drain import DRAINING, LAME_DUCK, SERVING, STARTING, STOPPED, Lifecycle
from .errors import GracefulError
from .listeners import Listeners, local_address
from .pidfile import Pidfile, owner_pid

__all__ = ["Upgrader", "UpgradeError"]

log = logging.getLogger("graceful")

ENV_READY_FD = "GRACEFUL_READY_FD"
ENV_PARENT_PID = "GRACEFUL_PARENT_PID"
ENV_ANCESTORS = "GRACEFUL_ANCESTORS"

_MAX_READY_MESSAGE = 2048  # "<pid>\n", or "failed <reason>\n"; below PIPE_BUF: one write
_FAILED = "failed "
_EXIT_GRACE = 2.0  # least time a successor that gave up gets to exit by itself


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
        # A trigger that arrived during an upgrade: one more upgrade follows once it ends (the
        # operator may have fixed or changed the code after that upgrade's successor started).
        self._trigger_lock = threading.Lock()  # orders "upgrade ends" against "trigger comes"
        self._pending_trigger: Optional[int] = None
        self._signals = None
        self._closed = False

        self._successor_pid: Optional[int] = None  # the generation we handed over to
        inherited = _take_inheritance(self._environ)
        self.parent_pid: Optional[int] = inherited.parent_pid
        self._ready_fd: Optional[int] = inherited.ready_fd
        self._ancestors: List[int] = inherited.ancestors
        self._failure = (_FailureWitness(self._give_up_ready_fd)
                         if self._ready_fd is not None else None)
        self.pidfile: Optional[Pidfile] = None
        try:
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
                # A first generation takes the pidfile at once, so a second copy started by
                # mistake fails before it binds anything.
                self.pidfile.acquire()
            if install_signals:
                self._install_signals()
        except BaseException:
            self._give_up_ready_fd()  # tells the predecessor why (the exception in flight)
            raise

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
            self._give_up_ready_fd(f"asked to stop before ready ({self.lifecycle.reason})")
            return
        if self.lifecycle.state != STARTING:
            raise UpgradeError(f"ready() called twice (state is {self.lifecycle.state})")
        try:
            self._take_over_from_predecessor()
        except BaseException:
            self._give_up_ready_fd()  # the predecessor rolls back, and logs this exception
            raise
        if self.handoff_socket is not None:
            self._serve_handoff()
        log.info("ready: pid %d serving %s", os.getpid(),
                 ", ".join(name for name, _ in self.listeners.items()) or "no listeners")

    def _take_over_from_predecessor(self) -> None:
        """Serve, take the pidfile, and tell the predecessor (or systemd) we are ready."""
        predecessor = self.parent_pid if self.has_parent else self._takeover_pid
        takes_pidfile = self.pidfile is not None and predecessor is not None
        if takes_pidfile:
            self.pidfile.stage()  # type: ignore[union-attr]  # a full disk fails here, harmlessly
        closed = self.listeners.close_unclaimed()
        if closed:
            log.info("closed inherited listeners nobody claimed: %s", ", ".join(closed))
        self.lifecycle.serving()
        if takes_pidfile:
            # Only now, serving, and just before the predecessor hears of it: if we die from
            # here until it has heard, it rolls back and takes the pidfile back.
            self.pidfile.handover(predecessor)  # type: ignore[union-attr,arg-type]
        if self._reuseport:
            from .reuseport import take_traffic

            for sock in self._reuseport:
                take_traffic(sock)  # before the old process is told it may close
        if self._ready_fd is not None:
            _report_ready(self._ready_fd)
            self._ready_fd = None
            witness, self._failure = self._failure, None
            if witness is not None:
                witness.close()
        else:
            if self._takeover_conn is not None:
                self._confirm_takeover()
            systemd.ready()

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
        self._give_up_ready_fd()  # first: the predecessor learns why at once
        if self._handoff_server is not None:
            self._handoff_server.close()
        if self._takeover_conn is not None:
            self._takeover_conn.close()
        self.lifecycle.stopped()
        self.listeners.close()
        if self.pidfile is not None:
            self.pidfile.release()
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
            self._successor_pid = pid
            self.lifecycle.hand_over(pid, last_holder=not shared)

        self._handoff_server = HandoffServer(
            self.handoff_socket, self.listeners.items, handed_over,  # type: ignore[arg-type]
            ready_timeout=self.ready_timeout, allowed_uids=self.handoff_uids,
            on_gone=self._take_pidfile_back)

    def _give_up_ready_fd(self, reason: Optional[str] = None) -> None:
        """Tell the predecessor we will not be ready, and why (``reason``, else the exception
        being handled, else the last error logged), then close the pipe: it keeps serving."""
        fd, self._ready_fd = self._ready_fd, None
        if fd is None:
            return
        witness, self._failure = self._failure, None
        if reason is None and witness is not None:
            reason = witness.reason(sys.exc_info())
        if witness is not None:
            witness.close()
        _report_failure(fd, reason)

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
        return self._upgrade_holding_lock()

    def _upgrade_holding_lock(self) -> int:
        """The upgrade itself; releases the upgrade lock, then acts on a trigger that came
        meanwhile."""
        try:
            self._check_can_upgrade()
            systemd.reloading()
            try:
                pid = self._start_successor()
            except UpgradeError as exc:
                systemd.notify("READY=1", f"STATUS=upgrade failed: {exc}")
                raise
            self._successor_pid = pid  # from now on, triggers are passed on to it
            self._pass_pending_trigger_on()  # now, before we drain (and may soon exit)
            systemd.mainpid(pid)
            systemd.ready()
            self.lifecycle.hand_over(pid)
            return pid
        finally:
            with self._trigger_lock:
                self._upgrade_lock.release()
                pending, self._pending_trigger = self._pending_trigger, None
            if pending is not None:
                self._after_coalesced_trigger(pending)

    def _pass_pending_trigger_on(self) -> None:
        with self._trigger_lock:
            pending, self._pending_trigger = self._pending_trigger, None
        if pending is not None:
            self.pass_on(pending)

    def _after_coalesced_trigger(self, signum: int) -> None:
        """The one more upgrade that triggers during the upgrade just ended asked for: here
        after a rollback, in the successor (passed on) once it took over."""
        name = signal.Signals(signum).name
        if self.pass_on(signum):
            return
        log.info("%s came during the upgrade that just ended: upgrading again", name)
        self._on_upgrade_signal(signum)

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
        try:
            read_fd, write_fd = os.pipe()
        except OSError as exc:  # EMFILE under fd exhaustion: a failed upgrade, not a crash
            raise UpgradeError(f"cannot create the readiness pipe: {exc.strerror}; raise the "
                               "open files limit (ulimit -n) or retry once load drops") from None
        try:
            child = self._spawn(write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        deadline = time.monotonic() + self.ready_timeout
        try:
            pid = _await_ready(read_fd, child, deadline, self.ready_timeout)
        except _NotReady as failure:
            self._roll_back(child, failure, deadline)
            raise UpgradeError(str(failure)) from None
        finally:
            os.close(read_fd)
        log.info("upgrade: successor pid %d is ready; draining pid %d", pid, os.getpid())
        threading.Thread(target=self._watch_successor, args=(child,),
                         name="graceful-successor-watch", daemon=True).start()
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

    def _roll_back(self, child: subprocess.Popen, failure: "_NotReady", deadline: float) -> None:
        """Stop a failed successor and take the pidfile back if it had taken it."""
        if failure.exiting:
            # It gave up by itself: let it exit (and print its traceback) rather than TERM it.
            try:
                child.wait(timeout=max(deadline - time.monotonic(), _EXIT_GRACE))
            except subprocess.TimeoutExpired:
                pass
        if child.poll() is None:  # gently first: it may hold accepted connections
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=min(5.0, self.lifecycle.graceful_timeout))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._take_pidfile_back(child.pid)  # before the log line: once logged, all is back
        log.error("upgrade rolled back, pid %d keeps serving: %s (successor %s)",
                  os.getpid(), failure, _describe_exit(child.returncode))

    def _watch_successor(self, child: subprocess.Popen) -> None:
        """While we drain, log it if the successor we handed over to dies: we have stopped
        accepting and cannot serve again, so unless it handed over in turn, nothing serves.
        The pidfile then names the dead successor and is stale: a new first generation can be
        started at once (see the module's docstring). Waits without reaping: a master's
        reaper may reap it."""
        try:
            info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        except OSError:
            return  # already reaped
        if info is None:
            return
        how = _describe_exit(_exit_status(info))
        serving = _pidfile_owner(self.pidfile)
        if serving not in (None, child.pid):
            log.info("successor pid %d %s; pid %d serves now", child.pid, how, serving)
        elif info.si_code == os.CLD_EXITED and info.si_status == 0:
            log.info("successor pid %d %s after it took over", child.pid, how)
        else:
            log.error("successor pid %d %s after it took over; pid %d has stopped accepting and "
                      "drains, so nothing serves%s", child.pid, how, os.getpid(),
                      "" if self.pidfile is None else
                      f" (pidfile {self.pidfile.path} names the dead pid: stale)")
        child.poll()  # reap it

    def _take_pidfile_back(self, successor_pid: int) -> None:
        if self.pidfile is None:
            return
        try:
            if self.pidfile.reclaim(successor_pid):
                log.warning("pidfile %s: taken back from failed successor pid %d",
                            self.pidfile.path, successor_pid)
        except GracefulError as exc:
            log.error("%s: it may not name pid %d, which serves", exc, os.getpid())

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
        if self.pass_on(signum):
            return
        with self._trigger_lock:
            if not self._upgrade_lock.acquire(blocking=False):
                if self._pending_trigger is None:
                    log.info("%s: an upgrade is in progress; one more follows once it ends",
                             name)
                else:
                    log.info("%s: an upgrade is in progress and one more is already due; "
                             "trigger coalesced", name)
                self._pending_trigger = signum
                return
        try:
            threading.Thread(target=self._upgrade_logged, args=(name,),
                             name="graceful-upgrade", daemon=True).start()
        except RuntimeError:  # no thread, no upgrade: none is in progress either
            self._upgrade_lock.release()
            raise

    def pass_on(self, signum: int) -> bool:
        """Once this generation has handed over, send ``signum`` to the generation it handed
        over to and return True: a trigger meant for the serving generation came here (the
        pidfile was read a moment early). False, and nothing sent, before a handover."""
        successor = self._successor_pid
        if successor is None:
            return False
        name = signal.Signals(signum).name
        try:
            os.kill(successor, signum)
        except ProcessLookupError:
            log.error("%s: pid %d handed over to pid %d, which is gone; upgrade not done",
                      name, os.getpid(), successor)
            return True
        log.info("%s: pid %d has handed over; passed the trigger on to pid %d, which serves",
                 name, os.getpid(), successor)
        return True

    def _upgrade_logged(self, trigger: str) -> None:
        """In its own thread, holding the upgrade lock (taken by ``_on_upgrade_signal``)."""
        try:
            self._upgrade_holding_lock()
        except UpgradeError as exc:
            log.error("%s: upgrade not done: %s", trigger, exc)

    def _on_quit(self, signum: int) -> None:
        systemd.stopping()
        self.lifecycle.drain("SIGQUIT")

    def _on_terminate(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.lifecycle.state in (LAME_DUCK, DRAINING, STOPPED):
            if self.lifecycle.handed_over:
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


class _NotReady(Exception):
    """Why a successor will not be ready; ``exiting`` when it gave up by itself."""

    def __init__(self, why: str, exiting: bool) -> None:
        super().__init__(why)
        self.exiting = exiting


def _await_ready(fd: int, child: subprocess.Popen, deadline: float, timeout: float) -> int:
    """Wait for the successor's pid on the readiness pipe; _NotReady on failure or timeout."""
    message = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not message.endswith(b"\n") and len(message) <= _MAX_READY_MESSAGE:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise _NotReady(f"successor pid {child.pid} was not ready within {timeout:g}s",
                                exiting=False)
            chunk = os.read(fd, _MAX_READY_MESSAGE)
            if not chunk:
                break
            message += chunk
    text = message.decode("utf-8", "replace").strip()
    if text.startswith(_FAILED.strip()):
        raise _NotReady(f"successor pid {child.pid} failed before it was ready: "
                        f"{text[len(_FAILED):] or 'no reason given'}", exiting=True)
    if not message.endswith(b"\n"):
        raise _NotReady(f"successor pid {child.pid} exited or closed its readiness pipe before "
                        f"it was ready", exiting=True)
    if not text.isdigit():
        raise _NotReady(f"successor pid {child.pid} sent a malformed readiness message "
                        f"{text[:80]!r}", exiting=False)
    return int(text)


def _report_failure(fd: int, reason: Optional[str]) -> None:
    """Give the predecessor our reason for not becoming ready, then close the pipe."""
    try:
        if reason:
            line = " ".join(reason.split())  # one line
            data = (_FAILED + line).encode("utf-8", "replace")[:_MAX_READY_MESSAGE - 1] + b"\n"
            os.write(fd, data)
    except OSError:
        pass  # the predecessor is gone: nobody to tell
    finally:
        os.close(fd)


class _FailureWitness(logging.Filter):
    """In a successor until it is ready: remembers the last error logged and uncaught
    exceptions, so that a failure that ends the process reaches the predecessor's log.

    A filter on our logger, not a handler: a handler would stop Python's last-resort output to
    stderr in an application that configured no logging."""

    def __init__(self, report: Callable[[Optional[str]], None]) -> None:
        super().__init__()
        self.last: Optional[str] = None
        self.last_with_exception: Optional[str] = None
        self._report = report
        log.addFilter(self)
        self._previous_hook = sys.excepthook
        sys.excepthook = self._on_uncaught

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                self.last_with_exception = f"{text}: {_exception_summary(record.exc_info)}"
            self.last = text
        return True

    def reason(self, exc_info: Tuple) -> Optional[str]:
        """The exception being handled (``exc_info``), else the last error logged."""
        if exc_info[1] is not None and not isinstance(exc_info[1], (SystemExit, KeyboardInterrupt)):
            return _exception_summary(exc_info)
        return self.last_with_exception or self.last

    def _on_uncaught(self, kind, value, tb) -> None:  # type: ignore[no-untyped-def]
        previous = self._previous_hook
        if not issubclass(kind, (SystemExit, KeyboardInterrupt)):
            self._report(_exception_summary((kind, value, tb)))
        previous(kind, value, tb)

    def close(self) -> None:
        log.removeFilter(self)
        if sys.excepthook == self._on_uncaught:
            sys.excepthook = self._previous_hook


def _exception_summary(exc_info: Tuple) -> str:
    """``Type: message (at file:line in function)``: the last lines of its traceback."""
    kind, value, tb = exc_info
    summary = "".join(traceback.format_exception_only(kind, value)).strip()
    frames = traceback.extract_tb(tb) if tb is not None else []
    if frames:
        last = frames[-1]
        summary += f" (at {last.filename}:{last.lineno} in {last.name})"
    return summary


def _exit_status(info: "os.waitid_result") -> int:
    """A waitid result as a Popen-style returncode (negative: killed by that signal)."""
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _describe_exit(returncode: Optional[int]) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _pidfile_owner(pidfile: Optional[Pidfile]) -> Optional[int]:
    """The live process that holds ``pidfile`` (None: none, stale, or no pidfile)."""
    if pidfile is None:
        return None
    try:
        return owner_pid(pidfile.path)
    except GracefulError:
        return None


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

