"""Python's http.server.ThreadingHTTPServer with a hello-world handler, for comparison.

    python benchmarks/stdlib_server.py PORT
"""

import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the other servers

    def do_GET(self):
        body = b"Hello, world!\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as fair as the others
        return conn, addr


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Hello).serve_forever()
