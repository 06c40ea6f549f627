"""A socketserver TCP echo server that upgrades itself without dropping a connection.

Run it:    python examples/echo_server.py echo=127.0.0.1:8002 /tmp/graceful-echo-example.pid
Try it:    python -c "import socket; s = socket.create_connection(('127.0.0.1', 8002)); s.sendall(b'hi\n'); print(s.recv(99))"
Upgrade:   kill -HUP $(cat /tmp/graceful-echo-example.pid)
Stop:      kill -QUIT $(cat /tmp/graceful-echo-example.pid)

graceful's socketserver adapter hands the listener to the next process and waits for every
connection to end. A plain TCP protocol has no "Connection: close", so the handler itself ends a
connection that stays idle once this process drains; the client's next connection reaches the
new process, whose socket is the same.
"""

import select
import socketserver
import sys
import time

import graceful

IDLE_GRACE = 0.5  # once draining, end a connection that stays idle this long


class Echo(socketserver.StreamRequestHandler):
    rbufsize = 0  # unbuffered: select() on the socket then sees every byte not yet read

    def handle(self):
        while self.wait_for_input():
            line = self.rfile.readline(65536)
            if not line:
                return  # the client closed
            self.wfile.write(line)

    def wait_for_input(self):
        """True when the client sent something; False when this process drains and the client
        stayed idle for IDLE_GRACE (closing at the instant it sends would lose its line)."""
        quiet_since = None
        while True:
            if select.select([self.connection], [], [], 0.1)[0]:
                return True
            if upgrader.stop_event.is_set():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= IDLE_GRACE:
                    return False


if __name__ == "__main__":
    bind = sys.argv[1] if len(sys.argv) > 1 else "echo=127.0.0.1:8002"
    pidfile = sys.argv[2] if len(sys.argv) > 2 else "/tmp/graceful-echo-example.pid"
    upgrader = graceful.Upgrader(pidfile=pidfile)
    sys.exit(graceful.serve_socketserver(upgrader, socketserver.ThreadingTCPServer, Echo, bind))
