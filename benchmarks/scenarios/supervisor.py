"""A supervisor that tracks the pid it started, managing a server that re-executes itself.

The incident: supervisord, a container entrypoint script, or any process manager that tracks
the one pid it started runs a server that upgrades itself by re-executing (SIGHUP: the server
starts its successor, hands it the sockets, and exits). At the first upgrade the supervisor sees
"its" process exit, takes it for a crash and starts another copy, which cannot take the pidfile
or the port and exits, again and again (supervisord ends in FATAL). Meanwhile the real server,
re-parented to whoever reaps orphans, runs unmanaged: "stop" no longer stops it, and when the
supervisor is PID 1 of a container (the usual place for one) and reaps only the child it
started, every later generation that exits stays a zombie.

The supervisor here is a small part of this script (``--supervise``): it starts the program,
waits for that one pid only (``Popen.poll``), restarts it when it exits (backoff; gives up after
3 starts that did not last 1 s, like supervisord's ``startretries``), and on SIGTERM sends
SIGTERM to it, then SIGKILL after 3 s (``stopwaitsecs``). It is a child subreaper, which is what
PID 1 of a container is: orphans of its program become its children.

Each run: start the program under the supervisor, keep fresh and keep-alive clients running
(fast and 200 ms requests), upgrade 3 times with ``kill -HUP $(cat PIDFILE)`` (what the README
says to do), stop the load, then stop the supervisor (``supervisorctl stop``) and check whether
anything still serves.

- naive: the self re-executing demo server (``python -m graceful._demo_server``) directly;
- pidproxy: the same server under ``graceful pidproxy PIDFILE -- ...``;
- master: ``graceful serve benchmarks/apps.py:wsgi --workers 2`` (stable pid; SIGHUP replaces
  the workers).

Run it (about 20 s; exits 0 only if neither graceful run failed a request, lost its server,
left a zombie, or kept serving after the stop):

    python benchmarks/scenarios/supervisor.py
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

UPGRADES = 3
STARTSECS, STARTRETRIES, STOPWAITSECS = 1.0, 3, 3.0


# -- the supervisor (runs as its own process: python supervisor.py --supervise -- CMD ...) ------


def supervise(command: List[str]) -> int:
    _become_subreaper()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))

    def emit(event: str, **fields: object) -> None:
        print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)

    child: Optional[subprocess.Popen] = None
    started = restart_at = 0.0
    quick_failures = 0

    def spawn() -> None:
        nonlocal child, started
        child = subprocess.Popen(command)
        started = time.monotonic()
        emit("start", pid=child.pid)

    emit("supervisor", pid=os.getpid())
    spawn()
    while True:
        select.select([wake_r], [], [], 0.05)  # wakes on a signal; else a 50 ms tick
        try:
            os.read(wake_r, 512)
        except BlockingIOError:
            pass
        if stopping:
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(STOPWAITSECS)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            emit("stopped", tracked=child.pid if child else None)
            return 0
        if child is not None and child.poll() is not None:  # waitpid(child.pid): ours only
            lived = time.monotonic() - started
            emit("exit", pid=child.pid, status=child.returncode, lived=round(lived, 3))
            quick_failures = quick_failures + 1 if lived < STARTSECS else 0
            if quick_failures > STARTRETRIES:
                emit("fatal", pid=child.pid)
                child = None
                continue
            child = None
            restart_at = time.monotonic() + 0.2 * quick_failures  # backoff, like supervisord
        if child is None and restart_at and time.monotonic() >= restart_at and \
                quick_failures <= STARTRETRIES:
            restart_at = 0.0
            spawn()


def _become_subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans below become our children


# -- the scenario -------------------------------------------------------------------------------


class Supervised:
    """The supervisor process and the events it prints."""

    def __init__(self, procs: c.Processes, command: List[str], log: str) -> None:
        self.log = log  # the supervisor's and its programs' stderr
        with open(log, "wb") as stderr:
            self.proc = procs.start([c.PYTHON, os.path.abspath(__file__), "--supervise", "--",
                                     *command], stdout=subprocess.PIPE, stderr=stderr)
        self.events: List[Dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def of(self, kind: str) -> List[Dict]:
        return [e for e in list(self.events) if e["event"] == kind]


def _pidfile_pid(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _alive(pid: Optional[int]) -> bool:
    return pid is not None and c.proc_state(pid) not in (None, "Z", "X")


def program(kind: str, port: int, pidfile: str) -> List[str]:
    demo = [c.PYTHON, "-m", "graceful._demo_server", "--port", str(port), "--pidfile", pidfile,
            "--log-level", "WARNING"]
    if kind == "naive":
        return demo
    if kind == "pidproxy":
        return [c.PYTHON, "-m", "graceful", "pidproxy", pidfile, "--", *demo]
    return [c.PYTHON, "-m", "graceful", "serve", c.repo_file("benchmarks", "apps.py") + ":wsgi",
            "--workers", "2", "--bind", f"web=127.0.0.1:{port}", "--pidfile", pidfile,
            "--log-level", "warning"]


def _upgrade(kind: str, pidfile: str) -> bool:
    """``kill -HUP $(cat PIDFILE)``, then wait until the old generation is gone."""
    pid = _pidfile_pid(pidfile)
    if pid is None:
        return False
    if kind == "master":
        old = set(c.children_of(pid))
        os.kill(pid, signal.SIGHUP)
        return c.wait_until(lambda: bool(c.children_of(pid))
                            and not (set(c.children_of(pid)) & old)
                            and not any(_alive(w) for w in old), 30.0)
    os.kill(pid, signal.SIGHUP)
    return c.wait_until(lambda: _pidfile_pid(pidfile) not in (None, pid) and not _alive(pid), 30.0)


def run(kind: str) -> dict:
    procs = c.Processes()
    port = c.free_port()
    loads = [c.LoadGenerator(port, concurrency=2, mode=mode,
                             paths=("/fast", "/fast", "/fast", "/slow"))
             for mode in ("fresh", "keepalive")]
    with tempfile.TemporaryDirectory(prefix="graceful-supervisor-") as tmp:
        pidfile = os.path.join(tmp, "server.pid")
        try:
            sup = Supervised(procs, program(kind, port, pidfile),
                             os.path.join(tmp, "stderr.log"))
            if not c.wait_http(port, "/fast", 30.0, sup.proc) or \
                    not c.wait_until(lambda: _pidfile_pid(pidfile) is not None, 10.0):
                raise RuntimeError(f"{kind}: the server did not start")
            supervisor_pid = sup.of("supervisor")[0]["pid"]
            for load in loads:
                load.start(max_duration=120)
            time.sleep(0.5)  # pacing: steady load first
            upgraded = 0
            for _ in range(UPGRADES):
                upgraded += _upgrade(kind, pidfile)
                time.sleep(0.5)  # pacing between upgrades
            # What a supervisor needs after a few deploys: to know where its server is.
            time.sleep(0.5)  # pacing: let a restart loop run its course for a moment
            serving = _pidfile_pid(pidfile)
            starts = sup.of("start")
            tracked = starts[-1]["pid"] if starts else None
            tracked_alive = _alive(tracked) and not sup.of("fatal")
            zombies = c.zombies_of(supervisor_pid)
            unexpected_exits = len(sup.of("exit"))
            restarts = len(starts) - 1
            fatal = bool(sup.of("fatal"))
            for load in loads:
                load.stop()
            # supervisorctl stop
            sup.proc.send_signal(signal.SIGTERM)
            if not c.wait_until(lambda: sup.proc.poll() is not None, STOPWAITSECS + 10):
                raise RuntimeError(f"{kind}: the supervisor did not stop")
            after_stop = c.serving_pid(port)
            answering = after_stop is not None or c.http_status(port) is not None
        finally:
            for load in loads:
                load.stop()
            procs.close()
        with open(os.path.join(tmp, "stderr.log"), errors="replace") as f:
            stderr_tail = f.read()[-3000:]
    totals = c.load_totals(loads)
    return {"upgrades": upgraded, "requests": totals["total"], "failed": totals["failed"],
            "counts": totals["counts"], "error_samples": totals["error_samples"],
            "supervisor_saw_exits": unexpected_exits, "supervisor_restarts": restarts,
            "fatal": fatal, "tracked_pid": tracked, "tracked_alive": tracked_alive,
            "serving_pid": serving, "tracked_is_server": tracked == serving and tracked_alive,
            "zombies": len(zombies), "serving_after_stop": answering,
            "pid_after_stop": after_stop, "events": sup.events, "stderr_tail": stderr_tail}


def _tracking(r: dict, kind: str) -> str:
    if r["tracked_is_server"]:
        return "the server"
    if kind == "pidproxy" and r["tracked_alive"]:
        return "pidproxy (follows it)"
    return "a dead copy" if not r["tracked_alive"] else f"pid {r['tracked_pid']} (not serving)"


COLUMNS = {"naive": "naive: re-exec server", "pidproxy": "graceful pidproxy",
           "master": "serve --workers 2"}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--supervise":
        return supervise(sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:])
    p = c.parser(__doc__, "supervisor")
    args = p.parse_args()
    runs = {}
    for kind in ("naive", "pidproxy", "master"):
        c.say(f"{kind}: under a pid-tracking supervisor, {UPGRADES} upgrades, then stop ...")
        t0 = time.monotonic()
        runs[kind] = run(kind)
        runs[kind]["seconds"] = round(time.monotonic() - t0, 1)
    order = list(runs)
    rows = [("upgrades (kill -HUP pidfile)", [f"{runs[k]['upgrades']}/{UPGRADES}" for k in order]),
            ("requests", [runs[k]["requests"] for k in order]),
            ("failed requests", [runs[k]["failed"] for k in order]),
            ("exits the supervisor saw", [runs[k]["supervisor_saw_exits"] for k in order]),
            ("copies it restarted", [runs[k]["supervisor_restarts"] for k in order]),
            ("supervisor gave up (FATAL)", ["yes" if runs[k]["fatal"] else "no" for k in order]),
            ("the supervisor tracks", [_tracking(runs[k], k) for k in order]),
            ("zombies", [runs[k]["zombies"] for k in order]),
            ("serving after supervisor stop", [
                f"yes (pid {runs[k]['pid_after_stop']})" if runs[k]["serving_after_stop"]
                else "no" for k in order])]
    table = c.print_table([COLUMNS[k] for k in order], rows)
    ok = all(runs[k]["failed"] == 0 and runs[k]["upgrades"] == UPGRADES
             and runs[k]["supervisor_saw_exits"] == 0 and runs[k]["zombies"] == 0
             and not runs[k]["serving_after_stop"] for k in ("pidproxy", "master"))
    print("graceful: managed across every upgrade, no zombie, no failed request" if ok
          else "graceful: FAILED (see above)")
    c.write_json(args.json, {"scenario": "supervisor", "ok": ok, "table": table, "runs": runs})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
