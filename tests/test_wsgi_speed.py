"""The WSGI server's fast path, over real sockets: a keep-alive request costs one thread's
wake-up (workers take ready connections from a shared epoll set themselves, no hand-off), more
connections than workers are all served, and what the server remembers between requests
(checked response headers, environ keys of request headers) changes no answer."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
from typing import List

from _serve import Client, Served

APP = '''
import json
import sys

FIFO = FIFO_PATH

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return [b"hello\\n"]
    if path == "/sized":  # the same headers with another Content-Length, given as lists
        body = environ["QUERY_STRING"].encode()
        start_response("200 OK", [["Content-Type", "text/plain"],
                                  ["Content-Length", str(len(body))]])
        return [body]
    if path == "/inject":  # a header value that would split the response
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Bad", "a\\r\\nX-Evil: 1")])
        return [b"never sent\\n"]
    if path == "/hop":  # hop-by-hop headers are the server's to decide
        start_response("200 OK", [("Connection", "close"), ("Content-Length", "3")])
        return [b"hop"]
    if path == "/hold":  # keeps its worker until the test writes a byte to the FIFO
        print("holding", file=sys.stderr, flush=True)
        with open(FIFO, "rb") as fifo:
            fifo.read(1)
        start_response("200 OK", [("Content-Length", "5")])
        return [b"held\\n"]
    if path == "/env":
        keys = sorted(k for k in environ if k.startswith("HTTP_") or k.startswith("CONTENT_"))
        body = json.dumps({k: environ[k] for k in keys}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    start_response("404 Not Found", [("Content-Length", "0")])
    return []
'''


def _serve(procs, tmp_path, *extra: str) -> Served:
    fifo = tmp_path / "hold.fifo"
    os.mkfifo(fifo)
    (tmp_path / "speed_app.py").write_text(APP.replace("FIFO_PATH", repr(str(fifo))))
    return Served(procs, tmp_path, str(tmp_path / "speed_app.py") + ":app", *extra)


def _voluntary_switches(pid: int) -> int:
    """Times any thread of ``pid`` blocked (waited for I/O, a lock, a queue), from /proc."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that just ended
    return total


def test_a_keepalive_request_wakes_one_thread_only(procs, tmp_path):
    # Handing each request from a selector thread to a worker and back costs three blocking
    # waits per request (the selector's, the worker's queue, the selector woken back); a
    # worker that takes the ready connection from the kernel itself blocks once.
    served = _serve(procs, tmp_path, "--threads", "4")
    client = Client(served.connect())
    assert client.request("GET", "/hello").status == 200  # warm: the first park registers
    requests = 400
    before = _voluntary_switches(served.proc.pid)
    for _ in range(requests):
        response = client.request("GET", "/hello")
        assert (response.status, response.body) == (200, b"hello\n")
    switches = _voluntary_switches(served.proc.pid) - before
    client.sock.close()
    # 1 per request, plus the loop's timer ticks (4 a second) for however long this took.
    assert switches < 2 * requests, f"{switches} blocking waits for {requests} requests"


def test_more_connections_than_workers_are_all_served(procs, tmp_path):
    served = _serve(procs, tmp_path, "--threads", "2")
    clients, rounds = 24, 15
    failures: List[str] = []
    socks = [served.connect(timeout=60) for _ in range(clients)]

    def run(sock: socket.socket, index: int) -> None:
        client = Client(sock)
        try:
            for i in range(rounds):
                body = f"{index}-{i}"
                response = client.request("GET", f"/sized?{body}")
                if (response.status, response.body) != (200, body.encode()):
                    failures.append(f"client {index} round {i}: {response!r}")
        except Exception as exc:  # recorded: the assertion below shows every one
            failures.append(f"client {index}: {exc!r}")
        finally:
            sock.close()

    threads = [threading.Thread(target=run, args=(sock, i)) for i, sock in enumerate(socks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    assert not failures, failures[:5]


def test_remembered_headers_change_no_answer(procs, tmp_path):
    served = _serve(procs, tmp_path)
    client = Client(served.connect())
    for _ in range(3):  # the first time checks the headers, the next ones find them known
        for body in ("a", "bcd", ""):
            response = client.request("GET", f"/sized?{body}")
            assert (response.status, response.body) == (200, body.encode())
            assert response.headers["content-length"] == str(len(body))
            assert response.headers["content-type"] == "text/plain"
        assert client.request("GET", "/inject").status == 500  # refused every time
        sent = [b"X-Dup: one", b"X-Dup: two", b"X_Spoof: 1", b"Content-Type: text/x",
                b"Content-Length: 0"]
        client.send(b"GET /env HTTP/1.1\r\nHost: t\r\n" + b"\r\n".join(sent) + b"\r\n\r\n")
        environ = json.loads(client.response().body)
        assert environ == {"HTTP_HOST": "t", "HTTP_X_DUP": "one,two", "CONTENT_TYPE": "text/x",
                           "CONTENT_LENGTH": "0"}
    response = client.request("GET", "/hop")
    assert response.body == b"hop" and "connection" not in response.headers
    client.sock.close()
    assert served.log().count("ValueError: invalid response header") == 3, served.log()


def test_a_request_waiting_for_a_busy_worker_is_not_closed_as_idle(procs, tmp_path):
    # With every worker busy, a keep-alive connection whose next request has arrived looks
    # idle (nobody read it yet); the keep-alive timeout must not close it and lose the request.
    served = _serve(procs, tmp_path, "--threads", "1", "--keepalive-timeout", "1")
    waiting, idle, holder = (Client(served.connect(timeout=60)) for _ in range(3))
    assert waiting.request("GET", "/hello").status == 200  # idle since, first
    assert idle.request("GET", "/hello").status == 200  # idle since, after it
    holder.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
    served.wait(lambda: "holding" in served.log(), what="the only worker in the app")
    waiting.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    # The truly idle connection is closed by the keep-alive timeout; by then the other one
    # was overdue too (its last answer came first).
    assert idle.closed_by_server(timeout=60)
    assert not select.select([waiting.sock], [], [], 0)[0], "closed with a request in"
    with open(tmp_path / "hold.fifo", "wb") as fifo:
        fifo.write(b"x")
    assert holder.response().body == b"held\n"
    response = waiting.response()
    assert (response.status, response.body) == (200, b"hello\n")
    for client in (waiting, idle, holder):
        client.sock.close()
