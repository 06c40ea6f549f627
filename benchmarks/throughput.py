"""Requests per second and latency for hello-world WSGI and ASGI apps, side by side.

    python benchmarks/throughput.py                 # every server that is importable
    python benchmarks/throughput.py --duration 10 --connections 32 --idle 10000

Servers: graceful serve (WSGI and ASGI), Python's http.server.ThreadingHTTPServer, and, when
they are importable here, gunicorn (sync, gthread), waitress and uvicorn (h11 and httptools,
on the stdlib asyncio loop). None of them is a dependency; a missing one is reported as "not
installed". One process each. Load comes from wrk (1 thread) when it is on PATH, else from
graceful's own asyncio load generator.

The idle test opens N keep-alive connections to each graceful server, leaves them idle, and
reports the added RSS and threads, then sends SIGQUIT and times how long the drain takes to
close them all. Results go to benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from graceful import _proc  # noqa: E402
from graceful._loadgen import LoadGenerator, Stats  # noqa: E402

PY = sys.executable


def _servers(port: int) -> Dict[str, dict]:
    bind = f"127.0.0.1:{port}"
    serve = [PY, "-m", "graceful", "serve", "--bind", f"web={bind}", "--log-level", "warning"]
    return {
        "graceful WSGI": {"cmd": serve + ["apps.py:wsgi"], "kind": "wsgi"},
        "graceful ASGI": {"cmd": serve + ["apps.py:asgi"], "kind": "asgi"},
        "http.server ThreadingHTTPServer": {
            "cmd": [PY, os.path.join(HERE, "stdlib_server.py"), str(port)], "kind": "wsgi"},
        "gunicorn sync": {"module": "gunicorn", "kind": "wsgi",
                          "cmd": [PY, "-m", "gunicorn", "-k", "sync", "-w", "1", "-b", bind,
                                  "apps:wsgi"]},
        "gunicorn gthread (4 threads)": {
            "module": "gunicorn", "kind": "wsgi",
            "cmd": [PY, "-m", "gunicorn", "-k", "gthread", "--threads", "4", "-w", "1", "-b",
                    bind, "apps:wsgi"]},
        "waitress (4 threads)": {"module": "waitress", "kind": "wsgi",
                                 "cmd": [PY, "-m", "waitress", f"--listen={bind}", "--threads=4",
                                         "apps:wsgi"]},
        "uvicorn h11": {"module": "uvicorn", "kind": "asgi",
                        "cmd": [PY, "-m", "uvicorn", "--loop", "asyncio", "--http", "h11",
                                "--port", str(port), "--log-level", "warning", "apps:asgi"]},
        "uvicorn httptools": {"module": "httptools", "kind": "asgi",
                              "cmd": [PY, "-m", "uvicorn", "--loop", "asyncio", "--http",
                                      "httptools", "--port", str(port), "--log-level",
                                      "warning", "apps:asgi"]},
        "uvicorn httptools uvloop": {"module": "uvloop", "kind": "asgi",
                                     "cmd": [PY, "-m", "uvicorn", "--loop", "uvloop", "--http",
                                             "httptools", "--port", str(port), "--log-level",
                                             "warning", "apps:asgi"]},
        "granian (Rust)": {"module": "granian", "kind": "asgi",
                           "cmd": [PY, "-m", "granian", "--interface", "asgi", "--host",
                                   "127.0.0.1", "--port", str(port), "--workers", "1",
                                   "--log-level", "warning", "apps:asgi"]},
        "bare asyncio Protocol (ceiling)": {
            "kind": "asgi", "cmd": [PY, os.path.join(HERE, "bare_asgi.py"), str(port)]},
    }

# The ratios the project tracks (issue 12): graceful over each of these, in the same run.
RATIOS = (("graceful ASGI", "bare asyncio Protocol (ceiling)", 0.8),
          ("graceful WSGI (TLS), keep-alive", "gunicorn gthread (4 threads, TLS), keep-alive", 1.0),
          ("graceful WSGI (TLS), new connection",
           "gunicorn gthread (4 threads, TLS), new connection", 1.0),
          ("graceful ASGI (TLS), keep-alive", "uvicorn httptools (TLS), keep-alive", 1.0),
          ("graceful ASGI (TLS), new connection", "uvicorn httptools (TLS), new connection", 1.0),
          ("graceful ASGI", "uvicorn httptools uvloop", 1.0),
          ("graceful WSGI", "gunicorn gthread (4 threads)", 3.0))


def _https_servers(port: int, cert: str, key: str) -> Dict[str, dict]:
    """The same apps over TLS (the certificate made by openssl at the start of the run)."""
    bind = f"127.0.0.1:{port}"
    serve = [PY, "-m", "graceful", "serve", "--bind", f"web={bind}", "--log-level", "warning",
             "--certfile", cert, "--keyfile", key]
    return {
        "graceful WSGI (TLS)": {"cmd": serve + ["apps.py:wsgi"], "kind": "wsgi"},
        "graceful ASGI (TLS)": {"cmd": serve + ["apps.py:asgi"], "kind": "asgi"},
        "gunicorn gthread (4 threads, TLS)": {
            "module": "gunicorn", "kind": "wsgi",
            "cmd": [PY, "-m", "gunicorn", "-k", "gthread", "--threads", "4", "-w", "1", "-b",
                    bind, "--certfile", cert, "--keyfile", key, "apps:wsgi"]},
        "uvicorn httptools (TLS)": {
            "module": "httptools", "kind": "asgi",
            "cmd": [PY, "-m", "uvicorn", "--loop", "asyncio", "--http", "httptools", "--port",
                    str(port), "--log-level", "warning", "--ssl-certfile", cert,
                    "--ssl-keyfile", key, "apps:asgi"]},
    }


def _make_certificate(directory: str) -> tuple:
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _https_rows(args, only) -> Dict[str, dict]:
    """Each TLS server with keep-alive connections and with a new connection per request."""
    import tempfile

    if not shutil.which("wrk") or not shutil.which("openssl"):
        print("https: needs wrk and openssl; skipped", file=sys.stderr)
        return {}
    rows: Dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as directory:
        cert, key = _make_certificate(directory)
        for name, spec in _https_servers(0, cert, key).items():
            if only and not any(o.lower() in name.lower() for o in only):
                continue
            if "module" in spec and importlib.util.find_spec(spec["module"]) is None:
                rows[name] = {"kind": spec["kind"], "status": "not installed"}
                continue
            port = _free_port()
            proc = _start(_https_servers(port, cert, key)[name]["cmd"], port, tls=True)
            try:
                for mode, close in (("keep-alive", False), ("new connection", True)):
                    rows[f"{name}, {mode}"] = {"kind": spec["kind"], "status": "ok",
                                               **_wrk(port, args.duration, args.connections,
                                                      https=True, close=close, pgid=proc.pid)}
                    print(f"{name}, {mode}: {rows[f'{name}, {mode}']['rps']} req/s",
                          file=sys.stderr)
            finally:
                _stop(proc)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int, tls: bool = False) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            if tls:
                import ssl

                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                s = context.wrap_socket(s)
            s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _start(cmd: List[str], port: int, tls: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=HERE, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if _answers(port, tls):
            return proc
        time.sleep(0.05)  # poll interval of a bounded start-up wait
    _stop(proc)
    raise RuntimeError(f"did not start: {' '.join(cmd)}")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


def _group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the processes of group ``pgid`` (a server
    and its workers; each was started in a session of its own)."""
    return sum(member.cpu_seconds for member in _proc.group(pgid))


def _wrk(port: int, duration: float, connections: int, https: bool = False,
         close: bool = False, pgid: Optional[int] = None) -> dict:
    """wrk's numbers, and with ``pgid`` the server's CPU time per request: unlike req/s it
    hardly depends on what else the machine runs (the load generator included)."""
    extra = ["-H", "Connection: close"] if close else []
    scheme = "https" if https else "http"
    cpu_before = _group_cpu(pgid) if pgid else 0.0
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency",
                          *extra, f"{scheme}://127.0.0.1:{port}/"], capture_output=True,
                         text=True, timeout=duration + 60).stdout
    cpu = _group_cpu(pgid) - cpu_before if pgid else None
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = re.search(r"(\d+) requests in", out)
    requests = int(done.group(1)) if done else 0
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)

    def percentile(p: str) -> Optional[float]:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return round(float(m.group(1)) * scale, 3)

    cpu_us = round(cpu / requests * 1e6, 1) if cpu is not None and requests else None
    return {"rps": round(rate), "cpu_us_per_request": cpu_us,
            "p50_ms": percentile("50"), "p99_ms": percentile("99"),
            "errors": (int(errors.group(1)) if errors else 0),
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def _loadgen(port: int, duration: float, connections: int) -> dict:
    import asyncio

    stats = asyncio.run(LoadGenerator(port, concurrency=connections, mode="keepalive",
                                      paths=("/",), stats=Stats()).run(duration))
    d = stats.to_dict()
    return {"rps": round(d["total"] / duration), "p50_ms": d["latency_ms"]["p50"],
            "p99_ms": d["latency_ms"]["p99"], "errors": d["failed"], "socket_errors": ""}


def _status(pid: int) -> Dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "Threads"):
                fields[name] = int(value.split()[0])
    return fields


def _idle_test(cmd: List[str], port: int, count: int) -> dict:
    """Open ``count`` idle keep-alive connections, measure, then time the drain."""
    proc = _start(cmd + ["--keepalive-timeout", "600"], port)
    try:
        before = _status(proc.pid)
        conns = []
        request = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"
        for start in range(0, count, 500):  # in batches: the accept queue is finite
            batch = [socket.create_connection(("127.0.0.1", port), timeout=30)
                     for _ in range(min(500, count - start))]
            for s in batch:
                s.sendall(request)
            for s in batch:
                if not s.recv(4096).startswith(b"HTTP/1.1 200"):
                    raise RuntimeError("a connection of the idle test got no 200")
            conns += batch
        after = _status(proc.pid)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGQUIT)
        closed = 0
        for s in conns:
            s.settimeout(30)
            try:
                closed += s.recv(1) == b""
            except OSError:
                pass
        all_closed = time.monotonic() - signalled
        proc.wait(60)
        exited = time.monotonic() - signalled
        for s in conns:
            s.close()
        return {"connections": count, "rss_added_mb": round((after["VmRSS"] - before["VmRSS"]) / 1024, 1),
                "threads_before": before["Threads"], "threads_after": after["Threads"],
                "closed_cleanly": closed, "drain_all_closed_s": round(all_closed, 3),
                "drain_exit_s": round(exited, 3)}
    finally:
        _stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per server (10)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--idle", type=int, default=10000,
                        help="idle keep-alive connections for the idle test (0 to skip)")
    parser.add_argument("--only", action="append", help="run only servers whose name contains this")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "throughput.json"))
    parser.add_argument("--no-https", action="store_true", help="skip the TLS rows")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * args.idle + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the servers inherit it
    tool = "wrk" if shutil.which("wrk") else "graceful._loadgen"
    print(f"load: {tool}, {args.connections} keep-alive connections, {args.duration:g}s per "
          f"server", file=sys.stderr)
    results: Dict[str, dict] = {}
    for name, spec in _servers(_free_port()).items():
        if args.only and not any(o.lower() in name.lower() for o in args.only):
            continue
        if "module" in spec and importlib.util.find_spec(spec["module"]) is None:
            results[name] = {"kind": spec["kind"], "status": "not installed"}
            print(f"{name}: not installed", file=sys.stderr)
            continue
        port = _free_port()
        spec = _servers(port)[name]
        proc = _start(spec["cmd"], port)
        try:
            measured = (_wrk(port, args.duration, args.connections, pgid=proc.pid)
                        if tool == "wrk" else _loadgen(port, args.duration, args.connections))
            results[name] = {"kind": spec["kind"], "status": "ok", **measured}
        finally:
            _stop(proc)
        print(f"{name}: {results[name]['rps']} req/s", file=sys.stderr)
    if not args.no_https:
        results.update(_https_rows(args, args.only))
    idle = {}
    if args.idle:
        for name in ("graceful WSGI", "graceful ASGI"):
            if args.only and not any(o.lower() in name.lower() for o in args.only):
                continue
            port = _free_port()
            idle[name] = _idle_test(_servers(port)[name]["cmd"], port, args.idle)
            print(f"{name} idle: {idle[name]}", file=sys.stderr)
    print(_table(results, idle))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"load": tool, "connections": args.connections, "duration": args.duration,
                   "python": sys.version.split()[0], "servers": results, "idle": idle}, f, indent=2)
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _table(results: Dict[str, dict], idle: Dict[str, dict]) -> str:
    lines = [f"{'server':48} {'req/s':>8} {'CPU/req':>9} {'p50':>9} {'p99':>9}  ratio"]
    for kind in ("wsgi", "asgi"):
        ours = results.get(f"graceful {kind.upper()}", {}).get("rps")
        for name, r in results.items():
            if r["kind"] != kind:
                continue
            if r["status"] != "ok":
                lines.append(f"{name:48} {'not installed':>8}")
                continue
            plain = not name.startswith("graceful") and "TLS" not in name
            ratio = f"{ours / r['rps']:.2f}x" if ours and plain else ""
            lines.append(f"{name:48} {r['rps']:>8} {_us(r.get('cpu_us_per_request')):>9} "
                         f"{_ms(r['p50_ms']):>9} {_ms(r['p99_ms']):>9}  {ratio}")
    for ours_name, peer, goal in RATIOS:
        ours, theirs = results.get(ours_name, {}), results.get(peer, {})
        if ours.get("status") == "ok" and theirs.get("status") == "ok":
            line = f"ratio {ours_name} / {peer}: {ours['rps'] / theirs['rps']:.2f} (goal >= {goal:g})"
            if ours.get("cpu_us_per_request") and theirs.get("cpu_us_per_request"):
                # The same ratio from CPU time per request: work per request, steadier when
                # the machine is busy than req/s.
                line += (f"; per CPU second "
                         f"{theirs['cpu_us_per_request'] / ours['cpu_us_per_request']:.2f}")
            lines.append(line)
    for name, r in idle.items():
        lines.append(f"{name}, {r['connections']} idle keep-alive connections: "
                     f"+{r['rss_added_mb']} MB RSS, threads {r['threads_before']} -> "
                     f"{r['threads_after']}, all closed {r['drain_all_closed_s']} s after "
                     f"SIGQUIT ({r['closed_cleanly']} with a clean FIN)")
    return "\n".join(lines)


def _us(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f} us"


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f} ms"


if __name__ == "__main__":
    sys.exit(main())
