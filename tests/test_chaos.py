"""Quick cells of the fault-injection suite (benchmarks/chaos.py), through the script's own code.

Each cell starts a real server in its own process group (killed whole by the cell, whatever
happens), loads it, injects the fault and checks every invariant the long run checks. The load
time is short; the rounds are fewer than in the long run.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys

import pytest

from graceful import _proc
from _support import PYTHON, children_of, process_state, reap_orphans, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_chaos():
    """Import benchmarks/chaos.py without leaving benchmarks/ on sys.path (its apps.py and
    scenarios/ could shadow names the tests use)."""
    saved = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location(
            "graceful_bench_chaos", os.path.join(ROOT, "benchmarks", "chaos.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    finally:
        sys.path[:] = saved


chaos = _load_chaos()


def _explain(result) -> str:
    return f"{result.violations} {result.notes} {result.samples}"


@pytest.mark.parametrize("fault, mode, rounds, must_kill", [
    ("successor-killed", "reexec-wsgi", 3, False),  # a fast successor may win the race
    ("old-killed", "handoff", 1, True),
    ("workers-killed", "workers", 3, True),
    ("import-raises", "run", 1, False),
    ("garbage-slowloris", "reexec-asgi", 1, False),
    # An upgrade while the server is out of fds fails cleanly (it used to die with an EMFILE
    # traceback in the upgrade thread, before "upgrade not done" could be logged).
    ("fd-exhaustion", "reexec-wsgi", 1, False),
])
def test_quick_cell_holds_every_invariant(fault, mode, rounds, must_kill):
    result = chaos.run_cell(fault, mode, rounds=rounds, load_seconds=2.0)
    assert result.passed, _explain(result)
    assert result.requests > 0
    assert result.causes["other"] == 0, _explain(result)
    if must_kill:  # the fault really happened
        assert result.kills > 0, _explain(result)


def test_a_failure_on_a_process_nobody_killed_is_a_violation():
    # The attribution must not excuse everything: only the killed pid, only after the kill.
    Failure = chaos.Failure
    killed = [(100.0, 42)]
    causes = chaos.attribute([
        Failure(101.0, "reset", 42, "on the killed pid, after the kill"),
        Failure(99.0, "reset", 42, "on the killed pid, before the kill"),
        Failure(101.0, "reset", 43, "on another pid"),
        Failure(101.0, "eof", None, "fresh, just after a kill"),
        Failure(150.0, "eof", None, "fresh, long after any kill"),
    ], killed)
    assert causes == {"killed": 2, "other": 3}


def test_a_dead_pidfile_is_seen_by_the_watch(tmp_path):
    # The pidfile watch is what proves "the pidfile always names a live server": it must see a
    # pidfile that names a dead process.
    class Dead:
        def pid(self):
            return 2 ** 22 + 1  # above the default pid_max: never a live process

    watch = chaos.PidfileWatch(Dead()).start()
    chaos.wait_until(lambda: watch.worst > 0.2, 30.0, 0.05)
    assert watch.stop() > 0.2


def _group_members(pgid: int):
    """Live (not zombie) processes of process group ``pgid``."""
    return [m.pid for m in _proc.group(pgid) if m.state != "Z"]


def _ready_server_of(script_pid: int):
    """The pid of the cell's server once it logged that it is ready (its stdout is the cell's
    log file, found through /proc), else None."""
    for pid in children_of(script_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"graceful" not in f.read():
                    continue
            with open(os.readlink(f"/proc/{pid}/fd/1"), errors="replace") as log:
                if "ready: pid" in log.read():
                    return pid
        except OSError:
            continue
    return None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_kills_the_servers_it_started(procs, tmp_path, signum):
    # Each cell's server is a session of its own, so a signal to the script never reaches it:
    # the script must kill the groups itself, or an interrupted run leaves servers serving.
    with open(tmp_path / "chaos.err", "wb") as err:
        script = procs.spawn([PYTHON, os.path.join(ROOT, "benchmarks", "chaos.py"),
                              "--only", "successor-killed", "--mode", "reexec-wsgi",
                              "--load-seconds", "300", "--json", str(tmp_path / "chaos.json")],
                             stderr=err, stdout=subprocess.DEVNULL)
    server = wait_for(lambda: _ready_server_of(script.pid), 120,
                      what="the cell's server to be ready")
    script.send_signal(signum)
    script.wait(120)

    def server_group_gone() -> bool:
        reap_orphans()  # the server is our orphan (a subreaper) once the script is gone
        return process_state(server) in (None, "Z") and not _group_members(server)

    wait_for(server_group_gone, 30, what=f"the server group {server} to be gone")
    assert script.returncode == 128 + signum, (tmp_path / "chaos.err").read_text()
    assert f"{signum.name}: killed the running servers" in (tmp_path / "chaos.err").read_text()
