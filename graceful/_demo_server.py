"""The demo server: a ThreadingHTTPServer that upgrades itself on SIGHUP with graceful.

    python -m graceful._demo_server --port 8000 --pidfile /tmp/demo.pid
    python -m graceful._demo_server --port 8000 --naive     # plain server, for comparison

GET /fast answers at once, GET /slow after 200 ms; every response carries ``X-Pid``. With
``--app-dir DIR`` the module ``app`` is imported from DIR at start (so a test can "deploy" new or
broken code there): ``app.body(path) -> bytes`` may change responses and ``app.before_ready()``
runs after the listener is claimed, before ``ready()``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, List, Optional

from .errors import GracefulError
from .upgrader import Upgrader
from .socketserver_adapter import make_socketserver, run_socketserver

app: Any = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(0.2)  # the slow request under test, not synchronisation
        custom = getattr(app, "body", None)
        body = custom(self.path) if custom else f"{os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pid", str(os.getpid()))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _NaiveServer(ThreadingHTTPServer):
    """What many deployments run: no inherited sockets, dies at once on SIGTERM."""

    def get_request(self) -> Any:
        conn, peer = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, peer


def _announce_ready(upgrader: Upgrader) -> None:
    """Print "READY <pid>" once the generation is really serving (after ``ready()``)."""
    upgrader.lifecycle.watch(
        lambda state: state == "serving" and print(f"READY {os.getpid()}", flush=True))


def main(argv: Optional[List[str]] = None) -> int:
    global app
    parser = argparse.ArgumentParser(prog="python -m graceful._demo_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pidfile")
    parser.add_argument("--app-dir")
    parser.add_argument("--ready-timeout", type=float, default=10.0)
    parser.add_argument("--graceful-timeout", type=float, default=10.0)
    parser.add_argument("--shutdown-delay", type=float, default=0.0)
    parser.add_argument("--naive", action="store_true", help="a plain server without graceful")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.naive:
        _NaiveServer.allow_reuse_address = True
        server = _NaiveServer((args.host, args.port), Handler)
        if args.pidfile:
            with open(args.pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")
        print(f"READY {os.getpid()}", flush=True)
        server.serve_forever()
        return 0
    logging.basicConfig(level=args.log_level.upper(), format="[%(process)d] %(message)s")
    try:
        upgrader = Upgrader(pidfile=args.pidfile, ready_timeout=args.ready_timeout,
                            graceful_timeout=args.graceful_timeout,
                            shutdown_delay=args.shutdown_delay)
    except GracefulError as exc:  # a pidfile held by a live server, say: one line, no traceback
        print(f"graceful demo server: {exc}", file=sys.stderr)
        return 2
    server = make_socketserver(upgrader, ThreadingHTTPServer, Handler, f"web={args.host}:{args.port}")
    if args.app_dir:
        sys.path.insert(0, args.app_dir)
        import app as deployed  # noqa: E402  (the deployed code: may be broken on purpose)
        app = deployed
        getattr(app, "before_ready", lambda: None)()
    _announce_ready(upgrader)
    run_socketserver(upgrader, server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
