"""Rolling update behind a load balancer that is slow to notice: the Kubernetes endpoint lag.

The incident: in Kubernetes, deleting a pod sends it SIGTERM *at the same time* as its endpoint
is removed, and kube-proxy, ingress controllers and cloud load balancers keep routing new
connections to it until that removal has propagated (hundreds of milliseconds to seconds). A
server that exits on SIGTERM refuses or resets everything routed to it in that window; every
rolling update fails requests.

Reproduction, all on loopback: a small threaded TCP load balancer (L4, a connection goes to the
next backend in turn, like kube-proxy; a failed upstream connect is answered with a 502) in
front of one backend. A rolling update starts the new backend, adds it to the rotation, sends
SIGTERM to the old one, keeps routing to the old one for another 500 ms (the lag), then removes
it. Load: fresh and keep-alive clients through the balancer, fast and 200 ms requests.

- naive: the same app on a plain ``http.server`` that dies on SIGTERM
  (``python -m graceful._demo_server --naive``);
- graceful: ``graceful serve benchmarks/apps.py:wsgi --shutdown-delay 1``: on SIGTERM it keeps
  serving for 1 s (longer than the lag), then drains.

Run it (about 20 s; exits 0 only if the graceful run failed no request):

    python benchmarks/scenarios/rolling_update.py
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

LAG = 0.5  # seconds the balancer keeps routing to a backend after it was sent SIGTERM
BAD_GATEWAY = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class Balancer:
    """A threaded L4 proxy on 127.0.0.1: each client connection goes to the next backend."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.backends: List[int] = []  # ports
        self.upstream_errors: Dict[int, int] = {}  # port -> failed upstream connects
        self._lock = threading.Lock()
        self._turn = 0
        self._stopping = threading.Event()
        self._threads: List[threading.Thread] = []
        self._wake_r, self._wake_w = os.pipe()

    def set_backends(self, ports: List[int]) -> None:
        with self._lock:
            self.backends = list(ports)

    def start(self) -> "Balancer":
        thread = threading.Thread(target=self._accept_loop, name="lb-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def close(self) -> None:
        self._stopping.set()
        os.write(self._wake_w, b"x")
        for thread in list(self._threads):
            thread.join(5)
        self.sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _pick(self) -> Optional[int]:
        with self._lock:
            if not self.backends:
                return None
            self._turn += 1
            return self.backends[self._turn % len(self.backends)]

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select(1.0):
                    if key.fileobj is not self.sock:
                        continue
                    try:
                        client, _ = self.sock.accept()
                    except OSError:
                        continue
                    thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
                    thread.start()
                    self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _serve(self, client: socket.socket) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port = self._pick()
        upstream = None
        try:
            if port is not None:
                try:
                    upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
                except OSError:
                    with self._lock:
                        self.upstream_errors[port] = self.upstream_errors.get(port, 0) + 1
            if upstream is None:
                client.sendall(BAD_GATEWAY)
                return
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _relay(client, upstream, self._stopping)
        except OSError:
            pass
        finally:
            client.close()
            if upstream is not None:
                upstream.close()


def _relay(client: socket.socket, upstream: socket.socket, stopping: threading.Event) -> None:
    """Copy both ways; a FIN is passed on as a FIN, a reset or error ends both sides."""
    client.settimeout(None)
    upstream.settimeout(None)
    peer = {client: upstream, upstream: client}
    open_reads = {client, upstream}
    with selectors.DefaultSelector() as sel:
        for s in open_reads:
            sel.register(s, selectors.EVENT_READ)
        while open_reads and not stopping.is_set():
            for key, _ in sel.select(1.0):
                src = key.fileobj
                data = src.recv(65536)  # an error (reset) propagates: both sides are closed
                if data:
                    peer[src].sendall(data)
                    continue
                sel.unregister(src)
                open_reads.discard(src)
                try:
                    peer[src].shutdown(socket.SHUT_WR)
                except OSError:
                    return
                if src is upstream:
                    return  # the server ended the connection: so does the client's


# -- backends -----------------------------------------------------------------------------------


def backend_args(kind: str, port: int) -> List[str]:
    if kind == "naive":
        return [c.PYTHON, "-m", "graceful._demo_server", "--port", str(port), "--naive"]
    return [c.PYTHON, "-m", "graceful", "serve", c.repo_file("benchmarks", "apps.py") + ":wsgi",
            "--bind", f"web=127.0.0.1:{port}", "--shutdown-delay", "1", "--ready-path",
            "/-/ready", "--log-level", "warning"]


def run(kind: str, updates: int) -> dict:
    lb = Balancer().start()
    procs = c.Processes()
    loads = [c.LoadGenerator(lb.port, concurrency=3, mode=mode,
                             paths=("/fast", "/fast", "/fast", "/slow"))
             for mode in ("fresh", "keepalive")]
    timeline: List[Tuple[float, str]] = []
    exits: List[str] = []
    try:
        def start_backend():
            port = c.free_port()
            proc = procs.start(backend_args(kind, port), stdout=subprocess.DEVNULL)
            if not c.wait_http(port, "/fast", 30.0, proc):
                raise RuntimeError(f"{kind} backend did not start on port {port}")
            return proc, port

        old, old_port = start_backend()
        lb.set_backends([old_port])
        for load in loads:
            load.start(max_duration=120)
        started = time.monotonic()
        time.sleep(1.0)  # pacing: steady load before the first update
        for i in range(updates):
            new, new_port = start_backend()
            lb.set_backends([old_port, new_port])
            old.send_signal(signal.SIGTERM)
            term_at = time.monotonic()
            timeline.append((term_at - started, f"update {i + 1}: SIGTERM to pid {old.pid}"))
            time.sleep(LAG)  # the endpoint lag under test: the balancer still routes here
            lb.set_backends([new_port])
            timeline.append((time.monotonic() - started, f"update {i + 1}: old removed"))
            if not c.wait_until(lambda: old.poll() is not None, 30.0):
                raise RuntimeError(f"old backend {old.pid} did not exit")
            exits.append(c.exit_text(old.returncode))
            old, old_port = new, new_port
            time.sleep(0.7)  # pacing between updates
    finally:
        for load in loads:
            load.stop()
        lb.close()
        procs.close()
    totals = c.load_totals(loads)
    totals.update(updates=updates, lag_s=LAG,
                  upstream_connect_errors=sum(lb.upstream_errors.values()),
                  old_backend_exit_status=exits,
                  timeline=[{"t": round(t, 3), "event": e} for t, e in timeline])
    return totals


def main() -> int:
    p = c.parser(__doc__, "rolling_update")
    p.add_argument("--updates", type=int, default=3, help="rolling updates per run (3)")
    args = p.parse_args()
    runs = {}
    for kind in ("naive", "graceful"):
        c.say(f"{kind}: {args.updates} rolling updates, {LAG * 1000:.0f} ms endpoint lag ...")
        t0 = time.monotonic()
        runs[kind] = run(kind, args.updates)
        runs[kind]["seconds"] = round(time.monotonic() - t0, 1)
    naive, graceful = runs["naive"], runs["graceful"]
    columns = ["naive: http.server, dies on SIGTERM", "graceful serve --shutdown-delay 1"]
    rows = [("requests through the balancer", [naive["total"], graceful["total"]]),
            ("failed", [naive["failed"], graceful["failed"]]),
            ("  how", [c.failure_breakdown(r["counts"]) for r in (naive, graceful)]),
            ("upstream connects refused (502)", [naive["upstream_connect_errors"],
                                                 graceful["upstream_connect_errors"]]),
            ("rolling updates", [naive["updates"], graceful["updates"]]),
            ("old backend exit status", [",".join(r["old_backend_exit_status"])
                                        for r in (naive, graceful)])]
    table = c.print_table(columns, rows)
    ok = graceful["failed"] == 0 and graceful["upstream_connect_errors"] == 0
    verdict = ("graceful: zero failed requests" if ok
               else "graceful: FAILED requests (see above)")
    print(verdict)
    c.write_json(args.json, {"scenario": "rolling_update", "ok": ok, "table": table,
                             "runs": {"naive": naive, "graceful": graceful}})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
