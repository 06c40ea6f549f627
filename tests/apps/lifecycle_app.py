"""A WSGI application whose start and whose one slow request the test controls.

``LIFECYCLE_APP_CONTROL`` names a directory:

- ``readiness`` in it says ``fail`` or ``ok``. On ``fail`` the import connects to
  ``start.sock`` (the test accepts: "this attempt is starting") and waits until the test closes
  that connection, then fails: a successor that fails slowly, at a moment the test chooses.
- ``GET /hold`` connects to ``hold.sock`` (the test accepts: "this request is in flight") and
  answers once the test closes that connection: a request that keeps its generation draining.

``LIFECYCLE_APP_DIE_BEFORE_READY=PIDFILE`` makes a process that takes over by ``--takeover``
SIGKILL itself just before it tells the old process it is ready (when it has taken PIDFILE),
after writing to stderr which pid PIDFILE names at that moment.
"""

import os
import signal
import socket
import sys

CONTROL = os.environ.get("LIFECYCLE_APP_CONTROL", "")
_WAIT_LIMIT = 120.0  # a test that died must not leave this process waiting for ever


def _wait_for_the_test(name: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(_WAIT_LIMIT)
        conn.connect(os.path.join(CONTROL, name))
        conn.sendall(b"%d\n" % os.getpid())
        while conn.recv(64):
            pass


def _verdict() -> str:
    if not CONTROL:
        return "ok"
    try:
        with open(os.path.join(CONTROL, "readiness")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return "ok"


def _die_before_ready(pidfile: str) -> None:
    import graceful.handoff
    from graceful.pidfile import read_pid

    def confirm_ready(conn, timeout=30.0):
        sys.stderr.write(f"dying before READY; the pidfile names {read_pid(pidfile)}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    graceful.handoff.confirm_ready = confirm_ready  # the upgrader imports it when it is ready


if os.environ.get("LIFECYCLE_APP_DIE_BEFORE_READY"):
    _die_before_ready(os.environ["LIFECYCLE_APP_DIE_BEFORE_READY"])

if _verdict() == "fail":
    _wait_for_the_test("start.sock")
    raise RuntimeError("the readiness file says fail")


def app(environ, start_response):
    if environ["PATH_INFO"] == "/hold":
        _wait_for_the_test("hold.sock")
        body = b"held\n"
    else:
        body = b"hello\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                              ("X-Pid", str(os.getpid()))])
    return [body]
