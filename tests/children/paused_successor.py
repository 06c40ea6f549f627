"""The demo server, whose next successor stops for good at one step of becoming ready.

Usage: paused_successor.py STEP MARKER DEMO-SERVER-OPTIONS...

The first successor started (the one that finds no file MARKER; it creates it) prints
``PAUSED STEP PID`` on stdout when it reaches STEP, then blocks until it is killed, so a test can
kill it exactly there instead of racing its timing. Later generations do not pause. Steps, in the
order a successor meets them:

- ``before-ready``: listeners claimed, ``ready()`` not called yet;
- ``before-pidfile``: inside ``ready()``, pidfile staged (a temp file), not in place yet;
- ``after-pidfile``: the pidfile names this successor; the predecessor has not heard "ready";
- ``after-ready``: the predecessor has read "ready" and drains.
"""

import os
import sys
import threading

import graceful.upgrader
from graceful import _demo_server
from graceful.pidfile import Pidfile

STEPS = ("before-ready", "before-pidfile", "after-pidfile", "after-ready")


def pause_if(step: str, here: str, marker: str) -> None:
    if step != here:
        return
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return  # an earlier successor paused already
    print(f"PAUSED {here} {os.getpid()}", flush=True)
    threading.Event().wait()  # until the test kills us


def install_pauses(step: str, marker: str) -> None:
    handover, report_ready = Pidfile.handover, graceful.upgrader._report_ready
    serve = _demo_server.run_socketserver

    def paused_handover(self, predecessor_pid):
        pause_if(step, "before-pidfile", marker)
        handover(self, predecessor_pid)
        pause_if(step, "after-pidfile", marker)

    def paused_report_ready(fd):
        report_ready(fd)
        pause_if(step, "after-ready", marker)

    def paused_serve(upgrader, server):
        pause_if(step, "before-ready", marker)
        serve(upgrader, server)

    Pidfile.handover = paused_handover
    graceful.upgrader._report_ready = paused_report_ready
    _demo_server.run_socketserver = paused_serve


def main() -> int:
    step, marker, options = sys.argv[1], sys.argv[2], sys.argv[3:]
    if step not in STEPS:
        sys.exit(f"paused_successor.py: unknown step {step!r}; choose one of {', '.join(STEPS)}")
    if "GRACEFUL_PARENT_PID" in os.environ:  # a successor (the first generation never pauses)
        install_pauses(step, marker)
    return _demo_server.main(options)


if __name__ == "__main__":
    sys.exit(main())
