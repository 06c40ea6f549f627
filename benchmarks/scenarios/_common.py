"""Shared pieces of the incident scenarios: processes, waiting, load totals, tables, JSON.

Every process a scenario starts goes through ``Processes.start``: it gets its own session (so
its process group holds everything it forks, re-executed generations included) and is killed
with its whole group when the scenario ends, whatever happened.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.path.join(REPO, "benchmarks", "results")
PYTHON = sys.executable

if REPO not in sys.path:
    sys.path.insert(0, REPO)  # run from a checkout without installing: graceful imports

from graceful import _proc  # noqa: E402
from graceful._loadgen import KINDS, LoadGenerator, Stats  # noqa: E402

__all__ = ["HERE", "REPO", "PYTHON", "KINDS", "LoadGenerator", "Stats", "Processes",
           "wait_until", "free_port", "http_status", "wait_http", "child_env", "parser",
           "print_table", "write_json", "load_totals", "proc_state",
           "children_of", "zombies_of", "group_pids", "serving_pid", "repo_file"]


def repo_file(*parts: str) -> str:
    return os.path.join(REPO, *parts)


def child_env(**extra: str) -> Dict[str, str]:
    """The environment for a child: graceful importable from this checkout, no inherited fds."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GRACEFUL_", "LISTEN_")) and k != "NOTIFY_SOCKET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


class Processes:
    """Processes started by a scenario; ``close()`` kills each one's process group."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    def start(self, args: Sequence[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("env", child_env())
        proc = subprocess.Popen(list(args), start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self.procs = []

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; returns whether it was."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)  # polling interval of a bounded wait


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port: int, path: str = "/fast", timeout: float = 2.0) -> Optional[int]:
    """The status of ``GET path`` on 127.0.0.1:port, or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_http(port: int, path: str = "/fast", timeout: float = 30.0,
              proc: Optional[subprocess.Popen] = None) -> bool:
    """Wait until ``GET path`` answers 200 (False at the deadline or if ``proc`` exited)."""
    return wait_until(lambda: (proc is not None and proc.poll() is not None)
                      or http_status(port, path, timeout=1.0) == 200, timeout, 0.02) \
        and (proc is None or proc.poll() is None)


def serving_pid(port: int, path: str = "/fast") -> Optional[int]:
    """The ``X-Pid`` of whoever answers on ``port`` now."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        pid = response.getheader("X-Pid")
        return int(pid) if pid and pid.isdigit() else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# -- /proc --------------------------------------------------------------------------------------


def proc_state(pid: int) -> Optional[str]:
    return _proc.state(pid)


def children_of(pid: int, include_zombies: bool = False) -> List[int]:
    return _proc.children(pid, zombies=include_zombies)


def group_pids(pgid: int) -> List[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid and proc_state(int(entry)) not in (
                        None, "Z", "X"):
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def zombies_of(pid: int) -> List[int]:
    return [kid for kid in children_of(pid, include_zombies=True) if proc_state(kid) == "Z"]


# -- load ---------------------------------------------------------------------------------------


def load_totals(loads: Iterable[LoadGenerator]) -> Dict[str, object]:
    """Counts of several load generators added up: total, failed, and one entry per kind."""
    counts = dict.fromkeys(KINDS, 0)
    latencies: List[float] = []
    samples: List[str] = []
    for load in loads:
        for kind in KINDS:
            counts[kind] += load.stats.counts[kind]
        latencies.extend(load.stats.latencies)
        samples.extend(load.stats.samples[:5])
    total = sum(counts.values())
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None
    return {"total": total, "failed": total - counts["ok"], "counts": counts,
            "p99_ms": None if p99 is None else round(p99 * 1000, 1),
            "error_samples": samples[:10]}


def failure_breakdown(counts: Dict[str, int], kinds: Sequence[str] = KINDS[1:]) -> str:
    parts = [f"{counts[k]} {k}" for k in kinds if counts.get(k)]
    return ", ".join(parts) if parts else "-"


# -- output -------------------------------------------------------------------------------------


def parser(doc: Optional[str], name: str) -> argparse.ArgumentParser:
    first = (doc or "").strip().splitlines()[0] if doc else None
    p = argparse.ArgumentParser(description=first)
    p.add_argument("--json", metavar="PATH",
                   default=os.path.join(RESULTS, f"scenario-{name}.json"),
                   help=f"write the results here (benchmarks/results/scenario-{name}.json)")
    return p


def print_table(columns: Sequence[str], rows: Sequence[Tuple[str, Sequence[object]]]) -> str:
    """One column per run (naive first), one row per measure; returns the text it printed."""
    header = ("", list(columns))
    cells = [header] + [(label, [str(v) for v in values]) for label, values in rows]
    widths = [max(len(label) for label, _ in cells)]
    widths += [max(len(values[i]) for _, values in cells) for i in range(len(columns))]
    lines = ["  ".join([label.ljust(widths[0])] + [v.rjust(widths[i + 1])
                                                  for i, v in enumerate(values)])
             for label, values in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(path: str, data: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    shown = os.path.abspath(path)
    if shown.startswith(REPO + os.sep):
        shown = os.path.relpath(shown, REPO)
    print(f"wrote {shown}", file=sys.stderr)


def exit_text(code: Optional[int]) -> str:
    """A Popen returncode as text: ``0``, ``1``, ``SIGTERM``."""
    if code is None:
        return "-"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return str(code)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
