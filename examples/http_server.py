"""A stdlib http.server that upgrades itself to the code on disk without failing a request.

Run it:    python examples/http_server.py [BIND] [PIDFILE]
           (defaults: web=127.0.0.1:8000 and /tmp/graceful-http-example.pid)
Try it:    curl -i http://127.0.0.1:8000/
Upgrade:   kill -HUP $(cat /tmp/graceful-http-example.pid)    # new pid, same socket
Stop:      kill -QUIT $(cat /tmp/graceful-http-example.pid)   # finish requests, then exit
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import graceful


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; graceful closes idle connections on drain

    def do_GET(self):
        body = f"hello from pid {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    bind = sys.argv[1] if len(sys.argv) > 1 else "web=127.0.0.1:8000"
    pidfile = sys.argv[2] if len(sys.argv) > 2 else "/tmp/graceful-http-example.pid"
    upgrader = graceful.Upgrader(pidfile=pidfile)
    sys.exit(graceful.serve_socketserver(upgrader, ThreadingHTTPServer, Hello, bind))
