"""Quick cells of the fault-injection suite (benchmarks/chaos.py), through the script's own code.

Each cell starts a real server in its own process group (killed whole by the cell, whatever
happens), loads it, injects the fault and checks every invariant the long run checks. The load
time is short; the rounds are fewer than in the long run.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

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
