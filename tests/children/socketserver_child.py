"""A socketserver server of a given class under graceful (for tests).

    python socketserver_child.py CLASS BIND [--graceful-timeout S] [--idle-grace S]

TCP and Unix servers echo each line prefixed with the pid; HTTP servers answer GET with the pid.
"""

from __future__ import annotations

import argparse
import http.server
import os
import socketserver
import sys

from graceful import Upgrader
from graceful.socketserver_adapter import make_socketserver, run_socketserver


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(f"{os.getpid()} ".encode() + line)


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"{os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _announce_ready(upgrader: Upgrader) -> None:
    """Print "READY <pid>" once the generation is really serving (after ``ready()``)."""
    upgrader.lifecycle.watch(
        lambda state: state == "serving" and print(f"READY {os.getpid()}", flush=True))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("server_class")
    parser.add_argument("bind")
    parser.add_argument("--graceful-timeout", type=float, default=30.0)
    parser.add_argument("--idle-grace", type=float, default=0.5)
    args = parser.parse_args()
    server_class = getattr(socketserver, args.server_class, None) or getattr(http.server, args.server_class)
    handler = Hello if issubclass(server_class, http.server.HTTPServer) else Echo
    upgrader = Upgrader(graceful_timeout=args.graceful_timeout, idle_grace=args.idle_grace)
    server = make_socketserver(upgrader, server_class, handler, args.bind)
    _announce_ready(upgrader)
    run_socketserver(upgrader, server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
