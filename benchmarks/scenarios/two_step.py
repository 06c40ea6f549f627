"""A restart in the middle of a two-step request: the customer is charged, the order is lost.

The incident: a handler does two things that must both happen: it charges the card (step 1),
works a little, then writes the order (step 2). A deploy restarts the server; a process killed
between the two steps leaves a charge without an order, and nobody finds out until the customer
writes in. Here step 1 appends the order id to a charges file and step 2 to an orders file,
0.3 s later (benchmarks/scenarios/_two_step_app.py).

Four clients place orders continuously. Each run restarts the server 3 times and then stops it;
every restart and the stop is sent while an order is known to be between its two steps (the
script waits until the charges file has an id the orders file does not have). Before the stop,
clients start no new order and the script waits until every order already started is connected,
so the stop only ever meets orders in flight.

- naive: wsgiref (stdlib) with default SIGTERM: restart = SIGTERM, then start again;
- graceful serve: SIGHUP (self re-exec, the old process finishes what it started), then SIGTERM;
- graceful serve --workers 2: SIGHUP to the master (a new worker generation), then SIGTERM.

Run it (about 20 s; exits 0 only if every graceful run has charges == orders and no failed
request):

    python benchmarks/scenarios/two_step.py
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Set

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

APP = os.path.join(c.HERE, "_two_step_app.py")
CLIENTS = 4


class OrderClients:
    """``CLIENTS`` threads placing orders (one fresh connection each) until ``close_gate()``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.counts: Dict[str, int] = dict.fromkeys(c.KINDS, 0)
        self.samples: List[str] = []
        self._lock = threading.Lock()
        self._gate_closed = False
        self._connecting = 0  # clients past the gate whose connection is not established yet
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(CLIENTS)]

    def start(self) -> "OrderClients":
        for thread in self._threads:
            thread.start()
        return self

    def close_gate(self, timeout: float = 10.0) -> bool:
        """No new order from now on; returns once every started order is connected."""
        with self._lock:
            self._gate_closed = True
        return c.wait_until(lambda: self._connecting == 0, timeout, 0.001)

    def join(self, timeout: float = 30.0) -> None:
        self.close_gate()
        for thread in self._threads:
            thread.join(timeout)

    def _record(self, kind: str, detail: str = "") -> None:
        with self._lock:
            self.counts[kind] += 1
            if kind != "ok" and len(self.samples) < 10:
                self.samples.append(f"{kind}: {detail}")

    def _client(self) -> None:
        while True:
            with self._lock:
                if self._gate_closed:
                    return
                self._connecting += 1
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                try:
                    conn.connect()
                finally:
                    with self._lock:
                        self._connecting -= 1
                conn.request("GET", "/order", headers={"Connection": "close"})
                response = conn.getresponse()
                response.read()
                self._record("ok" if response.status == 200 else "bad_status",
                             f"status {response.status}")
            except ConnectionRefusedError as exc:
                self._record("refused", repr(exc))
                time.sleep(0.01)  # pacing: do not spin while nothing listens
            except (ConnectionResetError, BrokenPipeError) as exc:
                self._record("reset", repr(exc))
            except (http.client.RemoteDisconnected, http.client.IncompleteRead) as exc:
                self._record("eof", repr(exc))
            except socket.timeout as exc:
                self._record("timeout", repr(exc))
            except (OSError, http.client.HTTPException) as exc:
                self._record("other", repr(exc))
            finally:
                conn.close()


def _ids(path: str) -> List[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


class Files:
    def __init__(self, directory: str) -> None:
        self.charges = os.path.join(directory, "charges.log")
        self.orders = os.path.join(directory, "orders.log")

    def pending(self) -> Set[str]:
        """Orders charged but not written yet (in flight now, or lost)."""
        return set(_ids(self.charges)) - set(_ids(self.orders))


def _signal_mid_order(files: Files, send: Callable[[], None]) -> bool:
    """Send once an order is between its two steps; True if one was (it takes 0.3 s)."""
    mid = c.wait_until(lambda: bool(files.pending()), 10.0, 0.002)
    send()
    return mid


def _alive(pid: int) -> bool:
    return c.proc_state(pid) not in (None, "Z", "X")


def _pidfile_pid(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def run(kind: str, restarts: int) -> dict:
    procs = c.Processes()
    with tempfile.TemporaryDirectory(prefix="graceful-two-step-") as tmp:
        files = Files(tmp)
        env = c.child_env(TWO_STEP_CHARGES=files.charges, TWO_STEP_ORDERS=files.orders)
        port = c.free_port()
        pidfile = os.path.join(tmp, "server.pid")
        if kind == "naive":
            args = [c.PYTHON, APP, str(port)]
        else:
            args = [c.PYTHON, "-m", "graceful", "serve", f"{APP}:app", "--bind",
                    f"web=127.0.0.1:{port}", "--pidfile", pidfile, "--log-level", "warning"]
            if kind == "master":
                args += ["--workers", "2"]
        mid_signals = 0
        clients: Optional[OrderClients] = None
        try:
            proc = procs.start(args, env=env, stdout=subprocess.DEVNULL)
            if not c.wait_http(port, "/", 30.0, proc):
                raise RuntimeError(f"{kind}: server did not start")
            clients = OrderClients(port).start()
            for i in range(restarts):
                time.sleep(0.6)  # pacing between restarts
                if kind == "naive":
                    old = proc
                    mid_signals += _signal_mid_order(files, old.terminate)
                    old.wait(10)
                    proc = procs.start(args, env=env, stdout=subprocess.DEVNULL)
                    if not c.wait_http(port, "/", 30.0, proc):
                        raise RuntimeError("naive: server did not start again")
                elif kind == "graceful":
                    old_pid = _pidfile_pid(pidfile)
                    assert old_pid is not None
                    mid_signals += _signal_mid_order(files, lambda: os.kill(old_pid, signal.SIGHUP))
                    if not c.wait_until(lambda: _pidfile_pid(pidfile) not in (None, old_pid)
                                        and not _alive(old_pid), 30.0):
                        raise RuntimeError(f"graceful: upgrade {i + 1} did not complete")
                else:
                    master = proc.pid
                    old_workers = set(c.children_of(master))
                    mid_signals += _signal_mid_order(files, lambda: os.kill(master, signal.SIGHUP))
                    if not c.wait_until(lambda: bool(c.children_of(master)) and not (
                            set(c.children_of(master)) & old_workers), 30.0):
                        raise RuntimeError(f"master: reload {i + 1} did not complete")
            time.sleep(0.4)  # pacing before the final stop
            # The final stop: no new orders, every started one connected, then SIGTERM while
            # one of them is between its two steps.
            mid = c.wait_until(lambda: bool(files.pending()), 10.0, 0.002)
            clients.close_gate()
            target = proc.pid if kind != "graceful" else (_pidfile_pid(pidfile) or proc.pid)
            mid_signals += bool(mid and files.pending())
            os.kill(target, signal.SIGTERM)
            if not c.wait_until(lambda: not _alive(target), 30.0):
                raise RuntimeError(f"{kind}: pid {target} did not stop")
            clients.join()
            # Every process of the run is gone (re-executed generations, workers) before the
            # files are read.
            c.wait_until(lambda: not c.group_pids(proc.pid), 30.0)
            charges, orders = _ids(files.charges), _ids(files.orders)
        finally:
            if clients is not None:
                clients.join(5)
            procs.close()
    lost = sorted(set(charges) - set(orders))
    total = sum(clients.counts.values())
    return {"restarts": restarts, "signals_mid_order": mid_signals,
            "requests": total, "failed": total - clients.counts["ok"],
            "counts": dict(clients.counts), "error_samples": clients.samples,
            "charges": len(charges), "orders": len(orders),
            "charged_without_order": len(lost), "lost_ids": lost[:20],
            "duplicates": len(charges) - len(set(charges)) + len(orders) - len(set(orders)),
            "consistent": sorted(charges) == sorted(orders)}


COLUMNS = {"naive": "naive: wsgiref, SIGTERM + start",
           "graceful": "graceful serve: SIGHUP, SIGTERM",
           "master": "serve --workers 2: SIGHUP, SIGTERM"}


def main() -> int:
    p = c.parser(__doc__, "two_step")
    p.add_argument("--restarts", type=int, default=5, help="restarts before the stop (5)")
    args = p.parse_args()
    runs = {}
    for kind in ("naive", "graceful", "master"):
        c.say(f"{kind}: {args.restarts} restarts and a stop, each mid-order ...")
        t0 = time.monotonic()
        runs[kind] = run(kind, args.restarts)
        runs[kind]["seconds"] = round(time.monotonic() - t0, 1)
    order = list(runs)
    rows = [("restarts + stop, each mid-order", [f"{runs[k]['restarts']} + 1 "
                                                 f"({runs[k]['signals_mid_order']} mid-order)"
                                                 for k in order]),
            ("orders placed (requests)", [runs[k]["requests"] for k in order]),
            ("failed requests", [runs[k]["failed"] for k in order]),
            ("  how", [c.failure_breakdown(runs[k]["counts"]) for k in order]),
            ("charges (file A)", [runs[k]["charges"] for k in order]),
            ("orders (file B)", [runs[k]["orders"] for k in order]),
            ("charged, no order", [runs[k]["charged_without_order"] for k in order]),
            ("A == B", ["yes" if runs[k]["consistent"] else "NO" for k in order])]
    table = c.print_table([COLUMNS[k] for k in order], rows)
    ok = all(runs[k]["consistent"] and runs[k]["failed"] == 0 and runs[k]["charges"] > 0
             for k in order if k != "naive")
    print("graceful: every charge has its order, no failed request" if ok
          else "graceful: FAILED (see above)")
    c.write_json(args.json, {"scenario": "two_step", "ok": ok, "table": table, "runs": runs})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
