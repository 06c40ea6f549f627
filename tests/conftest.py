from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from _support import Processes, become_subreaper

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
