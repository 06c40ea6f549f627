"""Restart a server under load by some strategy and count what failed: the demo and benchmarks.

A strategy knows how to start the server and how to restart it. The driver starts the server,
runs load from ``graceful._loadgen`` (fresh and keep-alive clients, fast and 200 ms requests),
restarts it ``restarts`` times at even intervals, and measures each handover: the time from the
restart signal to the first response from the new pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from ._loadgen import KINDS, LoadGenerator, Stats
from ._proc import children as _children

PATHS_MIXED = ("/fast", "/fast", "/fast", "/slow")


@dataclass
class RunResult:
    strategy: str
    description: str
    restarts: int = 0
    handovers: List[float] = field(default_factory=list)  # seconds
    stats: Stats = field(default_factory=Stats)
    errors: List[str] = field(default_factory=list)  # restarts that did not complete
    restarted_at: List[float] = field(default_factory=list)  # seconds since the load began

    def to_dict(self) -> dict:
        ordered = sorted(self.handovers)
        return {
            "strategy": self.strategy,
            "description": self.description,
            "restarts": self.restarts,
            "handover_ms": {
                "median": round(ordered[len(ordered) // 2] * 1000, 1) if ordered else None,
                "max": round(ordered[-1] * 1000, 1) if ordered else None,
            },
            "restart_errors": list(self.errors),
            "restarted_at": [round(t, 3) for t in self.restarted_at],
            **self.stats.to_dict(),
        }


class _Server:
    """One server process tree, in its own process group so it can be killed whole.

    It is up once it prints ``READY`` (the demo server) or, with ``ready_url_port``, once
    ``GET /-/ready`` answers 200 (``graceful serve --ready-path /-/ready``).
    """

    def __init__(self, args: List[str], pidfile: str, ready_port: Optional[int] = None,
                 env: Optional[Dict[str, str]] = None) -> None:
        self.args, self.pidfile, self.ready_port = args, pidfile, ready_port
        self.env = {**os.environ, **(env or {})}
        self.previous: List[subprocess.Popen] = []  # generations replaced by a takeover
        self._notify = None  # NOTIFY_SOCKET for processes started beside (SO_REUSEPORT)
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=self.env)
        if self.ready_port is not None:
            up = _wait_until(lambda: proc.poll() is not None or _answers(self.ready_port), 30.0)
            up = up and proc.poll() is None
        else:
            up = _read_line(proc, 30.0).startswith(b"READY")
        if not up:
            _kill_group(proc)
            raise RuntimeError(f"server did not start: {' '.join(self.args)}")
        return proc

    def pid(self) -> Optional[int]:
        try:
            with open(self.pidfile) as f:
                text = f.read().strip()
            return int(text) if text.isdigit() else None
        except OSError:
            return None

    def respawn(self) -> None:
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc = self._spawn()

    def take_over(self, args: List[str]) -> int:
        """Start an independent process that takes the sockets over; returns its pid once the
        pidfile names it (it is ready and the old process drains)."""
        self.previous.append(self.proc)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        _wait_until(lambda: self.pid() == self.proc.pid or self.proc.poll() is not None, 30.0)
        self.previous = [old for old in self.previous if old.poll() is None]  # reaps the exited
        return self.proc.pid

    def start_beside(self) -> Optional[int]:
        """Start an independent second process on the same SO_REUSEPORT address; once it
        says READY=1 (sd_notify), stop the old one with SIGTERM. Returns the new pid."""
        import socket

        if self._notify is None:  # one for all generations: they notify until they exit
            self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._notify.bind(os.path.join(os.path.dirname(self.pidfile), "notify"))
            self._notify.settimeout(30.0)
        proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                start_new_session=True,
                                env={**self.env, "NOTIFY_SOCKET": self._notify.getsockname()})
        try:  # only a starting process says READY=1; the others say STOPPING=1
            while b"READY=1" not in self._notify.recv(4096).split(b"\n"):
                pass
        except OSError:
            _kill_group(proc)
            return None
        old, self.proc = self.proc, proc
        self.previous.append(old)
        old.terminate()
        self.previous = [p for p in self.previous if p.poll() is None]  # reaps the exited
        return proc.pid

    def close(self) -> None:
        for proc in [*self.previous, self.proc]:
            _kill_group(proc)
            if proc.stdout:
                proc.stdout.close()
        if self._notify is not None:
            self._notify.close()


def _read_line(proc: subprocess.Popen, timeout: float) -> bytes:
    import selectors

    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(proc.stdout.fileno(), 1)  # type: ignore[union-attr]
            if not chunk:
                break
            line += chunk
    return line


def _answers(port: int) -> bool:
    """Whether ``GET /-/ready`` on ``port`` answers 200."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/-/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _wait_until(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return False


# -- strategies ---------------------------------------------------------------------------------


def _server_args(port: int, pidfile: str, *extra: str) -> List[str]:
    return [sys.executable, "-m", "graceful._demo_server", "--port", str(port),
            "--pidfile", pidfile, "--log-level", "WARNING", *extra]


def _repo_file(*parts: str) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *parts)


def _master_args(kind: str, port: int, pidfile: str) -> List[str]:
    """A master over 2 workers: our own (``serve --workers``) or external commands (``run``)."""
    apps = _repo_file("benchmarks", "apps.py")
    if kind == "master":
        return [sys.executable, "-m", "graceful", "serve", f"{apps}:wsgi", "--workers", "2",
                "--bind", f"web=127.0.0.1:{port}", "--pidfile", pidfile, "--ready-path",
                "/-/ready", "--log-level", "warning"]
    run = [sys.executable, "-m", "graceful", "run", "--bind", f"web=127.0.0.1:{port}",
           "--pidfile", pidfile, "--log-level", "warning"]
    if kind == "run":
        return run + ["--workers", "2", "--ready", "notify", "--", sys.executable,
                      _repo_file("examples", "systemd_style_server.py"), "--fd", "{fd:web}"]
    bench = _repo_file("benchmarks")
    if kind == "run-gunicorn":
        # gunicorn takes LISTEN_FDS by itself (and would close fd 3 before a --bind fd://3).
        return run + ["--ready", "delay:1", "--", sys.executable, "-m", "gunicorn", "--chdir",
                      bench, "-k", "gthread", "--threads", "4", "-w", "2", "apps:wsgi"]
    return run + ["--ready", "delay:1", "--", sys.executable, "-m", "uvicorn", "--app-dir", bench,
                  "--fd", "{fd:web}", "--log-level", "warning", "apps:asgi"]


def _restart_master(server: "_Server") -> Optional[int]:
    """SIGHUP to a master: its pid stays, its workers are replaced by a new generation."""
    master = server.pid()
    if master is None:
        return None
    old = set(_children(master))
    os.kill(master, signal.SIGHUP)
    _wait_until(lambda: bool(_children(master)) and not (set(_children(master)) & old), 60.0)
    new = set(_children(master)) - old
    return min(new) if new else None


def _restart_handoff(server: "_Server") -> Optional[int]:
    """A new, unrelated process takes the listeners over through the handoff socket."""
    handoff = server.args[server.args.index("--handoff-socket") + 1]
    new = server.take_over([*server.args, "--takeover", handoff])
    return new if server.pid() == new else None


def _restart_beside(server: "_Server") -> Optional[int]:
    """SO_REUSEPORT: a new process binds beside the old one, which is stopped once it is ready."""
    return server.start_beside()


def _serve_args(app: str, port: int, pidfile: str) -> List[str]:
    apps = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "benchmarks", "apps.py")
    return [sys.executable, "-m", "graceful", "serve", f"{apps}:{app}",
            "--bind", f"web=127.0.0.1:{port}", "--pidfile", pidfile, "--ready-path", "/-/ready",
            "--log-level", "warning"]


def _restart_reexec(server: _Server) -> Optional[int]:
    old = server.pid()
    if old is None:
        return None
    os.kill(old, signal.SIGHUP)
    _wait_until(lambda: server.pid() not in (None, old), 30.0)
    new = server.pid()
    return new if new != old else None


def _restart_naive(server: _Server) -> Optional[int]:
    server.proc.terminate()
    server.proc.wait(timeout=30)
    server.respawn()
    return server.proc.pid


STRATEGIES: Dict[str, dict] = {
    "reexec": {"description": "graceful: SIGHUP, self re-exec", "extra": (),
               "restart": _restart_reexec, "lossless": True},
    "naive": {"description": "naive: SIGTERM, then start again", "extra": ("--naive",),
              "restart": _restart_naive, "lossless": False},
    "serve-wsgi": {"description": "graceful serve (WSGI): SIGHUP", "serve": "wsgi",
                   "restart": _restart_reexec, "lossless": True},
    "serve-asgi": {"description": "graceful serve (ASGI): SIGHUP", "serve": "asgi",
                   "restart": _restart_reexec, "lossless": True},
    "handoff": {"description": "serve: takeover by a new process", "serve": "wsgi",
                "handoff": True, "restart": _restart_handoff, "lossless": True},
    "reuseport": {"description": "serve --reuse-port: new process beside, TERM old",
                  "serve": "wsgi", "reuseport": True, "restart": _restart_beside,
                  "lossless": True},
    "reuseport-naive": {"description": "naive: stdlib server beside, TERM old",
                        "naive-reuseport": True, "restart": _restart_beside, "lossless": False},
    "master": {"description": "serve --workers 2: SIGHUP", "master": "master",
               "restart": _restart_master, "lossless": True},
    "run": {"description": "graceful run (stdlib server): SIGHUP", "master": "run",
            "restart": _restart_master, "lossless": True},
    "run-gunicorn": {"description": "graceful run -- gunicorn: SIGHUP", "master": "run-gunicorn",
                     "restart": _restart_master, "lossless": True, "needs": "gunicorn"},
    "run-uvicorn": {"description": "graceful run -- uvicorn: SIGHUP", "master": "run-uvicorn",
                    "restart": _restart_master, "lossless": True, "needs": "uvicorn"},
}


def run_strategy(strategy: str, *, restarts: int = 5, duration: float = 10.0,
                 concurrency: int = 8, modes=("fresh", "keepalive"), paths=PATHS_MIXED,
                 progress: Callable[[str], None] = lambda line: None) -> RunResult:
    """Start the strategy's server, load it, restart it ``restarts`` times, and report."""
    spec = STRATEGIES[strategy]
    result = RunResult(strategy, spec["description"])
    if "needs" in spec:
        import importlib.util

        if importlib.util.find_spec(spec["needs"]) is None:
            result.errors.append(f"{spec['needs']} is not installed")
            return result
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="graceful-bench-") as tmp:
        pidfile = os.path.join(tmp, "server.pid")
        if "master" in spec:
            server = _Server(_master_args(spec["master"], port, pidfile), pidfile, ready_port=port)
        elif "serve" in spec:
            args = _serve_args(spec["serve"], port, pidfile)
            if spec.get("handoff"):
                args += ["--handoff-socket", os.path.join(tmp, "handoff.sock")]
            if spec.get("reuseport"):  # two processes at once: no pidfile to fight over
                at = args.index("--pidfile")
                args[at:at + 2] = ["--reuse-port"]
            server = _Server(args, pidfile, ready_port=port, env=spec.get("env"))
        elif "naive-reuseport" in spec:
            server = _Server([sys.executable, _repo_file("benchmarks", "naive_reuseport_server.py"),
                              str(port)], pidfile, ready_port=port)
        else:
            server = _Server(_server_args(port, pidfile, *spec["extra"]), pidfile)
        stats = Stats()
        per_mode = max(1, concurrency // len(modes))
        loads = [LoadGenerator(port, concurrency=per_mode, mode=mode, paths=paths, stats=Stats())
                 for mode in modes]
        try:
            for load in loads:
                load.start(max_duration=duration + 60)
            interval = duration / (restarts + 1)
            for i in range(restarts):
                time.sleep(interval)  # pacing of the benchmark, not synchronisation
                before = {pid for load in loads for pid in load.stats.first_seen}
                signalled = time.monotonic()
                result.restarted_at.append(signalled - stats.started)
                new = spec["restart"](server)
                # Handover: the first response from any pid not seen before (a master's new
                # workers, or a wrapped server's own worker processes).
                fresh = lambda: {pid: t for load in loads  # noqa: E731
                                 for pid, t in list(load.stats.first_seen.items())
                                 if pid not in before}
                seen = new is not None and _wait_until(lambda: bool(fresh()), 30.0)
                if not seen:
                    result.errors.append(f"restart {i + 1}: no response from a new pid")
                    continue
                first = min(fresh().values())
                new = min(fresh(), key=lambda pid: fresh()[pid])
                result.handovers.append(first - signalled)
                result.restarts += 1
                progress(f"{strategy}: restart {i + 1}/{restarts} -> pid {new} "
                         f"({(first - signalled) * 1000:.0f} ms)")
            time.sleep(interval)
        finally:
            for load in loads:
                load.stop()
            server.close()
        for load in loads:
            _merge(stats, load.stats)
        result.stats = stats
    return result


def _merge(into: Stats, other: Stats) -> None:
    for kind in KINDS:
        into.counts[kind] += other.counts[kind]
    into.latencies.extend(other.latencies)
    offset = int((other.started - into.started) / 0.1)
    for bucket, (ok, errors) in other.series.items():
        point = into.series.setdefault(bucket + offset, [0, 0])
        point[0] += ok
        point[1] += errors
    for pid, t in other.first_seen.items():
        into.first_seen[pid] = min(t, into.first_seen.get(pid, t))
    into.samples.extend(other.samples[: max(0, 20 - len(into.samples))])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def format_table(results: List[RunResult]) -> str:
    """A plain-text table, one column per strategy run."""
    rows = [("", [r.description for r in results])]
    dicts = [r.to_dict() for r in results]
    rows.append(("requests", [str(d["total"]) for d in dicts]))
    rows.append(("failed", [str(d["failed"]) for d in dicts]))
    for kind in KINDS[1:]:
        if any(d["counts"][kind] for d in dicts):
            rows.append((f"  {kind}", [str(d["counts"][kind]) for d in dicts]))
    rows.append(("restarts", [str(d["restarts"]) for d in dicts]))
    rows.append(("median handover", [_ms(d["handover_ms"]["median"]) for d in dicts]))
    rows.append(("latency p50 / p99", [f"{_ms(d['latency_ms']['p50'])} / {_ms(d['latency_ms']['p99'])}"
                                       for d in dicts]))
    widths = [max(len(r[0]) for r in rows)] + [
        max(len(r[1][i]) for r in rows) for i in range(len(results))]
    lines = []
    for label, cells in rows:
        lines.append("  ".join([label.ljust(widths[0])] +
                               [c.rjust(widths[i + 1]) for i, c in enumerate(cells)]))
    return "\n".join(lines)


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f} ms"
