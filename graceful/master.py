"""Master mode: a process with a stable PID that holds the listeners and runs worker generations.

Supervisors, systemd and container runtimes track one PID. The master keeps it: it binds (or
inherits) the listeners once, starts N workers that inherit them, and on SIGHUP starts a whole
new generation, waits until every new worker is ready, and only then stops the old generation.
A generation that crashes or never gets ready is rolled back: its workers are stopped like any
retired worker (those that already serve drain), and the old one keeps serving.

A crashed worker is restarted with a backoff per slot (capped); a slot that once served is never
given up, so the service keeps its capacity (``max_failures`` only ends slots that never
served; a first generation that cannot start ends the master). A worker that exits 0 by itself
after serving is replaced at once. With ``timeout`` (graceful's heartbeat pipe) or ``watchdog``
(systemd ``WATCHDOG=1``), a worker silent that long is replaced first, then killed.

A worker is any command. ``posix_spawn`` places its listeners at fds 3, 4, ... and they are
named to it these ways:

- ``{fd:NAME}`` in its arguments is replaced by the fd number of listener NAME;
- otherwise ``LISTEN_FDS``/``LISTEN_FDNAMES``/``LISTEN_PID`` as systemd sets them (a
  ``/bin/sh`` exec trampoline sets ``LISTEN_PID`` to the worker's own pid, so no Python runs
  between fork and exec). Not both: a server that reads both adopts the same fd twice;
- ``GRACEFUL_FDS=name=fd,...`` for workers built on graceful.

Readiness (``ready``): ``"fd"`` - the worker writes its pid to the graceful readiness pipe
(what ``Upgrader.ready()`` does); ``"notify"`` - the master serves a ``NOTIFY_SOCKET`` to the
worker and waits for ``READY=1``; ``"delay:S"`` - ready once alive for S seconds.

WebSocket drain order (``drain_gate``, what ``graceful serve --workers`` uses): each worker also
gets one end of a socket pair (``GRACEFUL_DRAIN_GATE_FD``). A stopping worker writes
``stopped`` on it once it no longer accepts, then waits before it closes its WebSockets; the
master answers ``close CODE`` (1012 on a reload, 1001 on a final stop) once no stopping worker
still accepts (during the master's own lame duck or final stop: no worker at all, since each
may drain by its own lame duck timer before the master stops it). Without that, a client
closed by one old worker could reconnect to a sibling old worker that had not handled its stop
signal yet. A worker that never confirms holds the others
back for at most half the graceful timeout; one that closes its end (it exited, or has no
WebSockets: a WSGI worker) has nothing to confirm.

Signals: SIGHUP reloads (a new generation); SIGUSR2 re-executes the master itself through the
Upgrader. Those that come during a reload (or a master upgrade) give one more once it ends;
those that reach a master which has handed over go to the new master. SIGTTIN/SIGTTOU
add/remove a worker; SIGUSR1 is forwarded to the workers; SIGQUIT, SIGTERM (after
``shutdown_delay``) and SIGINT stop the workers with ``stop_signal`` and exit.
The master reaps every child, including orphans re-parented to it as a child subreaper.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import queue
import re
import resource
import selectors
import signal
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from . import _proc, systemd
from .heartbeat import ENV_HEARTBEAT_FD, ENV_HEARTBEAT_INTERVAL
from .drain import DRAINING, LAME_DUCK, STOPPED
from .errors import GracefulError
from .fdenv import ENV_FDS, encode_fds
from .upgrader import ENV_PARENT_PID, ENV_READY_FD, Upgrader, UpgradeError

__all__ = ["Master", "MasterError", "parse_ready"]

log = logging.getLogger("graceful")

_FD_PLACEHOLDER = re.compile(r"\{fd:([^{}]+)\}")
_BACKOFF_START, _BACKOFF_MAX = 0.5, 30.0
_MIN_HEARTBEAT_TIMEOUT = 1.0  # the serving loops beat every 0.25 s at best
_STABLE_AFTER = 10.0  # a worker alive this long is not "crashing in a loop"
ENV_DRAIN_GATE_FD = "GRACEFUL_DRAIN_GATE_FD"
SERVICE_RESTART, GOING_AWAY = 1012, 1001  # the WebSocket close codes of a reload, a final stop


class MasterError(GracefulError):
    """The master cannot start its workers as asked."""


def parse_ready(text: str) -> Tuple[str, float]:
    """``fd``, ``notify`` or ``delay:SECONDS`` -> (mode, seconds)."""
    if text in ("fd", "notify"):
        return text, 0.0
    if text.startswith("delay:"):
        try:
            seconds = float(text[6:])
        except ValueError:
            seconds = -1.0
        if seconds >= 0:
            return "delay", seconds
    raise MasterError(f"--ready {text!r}: use fd, notify or delay:SECONDS")


class _Worker:
    def __init__(self, slot: int, generation: int) -> None:
        self.slot = slot
        self.generation = generation
        self.pid = 0
        self.started = 0.0
        self.ready = False
        self.stopping = False
        self.ready_fd: Optional[int] = None  # read end of the readiness pipe ("fd")
        self.notify: Optional[socket.socket] = None  # our NOTIFY_SOCKET for it ("notify")
        self.notify_path: Optional[str] = None
        self.kill_at: Optional[float] = None  # SIGKILL deadline once stopping
        self.late = False  # missed its ready timeout outside a reload: killed, then restarted
        self.heartbeat_fd: Optional[int] = None  # read end of its heartbeat pipe (--timeout)
        self.last_beat: Optional[float] = None  # set once ready, then by every heartbeat
        self.gate: Optional[socket.socket] = None  # our end of its drain gate (drain_gate)
        self.accept_stopped = False  # it said so on the gate, or closed the gate
        self.confirm_by: Optional[float] = None  # until then, its siblings wait for that
        self.close_code = SERVICE_RESTART  # what its WebSockets get once released
        self.released = False  # told to close its WebSockets


class Master:
    """Run ``command`` as ``workers`` processes sharing the listeners ``binds``.

    ``lame_duck_signal``, when set, is sent to the workers as the master's own lame duck begins
    (SIGTERM with a ``shutdown_delay``), for workers that then report themselves not ready.
    ``handoff_socket``, ``takeover``, ``handoff_uids`` and ``takeover_fds`` are passed to the
    master's ``Upgrader``: a new master can take the listeners over from a running one, which
    then stops its workers gracefully. ``drain_gate`` orders the WebSocket drain of workers
    built on graceful (see the module's docstring)."""

    def __init__(self, command: Sequence[str], *, binds: Sequence[str] = (), workers: int = 1,
                 ready: str = "fd", stop_signal: int = signal.SIGTERM,
                 pidfile: Optional[str] = None, ready_timeout: float = 30.0,
                 graceful_timeout: float = 30.0, shutdown_delay: float = 0.0,
                 max_failures: Optional[int] = 5, respawn: bool = True,
                 env: Optional[Dict[str, str]] = None, reuse_port: bool = False,
                 lame_duck_signal: Optional[int] = None, timeout: Optional[float] = None,
                 watchdog: Optional[float] = None,
                 next_generation: Optional[Callable[[], Tuple[List[str], Dict[str, str]]]] = None,
                 drain_gate: bool = False, **handoff: Any) -> None:
        if workers < 1:
            raise MasterError(f"workers={workers}: need at least 1 worker")
        for name, value in (("timeout", timeout), ("watchdog", watchdog)):
            if value is not None and not value >= _MIN_HEARTBEAT_TIMEOUT:
                raise MasterError(f"--{name} {value:g}: give at least {_MIN_HEARTBEAT_TIMEOUT:g} "
                                  f"second(s) (workers beat several times within it)")
        if not command:
            raise MasterError("no command to run: put it after --")
        _check_command(command[0])
        self.command = list(command)
        self.ready_mode, self.ready_delay = parse_ready(ready)
        self.workers_wanted = workers
        self.stop_signal = stop_signal
        self.lame_duck_signal = lame_duck_signal
        self.ready_timeout = ready_timeout
        self.max_failures = max_failures
        self.respawn = respawn
        self.env = dict(os.environ if env is None else env)
        self.next_generation = next_generation
        self.drain_gate = drain_gate
        self.specs: Dict[int, Tuple[List[str], Dict[str, str]]] = {}  # generation -> command, env
        # A worker silent this long is replaced; "fd": graceful's heartbeat pipe, "notify":
        # systemd's WATCHDOG=1 on the NOTIFY_SOCKET we serve it.
        self.heartbeat_mode = "notify" if watchdog is not None else "fd" if timeout else None
        self.heartbeat_timeout = watchdog if watchdog is not None else timeout
        if not respawn:
            self.heartbeat_mode = self.heartbeat_timeout = None  # --init replaces nothing
        self._watchdog_every = _systemd_watchdog_interval(self.env)
        self._watchdog_next = time.monotonic() if self._watchdog_every else None
        _become_subreaper()
        self.upgrader = Upgrader(pidfile=pidfile, ready_timeout=ready_timeout,
                                 graceful_timeout=graceful_timeout, shutdown_delay=shutdown_delay,
                                 upgrade_signals=(), **handoff)
        self.lifecycle = self.upgrader.lifecycle
        listen_options = {"reuse_port": True} if reuse_port else {}
        try:
            self.listeners = [(name, sock) for name, sock in
                              (self._listen(bind, listen_options) for bind in binds)]
            self._check_placeholders(self.command)
        except BaseException:
            self.upgrader.close()
            raise
        self.generation = 0
        self.current: List[_Worker] = []  # the serving generation
        self.next: List[_Worker] = []  # a generation starting (reload), not yet ready
        self._reload_pending = False  # a SIGHUP came while ``next`` was starting
        self.retired: List[_Worker] = []  # older generations, stopping
        self.failures: Dict[int, int] = {}  # slot -> consecutive crashes (for the backoff)
        self.served: Set[int] = set()  # slots that had a ready worker: never given up
        self.given_up: Set[int] = set()  # slots that never served and kept failing
        self.respawn_at: Dict[int, float] = {}  # slot -> when to start it again
        self._status_path = f"{pidfile}.status" if pidfile is not None else None
        self._last_status = ""
        self.exit_status: Optional[int] = None
        self._orphans: Optional[Tuple[int, float]] = None  # --init: (process group, kill at)
        self.command_status: Optional[int] = None  # --init: how the command exited
        self._events: "queue.SimpleQueue[Tuple[str, int, int]]" = queue.SimpleQueue()
        # Events are numbered as they are posted: the SIGUSR2s posted before a master upgrade
        # began are coalesced into it (the upgrade blocks this loop, so they queue meanwhile).
        self._numbers = itertools.count()
        self._upgrade_began = -1
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        for signum, event in ((signal.SIGHUP, "reload"), (signal.SIGUSR2, "upgrade"),
                              (signal.SIGTTIN, "more"), (signal.SIGTTOU, "fewer"),
                              (signal.SIGUSR1, "forward"), (signal.SIGCHLD, "child")):
            self.upgrader.on_signal(signum, lambda s, e=event: self._post(e, s))
        self.lifecycle.watch(lambda state: self._post("state", 0))

    def _listen(self, bind: str, options: dict) -> Tuple[str, socket.socket]:
        from .addresses import parse_bind

        name, _ = parse_bind(bind)
        return name, self.upgrader.listen(bind, **options)

    def _check_placeholders(self, command: Sequence[str]) -> None:
        names = {name for name, _ in self.listeners}
        for arg in command:
            for name in _FD_PLACEHOLDER.findall(arg):
                if name not in names:
                    known = ", ".join(sorted(names)) or "none (add --bind NAME=ADDRESS)"
                    raise MasterError(f"{{fd:{name}}} in the command names no listener; "
                                      f"listeners: {known}")

    # -- the main loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Start the first generation, serve until stopped; returns the exit status."""
        try:
            self._start_generation(initial=True)
            while self.exit_status is None:
                self._step()
        finally:
            self._kill_everything()
            self._remove_status()
            self.upgrader.close()
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        return self.exit_status

    def _post(self, event: str, signum: int) -> None:
        self._events.put((event, signum, next(self._numbers)))
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _step(self) -> None:
        for key, _ in self._selector.select(self._next_timeout()):
            if key.data is None:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            else:
                self._on_worker_message(*key.data)
        while True:
            try:
                event, signum, number = self._events.get_nowait()
            except queue.Empty:
                break
            self._on_event(event, signum, number)
        self._reap()
        self._on_timers(time.monotonic())
        if self.drain_gate:
            # After every event of this step: a generation retired as a whole is all
            # stopping before any of it may be released.
            self._release_closes()
        if self._started() and not self.lifecycle.draining:
            self._publish_status()

    def _next_timeout(self) -> float:
        """Seconds until the next deadline that ``_on_timers`` acts on. Only those: a deadline
        that passed and that nothing clears would make every select return at once (a spin)."""
        now = time.monotonic()
        left = min(self._deadlines(), default=now + 1.0) - now
        return max(0.0, min(left, 1.0))

    def _deadlines(self) -> List[float]:
        deadlines = list(self.respawn_at.values())
        if self._watchdog_next is not None:
            deadlines.append(self._watchdog_next)
        for worker in self._all():
            if self._watched(worker):
                deadlines.append(worker.last_beat + self.heartbeat_timeout)  # type: ignore
            if worker.kill_at is not None:
                deadlines.append(worker.kill_at)
            if worker.confirm_by is not None:
                deadlines.append(worker.confirm_by)
            if self._awaiting_ready(worker):
                deadlines.append(worker.started + self.ready_timeout)
                if self.ready_mode == "delay":
                    deadlines.append(worker.started + self.ready_delay)
        return deadlines

    def _watched(self, worker: _Worker) -> bool:
        return (self.heartbeat_timeout is not None and worker.last_beat is not None
                and not worker.stopping and worker in self.current)

    @staticmethod
    def _awaiting_ready(worker: _Worker) -> bool:
        return not worker.ready and not worker.stopping and not worker.late

    def _all(self) -> List[_Worker]:
        return self.current + self.next + self.retired

    def _on_event(self, event: str, signum: int, number: int = 0) -> None:
        if not self.respawn and event in ("reload", "upgrade", "more", "fewer"):
            event = "forward"  # --init: the command itself decides what its signals mean
        if event == "reload":
            self._reload()
        elif event == "upgrade":
            self._upgrade_master(number)
        elif event == "more":
            self.workers_wanted += 1
            log.info("SIGTTIN: %d workers", self.workers_wanted)
            self._fill_slots()
        elif event == "fewer":
            if self.workers_wanted > 1:
                self.workers_wanted -= 1
                log.info("SIGTTOU: %d workers", self.workers_wanted)
                extra = [w for w in self.current if w.slot >= self.workers_wanted]
                for worker in extra:
                    self.current.remove(worker)
                    self._retire(worker)
        elif event == "forward":
            for worker in self._all():
                self._signal(worker, signum)
        elif event == "state" and self.lifecycle.draining and self.exit_status is None:
            self._shutdown()
        elif event == "state" and self.lifecycle.state == LAME_DUCK \
                and self.lame_duck_signal is not None:
            # Workers that know the lame duck report not-ready (a readiness path answers 503)
            # while they keep serving; the stop signal follows when the delay is over.
            for worker in self._all():
                self._signal(worker, self.lame_duck_signal)

    # -- generations ----------------------------------------------------------------------------

    def _start_generation(self, initial: bool = False) -> None:
        command, env = self.command, self.env
        if not initial and self.next_generation is not None:
            # The configuration is read again, so a changed file reaches the new workers; a
            # MasterError here fails the reload and the serving generation is untouched.
            command, extra = self.next_generation()
            self._check_placeholders(command)
            env = dict(self.env, **extra)
        self.generation += 1
        self.specs[self.generation] = (list(command), env)
        for old in [g for g in self.specs if g < self.generation - 2]:
            del self.specs[old]  # a respawn only ever needs the serving or the next generation
        workers = []
        try:
            for slot in range(self.workers_wanted):
                workers.append(self._spawn(slot, self.generation))
        except MasterError:
            for worker in workers:
                self._retire(worker, kill=True)
            raise
        if initial:
            self.current = workers
        else:
            self.next = workers
        log.info("generation %d: started %d worker(s): %s", self.generation, len(workers),
                 " ".join(str(w.pid) for w in workers))

    def _reload(self) -> None:
        if self.upgrader.pass_on(signal.SIGHUP):
            return  # this master handed over (SIGUSR2, a takeover): the one serving reloads
        if self.next:
            # The generation starting may already run the old code or configuration: one more
            # reload follows once it is serving or rolled back, however many SIGHUPs come now.
            if not self._reload_pending:
                log.info("SIGHUP: a reload is in progress (generation %d); one more follows "
                         "once it ends", self.generation)
            else:
                log.info("SIGHUP: a reload is in progress and one more is already due; "
                         "coalesced")
            self._reload_pending = True
            return
        if self.lifecycle.draining:
            return
        log.info("SIGHUP: reloading: starting generation %d", self.generation + 1)
        systemd.reloading()
        try:
            self._start_generation()
        except MasterError as exc:
            self._reload_failed(str(exc))

    def _reload_failed(self, why: str) -> None:
        log.error("reload failed, generation %d keeps serving: %s",
                  self.current[0].generation if self.current else 0, why)
        for worker in self.next:
            # Those already ready serve requests: they drain like any retired worker (stop
            # signal, in-flight work finishes, SIGKILL only at the graceful timeout).
            self._retire(worker)
        self.next = []
        systemd.notify("READY=1", f"STATUS=reload failed: {why}")
        self._reload_ended()

    def _reload_ended(self) -> None:
        """The reload in progress is over (serving or rolled back): a SIGHUP that came during
        it now gets its own reload (posted: it runs after this step's other events)."""
        if self._reload_pending:
            self._reload_pending = False
            log.info("SIGHUP came during generation %d's start: reloading again",
                     self.generation)
            self._post("reload", signal.SIGHUP)

    def _generation_ready(self) -> None:
        """Every worker of the next generation is ready: it takes over."""
        old, self.current, self.next = self.current, self.next, []
        for worker in old:
            self._retire(worker)
        self.respawn_at.clear()
        self.failures.clear()
        self.given_up.clear()
        log.info("generation %d is serving (workers %s)", self.current[0].generation,
                 " ".join(str(w.pid) for w in self.current))
        if not self._started():
            # A reload that finished before the first generation was ready: this one is the
            # first to be ready, so the master is ready now (pidfile, sd_notify, lame duck).
            self.upgrader.ready()
        else:
            systemd.ready()
        self._reload_ended()

    def _upgrade_master(self, number: int) -> None:
        """SIGUSR2: re-execute the master itself; its successor starts its own workers.
        SIGUSR2s that came during one upgrade give one more (``number``: when it was posted)."""
        if number < self._upgrade_began:
            log.info("SIGUSR2: came during a master upgrade, and one more is already done or "
                     "passed on; coalesced")
            return
        self._upgrade_began = next(self._numbers)
        if self.upgrader.pass_on(signal.SIGUSR2):
            return  # already handed over: the master serving now re-executes
        try:
            pid = self.upgrader.upgrade()
        except UpgradeError as exc:
            log.error("SIGUSR2: master upgrade not done: %s", exc)
            return
        log.info("SIGUSR2: master pid %d took over; stopping this master's workers", pid)

    def _shutdown(self) -> None:
        log.info("stopping: %s", self.lifecycle.reason or "giving up")
        if not self.lifecycle.handed_over:
            # A final stop: the workers are the last holders and serve what is queued; our
            # copies would keep the queue open (connections waiting there, then reset).
            for _, sock in self.listeners:
                sock.close()
        final = self._final_stop()
        for worker in self.next + self.current:
            self._retire(worker, code=GOING_AWAY if final else SERVICE_RESTART)
        self.next, self.current = [], []
        self.respawn_at.clear()
        if self._reload_pending:  # after a handover, a reload still due is the new master's
            self._reload_pending = False
            self.upgrader.pass_on(signal.SIGHUP)
        self._maybe_finish()

    # -- workers --------------------------------------------------------------------------------

    def _spawn(self, slot: int, generation: int) -> _Worker:
        """Start one worker: listeners at fds 3, 4, ... (dup2 by posix_spawn, no Python between
        fork and exec), then an ``sh`` trampoline sets LISTEN_PID to the worker's own pid."""
        worker = _Worker(slot, generation)
        command, base_env = self.specs.get(generation, (self.command, self.env))
        env = dict(base_env)
        names = [name for name, _ in self.listeners]
        fd_of = {name: 3 + i for i, name in enumerate(names)}
        args = [_FD_PLACEHOLDER.sub(lambda m: str(fd_of[m.group(1)]), a) for a in command]
        for var in ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID", ENV_FDS, "NOTIFY_SOCKET",
                    ENV_READY_FD, ENV_PARENT_PID, "WATCHDOG_USEC", "WATCHDOG_PID",
                    ENV_HEARTBEAT_FD, ENV_HEARTBEAT_INTERVAL, ENV_DRAIN_GATE_FD):
            env.pop(var, None)
        systemd_fds = bool(names) and not any(_FD_PLACEHOLDER.search(a) for a in command)
        if systemd_fds:
            # Not when the command names its fds itself: a server that reads both (gunicorn
            # --bind fd://{fd:web}) would adopt fd 3 twice, and its second adoption fails.
            env["LISTEN_FDS"] = str(len(names))
            env["LISTEN_FDNAMES"] = ":".join(names)
        if names:
            env[ENV_FDS] = encode_fds(fd_of)
        # Sources are first moved out of the way (above every target fd, close-on-exec), so
        # no dup2 overwrites a source that a later dup2 still needs.
        above = (3 + len(names) + (self.ready_mode == "fd") + (self.heartbeat_mode == "fd")
                 + self.drain_gate)
        sources: List[int] = []
        try:
            for _, sock in self.listeners:
                sources.append(_dup_above(sock.fileno(), above))
            if self.ready_mode == "fd":
                worker.ready_fd, ready_w = os.pipe()
                try:
                    sources.append(_dup_above(ready_w, above))
                finally:
                    os.close(ready_w)
                env[ENV_READY_FD] = str(3 + len(sources) - 1)
                env[ENV_PARENT_PID] = str(os.getpid())
            if self.heartbeat_mode == "fd":
                worker.heartbeat_fd, beat_w = os.pipe()
                os.set_blocking(worker.heartbeat_fd, False)
                try:
                    sources.append(_dup_above(beat_w, above))
                finally:
                    os.close(beat_w)
                env[ENV_HEARTBEAT_FD] = str(3 + len(sources) - 1)
                env[ENV_HEARTBEAT_INTERVAL] = f"{self.heartbeat_timeout / 4:g}"  # type: ignore
            if self.drain_gate:
                worker.gate, theirs = socket.socketpair()
                worker.gate.setblocking(False)
                try:
                    sources.append(_dup_above(theirs.fileno(), above))
                finally:
                    theirs.close()
                env[ENV_DRAIN_GATE_FD] = str(3 + len(sources) - 1)
            if self.ready_mode == "notify" or self.heartbeat_mode == "notify":
                worker.notify, worker.notify_path = _notify_socket()
                env["NOTIFY_SOCKET"] = worker.notify_path
            script = 'exec "$0" "$@"'
            if self.heartbeat_mode == "notify":
                env["WATCHDOG_USEC"] = str(int(self.heartbeat_timeout * 1_000_000))  # type: ignore
                script = "WATCHDOG_PID=$$ " + script  # the worker's own pid, as systemd sets it
            if systemd_fds:
                script = "LISTEN_PID=$$ " + script
            actions = [(os.POSIX_SPAWN_DUP2, fd, 3 + i) for i, fd in enumerate(sources)]
            # --init: the command gets a process group of its own, and signals go to the whole
            # group, so a shell wrapper that does not exec cannot keep them from the server.
            group = {} if self.respawn else {"setpgroup": 0}
            try:
                pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", script, *args], env,
                                     file_actions=actions, **group)
            except OSError as exc:
                raise MasterError(f"cannot start {args[0]!r}: {exc.strerror}") from None
        except OSError as exc:
            self._close_channels(worker)
            self._close_gate(worker)
            raise _fd_error(exc, above) from None
        except BaseException:
            self._close_channels(worker)
            self._close_gate(worker)
            raise
        finally:
            for fd in sources:
                os.close(fd)
        worker.pid = pid
        worker.started = time.monotonic()
        for channel, kind in ((worker.ready_fd, "ready"), (worker.heartbeat_fd, "beat"),
                              (worker.notify, "notify"), (worker.gate, "gate")):
            if channel is not None:
                self._selector.register(channel, selectors.EVENT_READ, (worker, kind))
        return worker

    def _on_worker_message(self, worker: _Worker, kind: str) -> None:
        if kind == "ready":
            try:
                data = os.read(worker.ready_fd, 64)  # type: ignore
            except OSError:
                data = b""
            self._close_channel(worker, "ready_fd")
            if data.strip().isdigit():
                self._mark_ready(worker)
            return  # EOF without a pid: it exits, and the reaper says why
        if kind == "beat":
            try:
                data = os.read(worker.heartbeat_fd, 4096)  # type: ignore
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_channel(worker, "heartbeat_fd")  # it exits: the reaper says why
            elif worker.last_beat is not None:
                worker.last_beat = time.monotonic()
            return
        if kind == "gate":
            self._on_gate_message(worker)
            return
        try:
            lines = worker.notify.recv(4096).split(b"\n")  # type: ignore
        except OSError:
            return
        if b"WATCHDOG=1" in lines and worker.last_beat is not None:
            worker.last_beat = time.monotonic()
        if b"READY=1" in lines:
            if self.heartbeat_mode != "notify":
                self._close_channel(worker, "notify")
            self._mark_ready(worker)

    def _mark_ready(self, worker: _Worker) -> None:
        if worker.ready or worker.stopping:
            return
        worker.ready = True
        worker.last_beat = time.monotonic()  # watched from now on (with --timeout)
        self.served.add(worker.slot)
        log.debug("worker %d (generation %d) is ready", worker.pid, worker.generation)
        if worker in self.next and all(w.ready for w in self.next):
            self._generation_ready()
        elif worker in self.current and all(w.ready for w in self.current):
            if not self._started():
                self.upgrader.ready()

    def _started(self) -> bool:
        """Whether the first generation became ready (and the master declared itself ready)."""
        return self.lifecycle.state != "starting"

    def _close_channels(self, worker: _Worker) -> None:
        for attribute in ("ready_fd", "heartbeat_fd", "notify"):
            self._close_channel(worker, attribute)

    def _close_channel(self, worker: _Worker, attribute: str) -> None:
        channel = getattr(worker, attribute)
        if channel is None:
            return
        try:
            self._selector.unregister(channel)
        except (KeyError, ValueError):
            pass
        if isinstance(channel, int):
            os.close(channel)
        else:
            channel.close()
        setattr(worker, attribute, None)
        if attribute == "notify":
            if worker.notify_path and not worker.notify_path.startswith("@"):
                _unlink_quietly(worker.notify_path)
            worker.notify_path = None

    def _retire(self, worker: _Worker, kill: bool = False,
                code: int = SERVICE_RESTART) -> None:
        """Stop a worker: the stop signal, then SIGKILL at the deadline. ``code``: what its
        WebSockets get (a final stop that overtakes a reload still makes it 1001)."""
        self._close_channels(worker)
        if code == GOING_AWAY and not worker.released:
            worker.close_code = code
        if worker.stopping:
            return
        worker.stopping = True
        if worker.gate is not None and not worker.accept_stopped:
            # Half the timeout at most for the siblings to wait: their WebSockets still get
            # the other half to close.
            worker.confirm_by = time.monotonic() + self.lifecycle.graceful_timeout / 2
        if worker not in self.retired:
            self.retired.append(worker)
        if kill:
            self._signal(worker, signal.SIGKILL)
            worker.kill_at = None
        else:
            self._signal(worker, self.stop_signal)
            worker.kill_at = time.monotonic() + self.lifecycle.graceful_timeout

    # -- the drain gate (WebSockets close only once no stopping worker accepts) -----------------

    def _on_gate_message(self, worker: _Worker) -> None:
        try:
            data = worker.gate.recv(4096)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_gate(worker)  # exited, or nothing to confirm (no WebSockets)
        elif b"stopped" in data:
            log.debug("worker %d stopped accepting", worker.pid)
            worker.accept_stopped = True
            worker.confirm_by = None

    def _release_closes(self) -> None:
        """Once no worker that goes away accepts any more, those that stopped may close their
        WebSockets: a client they close can only reconnect to a worker that stays. In our own
        lame duck every worker goes away (each may drain by its own lame duck timer first)."""
        final = self._final_stop()
        if any((w.stopping or final) and not w.accept_stopped for w in self._all()):
            return
        for worker in self._all():
            if worker.accept_stopped and not worker.released and worker.gate is not None:
                worker.released = True
                code = GOING_AWAY if final else worker.close_code
                try:
                    worker.gate.send(b"close %d\n" % code)
                except OSError:
                    self._close_gate(worker)  # gone: the reaper says why

    def _final_stop(self) -> bool:
        """Whether this master is ending for good (lame duck or drain, not a handover)."""
        return (self.lifecycle.state in (LAME_DUCK, DRAINING, STOPPED)
                and not self.lifecycle.handed_over)

    def _close_gate(self, worker: _Worker) -> None:
        worker.accept_stopped = True  # a closed gate holds nobody back
        worker.confirm_by = None
        if worker.gate is None:
            return
        try:
            self._selector.unregister(worker.gate)
        except (KeyError, ValueError):
            pass
        worker.gate.close()
        worker.gate = None

    def _confirm_overdue(self, worker: _Worker) -> None:
        log.warning("worker %d did not confirm within %gs that it stopped accepting: the other "
                    "stopping workers close their WebSockets anyway", worker.pid,
                    self.lifecycle.graceful_timeout / 2)
        worker.accept_stopped = True
        worker.confirm_by = None

    def _signal(self, worker: _Worker, signum: int) -> None:
        _kill(worker.pid if self.respawn else -worker.pid, signum)  # --init: its whole group

    def _reap(self) -> None:
        for pid, status in _proc.reap_exited():
            self._on_exit(pid, status)
        if self._orphans is not None:
            self._maybe_finish()

    def _on_exit(self, pid: int, status: int) -> None:
        worker = next((w for w in self._all() if w.pid == pid), None)
        if worker is None:
            log.debug("reaped pid %d (%s)", pid, _describe(status))
            return
        self._close_channels(worker)
        self._close_gate(worker)
        if not self.respawn:
            if self.command_status is None:
                self.command_status = _exit_code(status)  # --init: the command's status is ours
            self._wait_for_orphans(worker.pid, already_stopping=worker.stopping)
        if worker in self.retired:
            self.retired.remove(worker)
            log.info("worker %d (generation %d) exited: %s", pid, worker.generation,
                     _describe(status))
            self._maybe_finish()
            return
        if worker in self.next:
            # Gone already: it must not be retired again (a reaped worker in the retired list
            # would keep the master from ever finishing, and its past deadlines would spin it).
            self.next.remove(worker)
            self._reload_failed(f"worker {pid} {_describe(status)} before it was ready")
            return
        self.current.remove(worker)
        if not self.respawn:
            self.lifecycle.drain("the command exited")  # --init: we are done once it is
            self._shutdown()
            return
        self._worker_exited(worker, status)

    def _worker_exited(self, worker: _Worker, status: int) -> None:
        """A serving worker exited by itself: a clean exit is replaced at once (servers that
        recycle themselves, e.g. uvicorn --limit-max-requests); anything else is a crash."""
        if worker.ready and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            log.info("worker %d (slot %d) exited with status 0 by itself: replacing it",
                     worker.pid, worker.slot)
            self._respawn(worker.slot)
        else:
            self._worker_crashed(worker, status)

    def _worker_crashed(self, worker: _Worker, status: int) -> None:
        """Back off per slot, capped; give a slot up only if it never served (capacity is the
        promise: a long-running service keeps every slot it once had)."""
        slot = worker.slot
        if worker.ready and time.monotonic() - worker.started >= _STABLE_AFTER:
            self.failures[slot] = 0
        failures = self.failures[slot] = self.failures.get(slot, 0) + 1
        if not self._started():
            log.error("worker %d %s before the first generation was ready", worker.pid,
                      _describe(status))
            self._give_up("the first generation did not start")
            return
        if (slot not in self.served and self.max_failures is not None
                and failures > self.max_failures):
            log.error("worker %d %s; slot %d never served and failed %d times in a row: not "
                      "restarting it (use --max-failures or --keep-trying to change)",
                      worker.pid, _describe(status), slot, failures)
            self.given_up.add(slot)
            if not self.current and not self.respawn_at:
                self._give_up("every worker keeps failing")
            return
        delay = min(_BACKOFF_MAX, _BACKOFF_START * 2 ** min(failures - 1, 16))
        log.warning("worker %d %s; restarting slot %d in %.1fs (failure %d in a row)",
                    worker.pid, _describe(status), slot, delay, failures)
        self.respawn_at[slot] = time.monotonic() + delay

    def status_text(self) -> str:
        """One line for sd_notify STATUS and ``graceful status``: capacity and slots waiting."""
        serving = sum(1 for w in self.current if w.ready and not w.stopping)
        parts = [f"{serving} of {self.workers_wanted} workers serving"]
        for slot in sorted(self.respawn_at):
            parts.append(f"slot {slot} restarting after {self.failures.get(slot, 0)} failure(s)")
        for slot in sorted(self.given_up):
            parts.append(f"slot {slot} given up after {self.failures.get(slot, 0)} failures")
        return "; ".join(parts)

    def _publish_status(self) -> None:
        text = self.status_text()
        if text == self._last_status:
            return
        self._last_status = text
        systemd.status(text)
        if self._status_path is not None:
            _write_status(self._status_path, text)

    def _remove_status(self) -> None:
        if self._status_path is not None and read_status(self._status_path)[0] == os.getpid():
            _unlink_quietly(self._status_path)

    def _give_up(self, why: str) -> None:
        log.error("giving up: %s", why)
        self.exit_status = 1
        self._shutdown()

    def _fill_slots(self) -> None:
        taken = {w.slot for w in self.current}
        for slot in range(self.workers_wanted):
            if slot not in taken and slot not in self.respawn_at and not self.lifecycle.draining:
                self.given_up.discard(slot)  # asked for again (SIGTTIN): a fresh start
                self._respawn(slot)

    def _respawn(self, slot: int) -> None:
        try:
            worker = self._spawn(slot, self.current[0].generation if self.current else self.generation)
        except MasterError as exc:
            log.error("cannot restart slot %d: %s", slot, exc)
            self.respawn_at[slot] = time.monotonic() + _BACKOFF_MAX
            return
        self.current.append(worker)
        log.info("slot %d: started worker %d", slot, worker.pid)

    def _on_timers(self, now: float) -> None:
        if self._orphans is not None:
            self._maybe_finish()
        if self._watchdog_next is not None and now >= self._watchdog_next:
            systemd.notify("WATCHDOG=1")  # systemd's own watchdog over the master
            self._watchdog_next = now + self._watchdog_every
        for worker in list(self.current):
            if self._watched(worker):
                silent = now - worker.last_beat  # type: ignore
                if silent >= self.heartbeat_timeout:  # type: ignore
                    self._replace_hung(worker, silent)
        for slot, when in list(self.respawn_at.items()):
            if now >= when:
                del self.respawn_at[slot]
                if not self.lifecycle.draining:
                    self._respawn(slot)
        for worker in list(self._all()):
            if worker.confirm_by is not None and now >= worker.confirm_by:
                self._confirm_overdue(worker)
            if worker.kill_at is not None and now >= worker.kill_at:
                log.warning("worker %d did not stop within the graceful timeout: SIGKILL",
                            worker.pid)
                self._signal(worker, signal.SIGKILL)
                worker.kill_at = None
            elif self._awaiting_ready(worker):
                if self.ready_mode == "delay" and now - worker.started >= self.ready_delay:
                    self._mark_ready(worker)
                elif now - worker.started >= self.ready_timeout:
                    self._not_ready_in_time(worker)

    def _replace_hung(self, worker: _Worker, silent: float) -> None:
        """A worker whose loop stopped (deadlock, SIGSTOP): its clients wait forever. The
        replacement starts first, then the hung one is killed (only SIGKILL ends a stopped
        process)."""
        log.error("worker %d (slot %d) sent no heartbeat for %.1fs (timeout %gs): starting a "
                  "replacement, then killing it", worker.pid, worker.slot, silent,
                  self.heartbeat_timeout)
        self.current.remove(worker)
        self._respawn(worker.slot)
        self._retire(worker, kill=True)

    def _not_ready_in_time(self, worker: _Worker) -> None:
        why = f"worker {worker.pid} was not ready within {self.ready_timeout:g}s"
        if worker in self.next:
            self._reload_failed(why)
        else:
            log.error("%s: stopping it", why)
            worker.late = True  # not waited on again; the reaper restarts it
            self._signal(worker, signal.SIGKILL)

    def _wait_for_orphans(self, group: int, already_stopping: bool) -> None:
        """--init: the command exited, but what it started in its process group (a server
        behind a shell wrapper) may still run: stop it gracefully, and wait for it."""
        if _group_alive(group):
            log.info("command exited; processes of its group are still running: waiting up to "
                     "%gs for them to stop", self.lifecycle.graceful_timeout)
            if not already_stopping:  # (a second stop signal would mean "now" to many servers)
                _kill(-group, self.stop_signal)
            self._orphans = (group, time.monotonic() + self.lifecycle.graceful_timeout)

    def _orphans_left(self) -> bool:
        if self._orphans is None:
            return False
        group, kill_at = self._orphans
        if not _group_alive(group):
            self._orphans = None
            return False
        if time.monotonic() >= kill_at:
            log.warning("processes of group %d did not stop within the graceful timeout: "
                        "SIGKILL", group)
            _kill(-group, signal.SIGKILL)
        return True

    def _maybe_finish(self) -> None:
        if self.lifecycle.draining and not self._all() and not self._orphans_left():
            if self.exit_status is None:
                self.exit_status = self.command_status if self.command_status is not None else 0

    def _kill_everything(self) -> None:
        for worker in self._all():
            self._signal(worker, signal.SIGKILL)
            self._close_channels(worker)
            self._close_gate(worker)
        if self._orphans is not None:
            _kill(-self._orphans[0], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self._all() and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            for group in (self.current, self.next, self.retired):
                for w in [w for w in group if w.pid == pid]:
                    group.remove(w)


# -- helpers ------------------------------------------------------------------------------------


def _check_command(program: str) -> None:
    import shutil

    if os.sep in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise MasterError(f"cannot run {program!r}: no such executable file")
    elif shutil.which(program) is None:
        raise MasterError(f"cannot run {program!r}: not found on PATH")


def _systemd_watchdog_interval(env: Dict[str, str]) -> Optional[float]:
    """Half of systemd's WATCHDOG_USEC when it is meant for this process, else None."""
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def _dup_above(fd: int, at_least: int) -> int:
    """The lowest free fd >= ``at_least`` (within RLIMIT_NOFILE), close-on-exec."""
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, at_least)


def _fd_error(exc: OSError, needed: int) -> MasterError:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if exc.errno in (errno.EMFILE, errno.EINVAL, errno.ENFILE):
        return MasterError(f"cannot pass fds 3..{needed - 1} to a worker: the open-file limit "
                           f"(RLIMIT_NOFILE, ulimit -n) is {soft}; raise it")
    return MasterError(f"cannot start a worker: {exc.strerror or exc}")


def _notify_socket() -> Tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@graceful-notify-{os.getpid()}-{os.urandom(6).hex()}"
    sock.bind(b"\0" + name[1:].encode())
    sock.setblocking(False)
    return sock, name


def _write_status(path: str, text: str) -> None:
    """Our pid, then ``text``, to ``path`` by rename, so a reader never sees half of it."""
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temp, "w") as f:
            f.write(f"{os.getpid()}\n{text}\n")
        os.replace(temp, path)
    except OSError as exc:
        log.debug("cannot write %s: %s", path, exc)


def read_status(path: str) -> Tuple[Optional[int], str]:
    """(pid of the master that wrote it, its status line), or (None, "")."""
    try:
        with open(path) as f:
            pid, _, text = f.read().partition("\n")
        return int(pid), text.strip()
    except (OSError, ValueError):
        return None, ""


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _group_alive(group: int) -> bool:
    """Whether any process of process group ``group`` is left. (Zombies count until the main
    loop's reaper, which runs before every check, has reaped them.)"""
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _kill(pid: int, signum: int) -> None:
    """Signal ``pid`` (or, when negative, its process group); gone is fine."""
    if pid in (0, -1):
        return
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _become_subreaper() -> None:
    """Orphaned descendants (a worker's own re-exec'd successor) become our children (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
            log.debug("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError):
        log.debug("no PR_SET_CHILD_SUBREAPER here")

