from __future__ import annotations

import pytest

from _support import Processes


@pytest.fixture
def procs():
    """Start child processes with ``procs.spawn(args, ...)`` / ``procs.python(...)``; every
    process group started is SIGKILLed at teardown, so a failing test leaves nothing behind."""
    processes = Processes()
    try:
        yield processes
    finally:
        processes.close()
