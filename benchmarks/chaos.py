"""Fault injection: break graceful servers on purpose under load and check what must hold.

    python benchmarks/chaos.py                      # every cell, faults x modes (~10 min)
    python benchmarks/chaos.py --quick              # one cell per fault, a few modes
    python benchmarks/chaos.py --only workers-killed --mode workers

Each cell starts one server in MODE (its own process group, killed whole at the end), loads it
with keep-alive and fresh-connection clients, injects FAULT a few times, and checks:

- failures: every failed request is attributed to a cause. "killed" means it was in flight on a
  process this script killed or stopped (the pid of the previous response on that keep-alive
  connection, or, for a request without one, a kill within the request timeout before it
  failed); anything else is a violation.
- pidfile: polled every 50 ms, it names a live process (never a dead one for more than 1 s), and
  ``graceful status`` succeeds at the end.
- zombies: no process of the server's group has a zombie child once the cell settled.
- growth: the fd count and RSS of the long-lived process (the master, or the final generation
  against the first) grow by no more than a small slack.
- spinning: once idle, the whole group uses less than 20% of one core.
- capacity: a master ends with all its workers alive.

Modes: reexec-wsgi and reexec-asgi (``graceful serve``, SIGHUP re-exec), workers (``serve
--workers 2 --timeout 2``), run (``graceful run --workers 2`` over a stdlib server), handoff (a
new ``serve --takeover`` process takes the sockets over).

Cells that make no sense print "-":
- successor-killed: only re-exec and handoff start a successor process beside the serving one;
  a master's new generation is workers, which workers-killed covers.
- workers-killed and worker-stopped: only the master modes have workers to supervise;
  worker-stopped needs the heartbeat of graceful's own servers (``--timeout``), which an external
  command under ``graceful run`` does not send.
- lifespan-failure: ASGI only (reexec-asgi).

Exit status 0 only when every invariant of every cell that ran holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scenarios._common import (PYTHON, REPO, Processes, child_env, free_port,  # noqa: E402
                               group_pids, proc_state, wait_http, wait_until, write_json,
                               zombies_of)

from graceful._loadgen import _classify, _read_response  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results", "chaos.json")
REQUEST_TIMEOUT = 10.0  # seconds a load request may take before it counts as a timeout
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
FD_SLACK, RSS_SLACK = 4, 16 << 20
MODES = ("reexec-wsgi", "reexec-asgi", "workers", "run", "handoff")
MASTER_MODES = ("workers", "run")
WORKERS = 2

# The app every cell serves: benchmarks/apps.py, broken on purpose while the file "break" in its
# directory says how (a deploy of a bad version). Under ``graceful run`` it is the command.
_APP = '''\
import os, sys, time
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, {bench!r})
try:
    with open(os.path.join(HERE, "break")) as f:
        BROKEN = f.read().strip()
except FileNotFoundError:
    BROKEN = ""
if BROKEN == "raise":
    raise RuntimeError("chaos: a deploy that raises at import")
if BROKEN == "hang":
    time.sleep(3600)  # a deploy that hangs at import
if BROKEN == "exit0":
    sys.exit(0)
from apps import wsgi, asgi as _asgi

async def asgi(scope, receive, send):
    if scope["type"] == "lifespan" and BROKEN == "lifespan":
        await receive()
        await send({{"type": "lifespan.startup.failed", "message": "chaos: lifespan failure"}})
        return
    await _asgi(scope, receive, send)

if __name__ == "__main__":  # graceful run: the stdlib server of the examples
    import runpy
    runpy.run_path({example!r}, run_name="__main__")
'''


# -- load with failure attribution ----------------------------------------------------------------


@dataclass
class Failure:
    at: float  # time.monotonic()
    kind: str
    pid: Optional[int]  # X-Pid of the previous response on this connection, if any
    detail: str


class ChaosLoad:
    """Keep-alive and fresh-connection clients that remember which pid each connection talks to."""

    def __init__(self, port: int, keepalive: int = 3, fresh: int = 2) -> None:
        self.port = port
        self.modes = ["keepalive"] * keepalive + ["fresh"] * fresh
        self.ok = 0
        self.failures: List[Failure] = []
        self._stopping = False
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    def start(self) -> "ChaosLoad":
        self._thread.start()
        return self

    def stop(self) -> "ChaosLoad":
        self._stopping = True
        self._thread.join(REQUEST_TIMEOUT + 30)
        return self

    async def _run(self) -> None:
        await asyncio.gather(*(self._client(i, mode) for i, mode in enumerate(self.modes)))

    async def _client(self, index: int, mode: str) -> None:
        conn, pid = None, None
        path_turn = index
        deadline = time.monotonic() + 600  # bounded whatever happens to stop()
        while not self._stopping and time.monotonic() < deadline:
            if conn is not None and conn[0].at_eof():
                conn = _close(conn)  # closed while idle: not a failure
            if conn is None:
                pid = None
                try:
                    conn = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port), REQUEST_TIMEOUT)
                except Exception as exc:
                    self._fail(_classify(exc), None, f"connect: {exc!r}")
                    await asyncio.sleep(0.01)  # nobody listens: do not spin
                    continue
            path_turn += 1
            path = "/slow" if path_turn % 8 == 0 else "/fast"
            close = mode == "fresh"
            request = (f"GET {path} HTTP/1.1\r\nHost: chaos\r\n"
                       + ("Connection: close\r\n" if close else "") + "\r\n").encode()
            try:
                conn[1].write(request)
                status, headers = await asyncio.wait_for(_read_response(conn[0]),
                                                         REQUEST_TIMEOUT)
            except Exception as exc:
                self._fail(_classify(exc), pid, f"{path}: {exc!r}")
                conn = _close(conn)
                continue
            if status != 200:
                self._fail("bad_status", pid, f"{path}: status {status}")
            else:
                self.ok += 1
            text = headers.get("x-pid", "")
            pid = int(text) if text.isdigit() else None
            if close or headers.get("connection", "").lower() == "close" \
                    or headers.get(":version") == "HTTP/1.0":
                conn = _close(conn)
        if conn is not None:
            _close(conn)

    def _fail(self, kind: str, pid: Optional[int], detail: str) -> None:
        self.failures.append(Failure(time.monotonic(), kind, pid, detail))


def _close(conn) -> None:
    conn[1].close()
    return None


def attribute(failures: List[Failure], killed: List[Tuple[float, int]]) -> Dict[str, int]:
    """Split failures into "killed" (in flight on a process we killed) and "other"."""
    causes = {"killed": 0, "other": 0}
    for failure in failures:
        if failure.pid is not None:
            hit = any(pid == failure.pid and at <= failure.at for at, pid in killed)
        else:  # no response yet on this connection: a kill shortly before is the cause
            window = REQUEST_TIMEOUT + 2 if failure.kind == "timeout" else 2.0
            hit = any(at <= failure.at <= at + window for at, _ in killed)
        causes["killed" if hit else "other"] += 1
    return causes


# -- /proc ----------------------------------------------------------------------------------------


def _stat(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def rss_bytes(pid: int) -> int:
    fields = _stat(pid)
    return 0 if fields is None else int(fields[21]) * PAGE


def alive(pid: Optional[int]) -> bool:
    return pid is not None and proc_state(pid) not in (None, "Z", "X")


def live_children(pid: int) -> List[int]:
    from graceful._proc import children

    return [kid for kid in children(pid) if alive(kid)]


# -- one server under test ----------------------------------------------------------------------


class Server:
    """The server of one cell: its command, its log, its pidfile, its process group."""

    def __init__(self, mode: str, tmp: str, procs: Processes, *, fd_limit: Optional[int] = None,
                 small_fs: bool = False) -> None:
        self.mode, self.tmp, self.procs = mode, tmp, procs
        self.port = free_port()
        self.logpath = os.path.join(tmp, "server.log")
        self.rundir = os.path.join(tmp, "run")
        os.makedirs(self.rundir)
        self.small_fs = small_fs
        self.app = os.path.join(tmp, "chaos_app.py")
        with open(self.app, "w") as f:
            f.write(_APP.format(bench=os.path.join(REPO, "benchmarks"),
                                example=os.path.join(REPO, "examples",
                                                     "systemd_style_server.py")))
        self.handoff = os.path.join(tmp, "handoff.sock")
        self.takeovers: List[subprocess.Popen] = []
        self.killed: List[Tuple[float, int]] = []  # (when, pid) of every process we killed
        self._log = open(self.logpath, "ab")
        args = self.command()
        if small_fs:  # the run directory on a 256 KiB tmpfs of its own mount namespace
            args = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    f'mount -t tmpfs -o size=256k chaos "$0" && exec "$@"', self.rundir, *args]
        limit = None if fd_limit is None else (
            lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit)))
        self.proc = procs.start(args, stdout=self._log, stderr=subprocess.STDOUT,
                                preexec_fn=limit)
        self.pgid = self.proc.pid
        path = "/" if mode == "run" else "/fast"
        if not wait_http(self.port, path, 60.0, self.proc) \
                or not wait_until(lambda: self.pid() is not None, 30.0):
            raise RuntimeError(f"{mode}: the server did not start:\n{self.log()[-2000:]}")

    def command(self, *extra: str) -> List[str]:
        pidfile = os.path.join(self.rundir, "server.pid")
        common = ["--bind", f"web=127.0.0.1:{self.port}", "--pidfile", pidfile,
                  "--log-level", "info", "--graceful-timeout", "5", "--ready-timeout", "4",
                  *extra]
        if self.mode == "run":
            return [PYTHON, "-m", "graceful", "run", "--workers", str(WORKERS), "--ready",
                    "notify", *common, "--", PYTHON, self.app, "--fd", "{fd:web}"]
        app = f"{self.app}:{'asgi' if self.mode == 'reexec-asgi' else 'wsgi'}"
        serve = [PYTHON, "-m", "graceful", "serve", app, "--header-timeout", "3", *common]
        if self.mode == "workers":
            return serve + ["--workers", str(WORKERS), "--timeout", "2"]
        if self.mode == "handoff":
            return serve + ["--handoff-socket", self.handoff]
        return serve

    # -- what the server says about itself

    def pidfile(self) -> str:
        """The pidfile's path as this process can read it (through a tmpfs namespace if any)."""
        path = os.path.join(self.rundir, "server.pid")
        if not self.small_fs:
            return path
        for pid in group_pids(self.pgid):
            if os.path.exists(f"/proc/{pid}/root{self.rundir}/server.pid"):
                return f"/proc/{pid}/root{path}"
        return path

    def pid(self) -> Optional[int]:
        try:
            with open(self.pidfile()) as f:
                text = f.read().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def log(self) -> str:
        with open(self.logpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def count(self, text: str) -> int:
        return self.log().count(text)

    def status(self) -> Tuple[int, str]:
        done = subprocess.run([PYTHON, "-m", "graceful", "status", "--pidfile", self.pidfile()],
                              capture_output=True, text=True, timeout=30, env=child_env())
        return done.returncode, (done.stdout + done.stderr).strip()

    def workers(self) -> List[int]:
        pid = self.pid()
        return live_children(pid) if pid else []

    # -- acts

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        self.killed.append((time.monotonic(), pid))
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def set_broken(self, how: str) -> None:
        path = os.path.join(self.tmp, "break")
        if how:
            with open(path, "w") as f:
                f.write(how)
        elif os.path.exists(path):
            os.unlink(path)

    def upgrade(self, timeout: float = 30.0) -> bool:
        """One upgrade by the mode's means; True once the new generation serves."""
        if self.mode == "handoff":
            return self.takeover(timeout) is not None
        if self.mode in MASTER_MODES:
            done, failed = self.count("is serving (workers"), self.count("reload failed")
            os.kill(self.pid(), signal.SIGHUP)
            wait_until(lambda: self.count("is serving (workers") > done
                       or self.count("reload failed") > failed, timeout, 0.02)
            return self.count("is serving (workers") > done
        old = self.pid()
        failed = self.count("upgrade not done")
        os.kill(old, signal.SIGHUP)
        wait_until(lambda: self.pid() not in (None, old)
                   or self.count("upgrade not done") > failed, timeout, 0.02)
        return self.pid() not in (None, old)

    def start_takeover(self) -> subprocess.Popen:
        args = self.command("--takeover", self.handoff)
        proc = self.procs.start(args, stdout=self._log, stderr=subprocess.STDOUT)
        self.takeovers.append(proc)
        return proc

    def takeover(self, timeout: float) -> Optional[int]:
        proc = self.start_takeover()
        wait_until(lambda: self.pid() == proc.pid or proc.poll() is not None, timeout, 0.02)
        if self.pid() == proc.pid:
            return proc.pid
        self.kill(proc.pid)  # hung or failed: the old one must keep serving
        return None

    def group(self) -> List[int]:
        pids = set(group_pids(self.pgid))
        for proc in self.takeovers:
            pids.update(group_pids(proc.pid))
        return sorted(pids)

    def close(self) -> None:
        self._log.close()


class PidfileWatch:
    """Polls the pidfile every 50 ms; remembers the longest time it named no live process."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.worst = 0.0
        self.samples = 0
        self._bad_since: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> "PidfileWatch":
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(10)
        return self.worst

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.samples += 1
            now = time.monotonic()
            if alive(self.server.pid()):
                self._bad_since = None
                continue
            if self._bad_since is None:
                self._bad_since = now
            self.worst = max(self.worst, now - self._bad_since)


# -- faults: each acts on a loaded server and returns notes on what it did ---------------------


def _random_moment(low: float = 0.0, high: float = 0.4) -> None:
    time.sleep(random.uniform(low, high))  # the fault's moment, chosen at random on purpose


def fault_successor_killed(server: Server, rounds: int) -> List[str]:
    """The new process is SIGKILLed at a random moment before it has taken over."""
    notes = []
    for _ in range(rounds):
        old = server.pid()
        if server.mode == "handoff":
            successor = server.start_takeover().pid
        else:
            before = set(live_children(old))
            os.kill(old, signal.SIGHUP)
            if not wait_until(lambda: set(live_children(old)) - before, 10.0):
                notes.append("no successor appeared")
                continue
            successor = min(set(live_children(old)) - before)
        _random_moment()
        if server.pid() != old:  # it took over already: that upgrade simply succeeded
            notes.append("took over before the kill")
            continue
        rolled = server.count("upgrade rolled back")
        server.kill(successor)
        if not wait_until(lambda: not alive(successor), 10.0):
            notes.append(f"successor {successor} did not die")
        if server.mode != "handoff":  # a trigger during an upgrade is dropped: wait for its end
            if not wait_until(lambda: server.count("upgrade rolled back") > rolled, 20.0, 0.02):
                notes.append("VIOLATION: no rollback after the successor was killed")
    if not server.upgrade():
        notes.append("VIOLATION: no upgrade possible after the faults")
    return notes


def fault_old_killed(server: Server, rounds: int) -> List[str]:
    """Right after the new generation serves, the old one is SIGKILLed (its drain cut short)."""
    notes = []
    for _ in range(rounds):
        if server.mode in MASTER_MODES:
            old = server.workers()
            if not server.upgrade():
                notes.append("VIOLATION: reload did not complete")
                continue
            for pid in old:
                if alive(pid):
                    server.kill(pid)
            continue
        old = server.pid()
        if not server.upgrade():
            notes.append("VIOLATION: upgrade did not complete")
            continue
        server.kill(old)
    return notes


def fault_workers_killed(server: Server, rounds: int) -> List[str]:
    """A random worker is SIGKILLed, again and again; the master must refill the slot."""
    notes = []
    for _ in range(rounds):
        workers = server.workers()
        if not workers:
            notes.append("no worker to kill")
            continue
        server.kill(random.choice(workers))
        _random_moment(0.3, 1.0)
    return notes


def fault_worker_stopped(server: Server, rounds: int) -> List[str]:
    """A worker is SIGSTOPped: the heartbeat watchdog (--timeout 2) must replace it."""
    notes = []
    for _ in range(rounds):
        workers = server.workers()
        victim = random.choice(workers)
        server.kill(victim, signal.SIGSTOP)
        if not wait_until(lambda: not alive(victim), 30.0, 0.05):
            notes.append(f"VIOLATION: stopped worker {victim} was never replaced")
    return notes


def _broken_deploy(how: str) -> Callable[[Server, int], List[str]]:
    def fault(server: Server, rounds: int) -> List[str]:
        notes = []
        for _ in range(rounds):
            old = server.pid()
            server.set_broken(how)
            if server.upgrade(timeout=20.0):
                notes.append(f"VIOLATION: a deploy that does '{how}' was taken into service")
            if server.pid() != old or not alive(old):
                notes.append("VIOLATION: the serving process changed after a failed deploy")
            server.set_broken("")
        if not server.upgrade():
            notes.append("VIOLATION: a good deploy after the broken ones did not complete")
        return notes

    fault.__doc__ = f"A deploy that does '{how}' is rolled back; the old version keeps serving."
    return fault


def fault_fd_exhaustion(server: Server, rounds: int) -> List[str]:
    """Under RLIMIT_NOFILE 128, 160 idle connections exhaust the server's fds and it is upgraded:
    the upgrade may fail (it needs fds), but cleanly, with a logged reason and no traceback;
    once the connections are gone, an upgrade succeeds."""
    notes = []
    for _ in range(rounds):
        emfile = server.count("Too many open files")
        idle = []
        for _ in range(160):
            try:
                idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            except OSError:
                break
        if not wait_until(lambda: server.count("Too many open files") > emfile, 10.0, 0.02):
            notes.append("the server never ran out of fds")
        upgraded = server.upgrade()
        notes.append(f"upgrade under exhaustion {'done' if upgraded else 'refused'}")
        for sock in idle:
            sock.close()
        # The queued connections are accepted and closed too (header timeout): wait for fds.
        serving = server.pid()
        wait_until(lambda: 0 < fd_count(serving) < 64, 30.0, 0.05)
        if not server.upgrade():
            notes.append("VIOLATION: no upgrade after the connections closed")
    return notes


def fault_full_fs(server: Server, rounds: int) -> List[str]:
    """The pidfile's filesystem (a 256 KiB tmpfs) is full during an upgrade; then freed."""
    notes = []
    filler = os.path.join(os.path.dirname(server.pidfile()), "filler")
    for _ in range(rounds):
        try:
            with open(filler, "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass  # ENOSPC: full
        server.upgrade()
        os.unlink(filler)
    if not server.upgrade():
        notes.append("VIOLATION: no upgrade after the filesystem was freed")
    return notes


def fault_garbage(server: Server, rounds: int) -> List[str]:
    """Garbage bytes and slow-loris clients on the wire while the server is upgraded."""
    stop = threading.Event()
    threads = [threading.Thread(target=_garbage_client, args=(server.port, stop), daemon=True),
               threading.Thread(target=_slow_loris, args=(server.port, stop), daemon=True)]
    for t in threads:
        t.start()
    notes = []
    try:
        for _ in range(rounds):
            if not server.upgrade():
                notes.append("VIOLATION: upgrade did not complete")
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    return notes


def _garbage_client(port: int, stop: threading.Event) -> None:
    rng = random.Random()
    for _ in range(2000):  # bounded
        if stop.is_set():
            return
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600))))
                s.shutdown(socket.SHUT_WR)
                for _ in range(100):  # read the 400 (or nothing) until the server closes
                    if not s.recv(65536):
                        break
        except OSError:
            pass


def _slow_loris(port: int, stop: threading.Event) -> None:
    socks = []
    try:
        for _ in range(200):  # bounded: one byte per connection every 0.1 s
            if stop.wait(0.1):
                return
            if len(socks) < 8:
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    s.sendall(b"GET /fast HTTP/1.1\r\n")
                    socks.append(s)
                except OSError:
                    pass
            for s in list(socks):
                try:
                    s.send(b"X")
                except OSError:
                    socks.remove(s)
                    s.close()
    finally:
        for s in socks:
            s.close()


FAULTS: Dict[str, dict] = {
    "successor-killed": {"run": fault_successor_killed, "modes": ("reexec-wsgi", "reexec-asgi",
                                                                  "handoff"), "rounds": 4},
    "old-killed": {"run": fault_old_killed, "modes": MODES, "rounds": 3},
    "workers-killed": {"run": fault_workers_killed, "modes": MASTER_MODES, "rounds": 8},
    "worker-stopped": {"run": fault_worker_stopped, "modes": ("workers",), "rounds": 2},
    "import-raises": {"run": _broken_deploy("raise"), "modes": MODES, "rounds": 1},
    "import-hangs": {"run": _broken_deploy("hang"), "modes": MODES, "rounds": 1},
    "exits-0": {"run": _broken_deploy("exit0"), "modes": MODES, "rounds": 1},
    "lifespan-fails": {"run": _broken_deploy("lifespan"), "modes": ("reexec-asgi",),
                       "rounds": 1},
    "fd-exhaustion": {"run": fault_fd_exhaustion, "modes": MODES, "rounds": 1,
                      "fd_limit": 128},
    "full-fs": {"run": fault_full_fs, "modes": MODES, "rounds": 1, "small_fs": True},
    "garbage-slowloris": {"run": fault_garbage, "modes": MODES, "rounds": 3},
}


# -- one cell -----------------------------------------------------------------------------------


@dataclass
class CellResult:
    fault: str
    mode: str
    requests: int = 0
    failed: int = 0
    kills: int = 0  # processes killed or stopped by the fault
    causes: Dict[str, int] = field(default_factory=lambda: {"killed": 0, "other": 0})
    violations: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    samples: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.violations

    def cell_text(self) -> str:
        text = f"{self.requests}/{self.causes['killed']}k/{self.causes['other']}"
        return text if self.passed else text + " FAIL"

    def to_dict(self) -> dict:
        return {"fault": self.fault, "mode": self.mode, "requests": self.requests,
                "failed": self.failed, "kills": self.kills, "failed_by_cause": dict(self.causes),
                "passed": self.passed, "violations": list(self.violations),
                "notes": list(self.notes), "error_samples": list(self.samples),
                "seconds": round(self.seconds, 1)}


# The process sets of the cells running now; _stop_on_signal kills their groups.
_RUNNING: List[Processes] = []


def run_cell(fault: str, mode: str, rounds: Optional[int] = None,
             load_seconds: float = 8.0) -> CellResult:
    """Start MODE, load it, inject FAULT ``rounds`` times, and check every invariant."""
    spec = FAULTS[fault]
    result = CellResult(fault, mode)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="graceful-chaos-") as tmp, \
            _running(Processes()) as procs:
        server = None
        try:
            server = Server(mode, tmp, procs, fd_limit=spec.get("fd_limit"),
                            small_fs=spec.get("small_fs", False))
            _check_cell(server, spec, rounds or spec["rounds"], load_seconds, result)
        except Exception as exc:  # a broken cell is a failed cell, never a crashed run
            result.violations.append(f"cell error: {exc!r}")
        finally:
            if server is not None:
                if not result.passed:
                    result.notes.append("log tail: " + server.log()[-1500:])
                server.close()
    result.seconds = time.monotonic() - started
    return result


@contextlib.contextmanager
def _running(procs: Processes) -> Iterator[Processes]:
    """``procs`` in _RUNNING while the cell runs; its groups killed at the end, however it ends."""
    _RUNNING.append(procs)
    try:
        with procs:
            yield procs
    finally:
        _RUNNING.remove(procs)


def _stop_on_signal(signum: int, frame: object) -> None:
    """SIGTERM/SIGINT: kill the running cells' process groups now, then exit as interrupted.

    Each server runs in a session of its own, so a signal to this script (or a Ctrl-C to its
    terminal) never reaches it: without this an interrupted run leaves servers serving. The
    SystemExit then runs the cells' cleanup (waits, temporary directories); a second signal
    kills this script outright.
    """
    signal.signal(signum, signal.SIG_DFL)
    for procs in list(_RUNNING):
        for proc in procs.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    print(f"chaos: {signal.Signals(signum).name}: killed the running servers", file=sys.stderr,
          flush=True)
    raise SystemExit(128 + signum)


def _check_cell(server: Server, spec: dict, rounds: int, load_seconds: float,
                result: CellResult) -> None:
    master = server.mode in MASTER_MODES
    warm = ChaosLoad(server.port).start()
    wait_until(lambda: warm.total >= 100, 30.0, 0.02)
    warm.stop()
    first = server.pid()
    if master:
        wait_until(lambda: len(server.workers()) == WORKERS, 30.0, 0.05)
    base_fds, base_rss = fd_count(first), rss_bytes(first)
    load = ChaosLoad(server.port).start()
    watch = PidfileWatch(server).start()
    loaded_until = time.monotonic() + load_seconds
    try:
        wait_until(lambda: load.total >= 50, 30.0, 0.02)
        result.notes.extend(spec["run"](server, rounds))
        served = load.total
        wait_until(lambda: load.total >= served + 20, 30.0, 0.02)  # it serves after the faults
        wait_until(lambda: time.monotonic() >= loaded_until, load_seconds)  # the cell's load time
    finally:
        load.stop()
        worst_gap = watch.stop()
    result.requests, result.failed = load.total, len(load.failures)
    result.kills = len(server.killed)
    result.causes = attribute(load.failures, server.killed)
    result.samples = [f"{f.kind} (pid {f.pid}): {f.detail}" for f in load.failures[:10]]
    result.violations.extend(n for n in result.notes if n.startswith("VIOLATION"))
    if unexpected_tracebacks(server.log()):
        result.violations.append("a traceback in the server's log: "
                                 + unexpected_tracebacks(server.log())[0][-300:])
    if result.causes["other"]:
        result.violations.append(f"{result.causes['other']} failed requests not caused by a kill")
    if worst_gap > 1.0:
        result.violations.append(f"pidfile named no live process for {worst_gap:.1f}s")
    _check_settled(server, master, first, base_fds, base_rss, result)


def _check_settled(server: Server, master: bool, first: int, base_fds: int, base_rss: int,
                   result: CellResult) -> None:
    """After the load: one generation left, no zombies, no growth, no spinning, full capacity."""
    final = server.pid()
    if not alive(final):
        result.violations.append(f"pidfile names no live process at the end ({final})")
        return
    expected = 1 + (WORKERS if master else 0)
    # Old generations drain for at most --graceful-timeout (5 s), workers respawn with backoff.
    wait_until(lambda: len(server.group()) <= expected
               and (not master or len(server.workers()) == WORKERS), 45.0, 0.1)
    if master and len(server.workers()) != WORKERS:
        result.violations.append(f"capacity: {len(server.workers())} of {WORKERS} workers alive")
    leftover = [pid for pid in server.group() if pid != final and pid not in
                live_children(final)]
    if leftover:
        result.violations.append(f"processes left over: {leftover}")
    zombies = [z for pid in server.group() for z in zombies_of(pid)]
    if zombies:
        result.violations.append(f"zombies: {zombies}")
    code, text = server.status()
    if code != 0:
        result.violations.append(f"graceful status exited {code}: {text}")
    long_lived = final if not master else first
    if master and final != first:
        result.violations.append(f"the master's pid changed: {first} -> {final}")
    # Connections close asynchronously after the load stopped: wait for the fds to come down.
    wait_until(lambda: fd_count(long_lived) <= base_fds + FD_SLACK, 15.0, 0.1)
    if fd_count(long_lived) > base_fds + FD_SLACK:
        result.violations.append(f"fds grew: {base_fds} -> {fd_count(long_lived)}")
    if rss_bytes(long_lived) > base_rss + RSS_SLACK:
        result.violations.append(f"RSS grew: {base_rss >> 20} -> {rss_bytes(long_lived) >> 20} MiB")
    busy = idle_cpu_share(server.group())
    if busy > 0.2:
        result.violations.append(f"spinning: {busy:.0%} of a core while idle")


def unexpected_tracebacks(log: str) -> List[str]:
    """Tracebacks through graceful's code in a server log, other than those of the deploys
    broken on purpose."""
    found = []
    # Each chunk runs to the next traceback: two broken workers failing at once interleave
    # their lines, so the error line is not always the end of a chunk.
    for chunk in log.split("Traceback (most recent call last)")[1:]:
        # Only graceful's own: the stdlib example server under ``run`` prints a BrokenPipe
        # traceback for a client that left (the garbage and slow-loris clients do).
        if "chaos: a deploy" not in chunk and f"{os.sep}graceful{os.sep}" in chunk:
            found.append(chunk[:2000])
    return found


def idle_cpu_share(pids: List[int], window: float = 1.5) -> float:
    """CPU time the processes used over ``window`` seconds of no load, as a share of one core."""
    before = sum(cpu_seconds(pid) for pid in pids)
    time.sleep(window)  # the measuring window itself
    return (sum(cpu_seconds(pid) for pid in pids) - before) / window


# -- the matrix ---------------------------------------------------------------------------------

QUICK = [("successor-killed", "reexec-wsgi"), ("old-killed", "handoff"),
         ("workers-killed", "workers"), ("import-raises", "run"),
         ("garbage-slowloris", "reexec-asgi")]


def cells(only: List[str], modes: List[str], quick: bool) -> List[Tuple[str, str]]:
    chosen = QUICK if quick else [(f, m) for f in FAULTS for m in MODES if m in FAULTS[f]["modes"]]
    return [(f, m) for f, m in chosen if (not only or f in only) and (not modes or m in modes)]


def format_table(results: List[CellResult]) -> str:
    """Faults down, modes across; each cell is requests/killed-in-flight failures/other."""
    by_cell = {(r.fault, r.mode): r for r in results}
    faults = [f for f in FAULTS if any(r.fault == f for r in results)]
    modes = [m for m in MODES if any(r.mode == m for r in results)]
    rows = [["fault"] + modes]
    for fault in faults:
        rows.append([fault] + [by_cell[(fault, m)].cell_text() if (fault, m) in by_cell else "-"
                               for m in modes])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                       for i, cell in enumerate(row)) for row in rows]
    total = sum(r.requests for r in results)
    killed = sum(r.causes["killed"] for r in results)
    other = sum(r.causes["other"] for r in results)
    lines.append(f"cells: requests/failed in flight on a killed process (k)/failed otherwise; "
                 f"total {total} requests, {killed} killed in flight, {other} other")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--only", action="append", default=[], choices=sorted(FAULTS),
                        metavar="FAULT", help=f"repeatable; one of {', '.join(FAULTS)}")
    parser.add_argument("--mode", action="append", default=[], choices=MODES,
                        help="repeatable; default: every mode")
    parser.add_argument("--quick", action="store_true", help="five representative cells")
    parser.add_argument("--json", default=RESULTS, help="write the results here")
    parser.add_argument("--load-seconds", type=float, default=None,
                        help="load time of a cell at least (8, --quick 3)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random moments")
    args = parser.parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_on_signal)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    chosen = cells(args.only, args.mode, args.quick)
    if not chosen:
        parser.error("--only/--mode select no cell (see the docstring for which cells exist)")
    load_seconds = args.load_seconds or (3.0 if args.quick else 8.0)
    started = time.monotonic()
    results = []
    for fault, mode in chosen:
        print(f"{fault} x {mode} ...", file=sys.stderr, flush=True)
        result = run_cell(fault, mode, load_seconds=load_seconds)
        results.append(result)
        print(f"  {result.cell_text()} in {result.seconds:.1f}s"
              + "".join(f"\n  ! {v}" for v in result.violations)
              + "".join(f"\n  {n}" for n in result.notes if n.startswith("log tail")),
              file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    print(format_table(results))
    print(f"{len(results)} cells in {elapsed:.0f}s, seed {seed}: "
          f"{sum(not r.passed for r in results)} failed")
    write_json(args.json, {"seed": seed, "seconds": round(elapsed, 1),
                           "passed": all(r.passed for r in results),
                           "cells": [r.to_dict() for r in results]})
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
