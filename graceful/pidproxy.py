"""``graceful pidproxy PIDFILE -- COMMAND``: a stable foreground process for supervisors.

supervisord (and anything else that tracks the process it started) loses a server that
re-executes itself: the pid it started exits at the first upgrade. pidproxy starts COMMAND,
stays in the foreground, forwards signals to whichever pid PIDFILE names at that moment,
follows that pid across upgrades, and exits with the served process's status once the last
generation is gone. It is a child subreaper, so re-executed generations become its children and
their exit status can be collected.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
from typing import Dict, List, Optional, Sequence

from . import _proc
from .pidfile import read_pid
from .signals import SignalDispatcher

__all__ = ["run_pidproxy", "FORWARDED"]

log = logging.getLogger("graceful")

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU)
_POLL = 0.5  # fallback re-check of the pidfile when pidfd_open is unavailable


def run_pidproxy(pidfile: str, command: Sequence[str]) -> int:
    """Run ``command`` and proxy it until its last generation exits; returns its status."""
    from .master import _become_subreaper, _exit_code

    _become_subreaper()
    dispatcher = SignalDispatcher()
    proc = subprocess.Popen(list(command))
    proc.returncode = 0  # reaped below with waitpid(-1)
    statuses: Dict[int, int] = {}
    current = proc.pid

    def forward(signum: int) -> None:
        target = _live_pid(pidfile) or current
        log.info("pidproxy: forwarding %s to pid %d", signal.Signals(signum).name, target)
        try:
            os.kill(target, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        dispatcher.on(signum, forward)
    dispatcher.on(signal.SIGCHLD, lambda signum: None)
    dispatcher.install()
    try:
        while True:
            _wait_exit(current, dispatcher)
            dispatcher.dispatch()
            _reap(statuses)
            if _alive(current):
                continue
            successor = _live_pid(pidfile)
            if successor is not None and successor != current:
                log.info("pidproxy: pid %d is gone; following pid %d", current, successor)
                current = successor
                continue
            if _children_alive():
                continue  # a successor may not have written the pidfile yet
            status = statuses.get(current)
            return _exit_code(status) if status is not None else 0
    finally:
        dispatcher.close()


def _wait_exit(pid: int, dispatcher: SignalDispatcher) -> None:
    """Block until ``pid`` exits, a signal arrives, or the fallback poll interval passes."""
    fds: List[int] = [dispatcher.fileno()]
    pidfd: Optional[int] = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
            fds.append(pidfd)
        except OSError:
            return  # already gone
    try:
        select.select(fds, [], [], _POLL if pidfd is None else 5.0)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _reap(statuses: Dict[int, int]) -> None:
    statuses.update(_proc.reap_exited())


def _alive(pid: int) -> bool:
    return _proc.running(pid)


def _children_alive() -> bool:
    return bool(_proc.children(os.getpid()))


def _live_pid(pidfile: str) -> Optional[int]:
    try:
        pid = read_pid(pidfile)
    except Exception:
        return None
    return pid if pid is not None and _alive(pid) else None
