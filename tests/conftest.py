from __future__ import annotations

import os
import signal
import time

import pytest
from hypothesis import HealthCheck, settings

from _support import Processes, become_subreaper, children_of, process_state, reap_orphans

# Hypothesis times every example (200 ms by default) and checks that data generation is quick:
# wall-clock thresholds that a loaded machine breaks while the code under test is fine. Loaded
# here, before the test modules are imported, so every @settings(...) inherits it.
settings.register_profile("loaded-machine", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("loaded-machine")


def pytest_configure(config):
    # Orphaned server generations become our children, so tests can see (and reap) them.
    become_subreaper()


@pytest.fixture
def procs():
    """Start child processes with ``procs.spawn(args, ...)`` / ``procs.python(...)``; every
    process group started is SIGKILLed at teardown, so a failing test leaves nothing behind."""
    processes = Processes()
    try:
        yield processes
    finally:
        processes.close()
        _kill_escaped_descendants()


def _kill_escaped_descendants(timeout: float = 30.0) -> None:
    """SIGKILL what outlived the SIGKILL of its process group, and reap it.

    A process group of its own (the command under ``graceful run --init``) survives the kill
    of the group the test started; orphaned, it is reparented to this process (a subreaper).
    Left running it would serve on, hold ports and show up as a stray child in later tests.
    Until reaped here, a child's pid cannot be reused, so signalling it is safe.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in children_of(os.getpid()) if process_state(pid) not in (None, "Z")]
        if not alive:
            break
        for pid in alive:
            _kill_with_its_group(pid)
        time.sleep(0.01)  # sleep-ok: poll interval of a deadline-bounded cleanup
        reap_orphans()
    reap_orphans()


def _kill_with_its_group(pid: int) -> None:
    try:
        group = os.getpgid(pid)
        if group != os.getpgrp():  # never our own group: that would kill the test run
            os.killpg(group, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
