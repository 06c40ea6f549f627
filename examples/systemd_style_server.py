"""A plain stdlib HTTP server that takes its socket the systemd way, to run under `graceful run`.

    graceful run --bind web=:8000 --ready notify -- python examples/systemd_style_server.py --fd {fd:web}
    graceful run --bind web=:8000 --ready notify -- python examples/systemd_style_server.py

Given --fd N it serves on fd N; otherwise it checks LISTEN_PID/LISTEN_FDS and serves on fd 3
(graceful sets those only for a command without {fd:NAME}). It says READY=1 over
NOTIFY_SOCKET and answers every request with JSON describing what it inherited (and X-Pid).
SIGTERM: stop accepting, finish what is in flight, exit 0.
"""

import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEEN = {var: os.environ.get(var) for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
FD = int(sys.argv[sys.argv.index("--fd") + 1]) if "--fd" in sys.argv else 3


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection. A stdlib server cannot end idle keep-alive
    # connections when it shuts down (its handler threads wait for the client), so it would
    # never exit cleanly; graceful serve and the socketserver adapter can.
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        if self.path == "/slow":
            threading.Event().wait(0.2)  # the slow request under test
        body = json.dumps({"pid": os.getpid(), "fd": FD, **SEEN}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pid", str(os.getpid()))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() waits for the requests in flight


def notify(message: bytes) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if path:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect("\0" + path[1:] if path.startswith("@") else path)
            s.send(message)


def main():
    if "--fd" not in sys.argv:  # socket activation: the fds are meant for this very process
        assert SEEN["LISTEN_PID"] == str(os.getpid()) and SEEN["LISTEN_FDS"] == "1", SEEN
    listener = socket.socket(fileno=FD)
    server = Server(listener.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    notify(b"READY=1")
    server.serve_forever(poll_interval=0.05)
    server.server_close()


if __name__ == "__main__":
    main()
