"""The naive SO_REUSEPORT reload, for comparison: a plain stdlib server started beside the old
one on the same port, after which the old one gets SIGTERM and shuts down the usual way.

    python benchmarks/naive_reuseport_server.py PORT

Python's ThreadingHTTPServer with SO_REUSEPORT: ``/slow`` takes 200 ms, every response carries
``X-Pid``, READY=1 goes to ``NOTIFY_SOCKET`` once it listens. On SIGTERM it stops its accept
loop, finishes its requests and closes its listener - and the kernel resets every connection
that was still queued on that listener in the meantime, which is what graceful's reuseport
handoff avoids. (HTTP/1.0, one request per connection, so that it can exit at all.)
"""

import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(0.2)  # the slow request under test
        body = b"Hello, world!\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pid", str(os.getpid()))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def notify_ready():
    path = os.environ.get("NOTIFY_SOCKET")
    if path:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", "\0" + path[1:] if path.startswith("@") else path)


if __name__ == "__main__":
    server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    notify_ready()
    server.serve_forever()
    server.server_close()
