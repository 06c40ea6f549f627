"""Adopt the listeners this process inherited, claim one, serve one HTTP request on it.

Usage: listener_child.py NAME ADDRESS

The response body is JSON describing what the child saw, so the test can check it from outside:
its pid, which listeners it inherited, the inherited fd's flags, and whether the inheritance
variables were removed from its environment.
"""

import json
import os
import selectors
import sys

from graceful.listeners import Listeners

VARIABLES = ("GRACEFUL_FDS", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def main() -> None:
    name, address = sys.argv[1], sys.argv[2]
    seen = {var: os.environ.get(var) for var in VARIABLES}
    listeners = Listeners.from_environ()
    inherited = listeners.unclaimed
    sock = listeners.listen(name, address)
    report = {
        "pid": os.getpid(),
        "seen": seen,
        "left": {var: os.environ.get(var) for var in VARIABLES},
        "inherited": inherited,
        "fd": sock.fileno(),
        "inheritable": os.get_inheritable(sock.fileno()),
        "blocking": sock.getblocking(),
    }
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        if not selector.select(30):
            sys.exit("listener_child: no connection within 30 s")
    conn, _ = sock.accept()
    with conn:
        conn.settimeout(30)
        request = b""
        while b"\r\n\r\n" not in request and len(request) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
        body = json.dumps(report).encode()
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    listeners.close()


if __name__ == "__main__":
    main()
