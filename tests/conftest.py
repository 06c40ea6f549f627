from __future__ import annotations

import pytest

from _support import Processes, become_subreaper


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
