"""The two-step request of benchmarks/scenarios/two_step.py: charge, then write the order.

``GET /order`` appends an order id to the charges file (step 1), works for
``TWO_STEP_SECONDS`` (0.3 s), then appends the same id to the orders file (step 2). A process
that dies between the two steps leaves a charge without an order. Paths come from
``TWO_STEP_CHARGES`` and ``TWO_STEP_ORDERS``. Any other path answers 200 at once.

    graceful serve benchmarks/scenarios/_two_step_app.py:app     # the graceful way
    python benchmarks/scenarios/_two_step_app.py PORT             # naive: wsgiref, dies on SIGTERM
"""

import itertools
import os
import sys
import threading
import time

CHARGES = os.environ.get("TWO_STEP_CHARGES", "charges.log")
ORDERS = os.environ.get("TWO_STEP_ORDERS", "orders.log")
STEP = float(os.environ.get("TWO_STEP_SECONDS", "0.3"))

_ids = itertools.count(1)
_ids_lock = threading.Lock()


def _append(path, line):
    # One small O_APPEND write per line: lines from concurrent requests never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def app(environ, start_response):
    body = b"ok\n"
    if environ["PATH_INFO"] == "/order":
        with _ids_lock:
            order = f"{os.getpid()}-{next(_ids)}"
        _append(CHARGES, order)  # step 1: the card is charged
        time.sleep(STEP)  # the work between the two steps (the request under test)
        _append(ORDERS, order)  # step 2: the order is written
        body = f"order {order}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                              ("X-Pid", str(os.getpid()))])
    return [body]


if __name__ == "__main__":
    # The naive server: wsgiref with a thread per request, default SIGTERM (the process dies
    # at once, whatever it is doing).
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    make_server("127.0.0.1", int(sys.argv[1]), app, Server, Quiet).serve_forever()
