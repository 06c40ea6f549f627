"""``graceful serve APP``: load a WSGI or ASGI application and run it under the Upgrader.

APP is ``module:attribute``, ``path/to/file.py:attribute`` or ``module:factory()`` (called with
no arguments). The interface is detected from the callable: a coroutine function (or an object
whose ``__call__`` is one) taking three arguments is ASGI, anything else WSGI.
SIGHUP re-executes the same command, so the successor imports the code now on disk.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, List, TextIO

from .errors import GracefulError

__all__ = ["load_app", "detect_interface", "AppLoadError", "AccessLog", "run"]

log = logging.getLogger("graceful")


class AppLoadError(GracefulError):
    """The application named on the command line cannot be loaded."""


def load_app(spec: str) -> Callable[..., Any]:
    """Import ``module:attr``, ``file.py:attr`` or ``module:factory()``."""
    module_text, colon, attr_text = spec.rpartition(":")
    if not colon or not module_text or not attr_text:
        raise AppLoadError(f"cannot load {spec!r}: write MODULE:APP, path/to/file.py:APP or "
                           f"MODULE:factory()")
    call = attr_text.endswith("()")
    if call:
        attr_text = attr_text[:-2]
    module = _import(module_text, spec)
    target: Any = module
    for part in attr_text.split("."):
        if not part.isidentifier():
            raise AppLoadError(f"cannot load {spec!r}: {attr_text!r} is not an attribute name")
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppLoadError(f"cannot load {spec!r}: {module_text} has no attribute "
                               f"{attr_text!r}") from None
    if call:
        target = target()
    if not callable(target):
        raise AppLoadError(f"cannot load {spec!r}: {attr_text} is a {type(target).__name__}, "
                           f"not an application callable")
    return target


def _import(module_text: str, spec: str) -> Any:
    if module_text.endswith(".py") or os.sep in module_text:
        path = os.path.abspath(module_text)
        if not os.path.isfile(path):
            raise AppLoadError(f"cannot load {spec!r}: no file {path}")
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)  # so the app's own sibling imports work
        name = os.path.splitext(os.path.basename(path))[0]
        file_spec = importlib.util.spec_from_file_location(name, path)
        assert file_spec is not None and file_spec.loader is not None
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[name] = module
        file_spec.loader.exec_module(module)
        return module
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like gunicorn and uvicorn: modules in the cwd load
    try:
        return importlib.import_module(module_text)
    except ModuleNotFoundError as exc:
        if exc.name and module_text.startswith(exc.name):
            raise AppLoadError(f"cannot load {spec!r}: no module named {exc.name!r} (run from "
                               f"the project directory, or set PYTHONPATH)") from None
        raise


def detect_interface(app: Any) -> str:
    """``"asgi"`` for an ASGI 3 callable, else ``"wsgi"``."""
    call = app if inspect.isroutine(app) else getattr(app, "__call__", None)
    if inspect.iscoroutinefunction(call):
        return "asgi"
    return "wsgi"


class AccessLog:
    """Common Log Format lines to stderr (``-``) or a file, reopened on SIGUSR1."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._file: TextIO = sys.stderr if target == "-" else self._open()

    def _open(self) -> TextIO:
        try:
            return open(self.target, "a", buffering=1, encoding="utf-8")
        except OSError as exc:
            raise GracefulError(f"cannot open access log {self.target}: {exc.strerror}") from None

    def __call__(self, line: str) -> None:
        with self._lock:
            self._file.write(line + "\n")

    def reopen(self) -> None:
        """After logrotate moved the file: write to a new one at the same path."""
        if self.target == "-":
            return
        with self._lock:
            old, self._file = self._file, self._open()
        old.close()


def run(args: Any) -> int:
    """The body of ``graceful serve`` (``args`` from the CLI parser)."""
    from ._options import ServerOptions
    from .http11 import Limits
    from .upgrader import Upgrader

    from .addresses import parse_bind

    binds: List[str] = args.bind or ["web=127.0.0.1:8000"]
    for bind in binds:
        parse_bind(bind)  # a typo in --bind is reported before anything starts
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s [%(process)d] %(levelname)s %(message)s")
    access_log = AccessLog(args.access_log) if args.access_log else None
    upgrader = Upgrader(pidfile=args.pidfile, ready_timeout=args.ready_timeout,
                        graceful_timeout=args.graceful_timeout,
                        shutdown_delay=args.shutdown_delay, **handoff_options(args))
    if access_log is not None:
        upgrader.on_signal(signal.SIGUSR1, lambda signum: access_log.reopen())
    try:
        app = load_app(args.app)
    except BaseException:
        upgrader.close()
        raise
    interface = detect_interface(app) if args.interface == "auto" else args.interface
    options = ServerOptions(header_timeout=args.header_timeout,
                            keepalive_timeout=args.keepalive_timeout,
                            body_timeout=args.body_timeout, ready_path=args.ready_path,
                            access_log=access_log,
                            limits=Limits(max_request_line=args.max_request_line,
                                          max_header_bytes=args.max_header_bytes,
                                          max_headers=args.max_headers, max_body=args.max_body))
    listen_options = {"reuse_port": True} if args.reuse_port else {}
    log.info("serving %s (%s) on %s", args.app, interface.upper(), ", ".join(binds))
    if interface == "asgi":
        from .asgi import ASGIServer

        return ASGIServer(app, upgrader, binds, options=options, lifespan=args.lifespan,
                          **listen_options).serve()
    from .wsgi import WSGIServer

    return WSGIServer(app, upgrader, binds, threads=args.threads, options=options,
                      **listen_options).serve()


def run_workers(args: Any) -> int:
    """``graceful serve --workers N``: a master with a stable pid over N serving processes."""
    import signal
    import sys

    from .addresses import parse_bind
    from .master import Master

    binds: List[str] = args.bind or ["web=127.0.0.1:8000"]
    for bind in binds:
        parse_bind(bind)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s [%(process)d] %(levelname)s %(message)s")
    worker = [sys.executable, "-m", "graceful", "serve", args.app]
    for bind in binds:
        worker += ["--bind", bind]
    worker += ["--interface", args.interface, "--threads", str(args.threads),
               "--lifespan", args.lifespan, "--graceful-timeout", str(args.graceful_timeout),
               "--header-timeout", str(args.header_timeout),
               "--keepalive-timeout", str(args.keepalive_timeout),
               "--body-timeout", str(args.body_timeout),
               "--shutdown-delay", str(args.shutdown_delay),
               "--max-request-line", str(args.max_request_line),
               "--max-header-bytes", str(args.max_header_bytes),
               "--max-headers", str(args.max_headers), "--log-level", args.log_level]
    if args.max_body is not None:
        worker += ["--max-body", str(args.max_body)]
    if args.ready_path:
        worker += ["--ready-path", args.ready_path]
    if args.access_log:
        worker += ["--access-log", args.access_log]
    master = Master(worker, binds=binds, workers=args.workers, ready="fd",
                    stop_signal=signal.SIGQUIT, pidfile=args.pidfile,
                    ready_timeout=args.ready_timeout, graceful_timeout=args.graceful_timeout,
                    shutdown_delay=args.shutdown_delay,
                    max_failures=None if args.keep_trying else args.max_failures,
                    timeout=args.timeout, reuse_port=args.reuse_port, lame_duck_signal=signal.SIGTERM,
                    **handoff_options(args))
    return master.run()


def add_arguments(parser: Any) -> None:
    """The options of ``graceful serve``."""
    parser.add_argument("app", metavar="APP",
                        help="MODULE:APP, path/to/file.py:APP or MODULE:factory()")
    parser.add_argument("--bind", "-b", action="append", metavar="[NAME=]ADDRESS",
                        help="listen here (repeatable); e.g. web=:8000, [::1]:8000, "
                             "unix:/run/app.sock, fd://3 (default web=127.0.0.1:8000)")
    parser.add_argument("--interface", choices=("auto", "wsgi", "asgi"), default="auto")
    parser.add_argument("--threads", type=_positive_int, default=8,
                        help="WSGI worker threads (8)")
    parser.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto",
                        help="ASGI lifespan protocol (auto)")
    parser.add_argument("--pidfile", metavar="PATH")
    parser.add_argument("--graceful-timeout", type=_seconds, default=30.0,
                        help="seconds a drain may take before connections are closed (30)")
    parser.add_argument("--shutdown-delay", type=_seconds, default=0.0,
                        help="on SIGTERM, keep serving this long before draining (0)")
    parser.add_argument("--ready-timeout", type=_seconds, default=30.0,
                        help="seconds a successor has to become ready (30)")
    parser.add_argument("--ready-path", metavar="PATH",
                        help="answer this path with 200 while serving, 503 otherwise")
    parser.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT")
    parser.add_argument("--header-timeout", type=_seconds, default=10.0,
                        help="seconds a client has to send a request head (10)")
    parser.add_argument("--keepalive-timeout", type=_seconds, default=5.0,
                        help="seconds an idle keep-alive connection stays open (5)")
    parser.add_argument("--body-timeout", type=_seconds, default=30.0,
                        help="seconds to wait for the next piece of a request body (30)")
    parser.add_argument("--max-request-line", type=_positive_int, default=8190,
                        help="longest request line in bytes, else 414 (8190)")
    parser.add_argument("--max-header-bytes", type=_positive_int, default=65536,
                        help="most header bytes in a request, else 431 (65536)")
    parser.add_argument("--max-headers", type=_positive_int, default=100,
                        help="most header fields in a request, else 431 (100)")
    parser.add_argument("--max-body", type=_positive_int, default=None,
                        help="largest request body in bytes, else 413 (no limit)")
    add_handoff_arguments(parser)
    parser.add_argument("--access-log", metavar="FILE",
                        help="Common Log Format to FILE, or - for stderr; reopened on SIGUSR1")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error", "critical"))


def add_respawn_arguments(parser: Any) -> None:
    """How a master restarts crashed workers, shared by ``serve --workers`` and ``run``."""
    parser.add_argument("--max-failures", type=_positive_int, default=5, metavar="N",
                        help="crashes in a row before a worker slot that never served is given "
                             "up (5); a slot that served is restarted forever, backing off up "
                             "to 30 s")
    parser.add_argument("--keep-trying", action="store_true",
                        help="never give a slot up (the first generation must still start)")
    parser.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="replace a worker whose serving loop sent no heartbeat for this "
                             "long (hung, stopped); graceful's own servers beat by themselves "
                             "(default: off)")


def add_handoff_arguments(parser: Any) -> None:
    """The handoff options, shared by ``graceful serve`` and ``graceful run``."""
    parser.add_argument("--handoff-socket", metavar="PATH",
                        help="serve a Unix socket (0600, or @abstract) from which an unrelated "
                             "new process can take the listeners over")
    parser.add_argument("--takeover", metavar="PATH",
                        help="take the listeners over from the process serving this handoff "
                             "socket, instead of binding (with --reuse-port: bind beside its "
                             "listeners, and take the traffic once ready)")
    parser.add_argument("--handoff-uid", metavar="UID", action="append", type=_uid,
                        help="a user (number or name) allowed to take the listeners over "
                             "(repeatable; default: only our own effective uid)")


def handoff_options(args: Any) -> dict:
    """Upgrader/Master keyword arguments from the handoff options."""
    return {"handoff_socket": args.handoff_socket, "takeover": args.takeover,
            "handoff_uids": args.handoff_uid, "takeover_fds": not args.reuse_port}


def _uid(text: str) -> int:
    import argparse
    import pwd

    if text.isascii() and text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a uid number nor a user name "
                                         f"on this machine") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


