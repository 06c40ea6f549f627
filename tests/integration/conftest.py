"""The integration suite: real frameworks and clients against `graceful serve`.

These tests need the packages in tests/integration/requirements.txt, which are never
dependencies of graceful, so the README's unit command (`python -m pytest` from the repository
root, with only pytest and hypothesis installed) must neither run nor fail on them. Everything in
this directory is therefore ignored unless GRACEFUL_INTEGRATION=1 is set; with it set, the
suite must run under the integration venv's python (child servers are started with
``sys.executable``, so they see the same packages), and a missing package is a usage error
naming the fix instead of a page of import errors.

This file imports only the standard library and pytest: the unit run loads it too.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

ENABLED = os.environ.get("GRACEFUL_INTEGRATION") == "1"
HERE = os.path.dirname(os.path.abspath(__file__))

if not ENABLED:
    # Generic on purpose: any file added here later (test_wrapped_peers.py, proxy, TLS,
    # WebSocket tests) is gated the same way without touching this file.
    collect_ignore_glob = ["*"]

# tests/ holds _support.py and _serve.py; pytest puts it on sys.path for tests/conftest.py in
# the usual runs, but a run started inside this directory would not have it.
_TESTS = os.path.dirname(HERE)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# Import names of what requirements.txt installs; checked before anything is collected.
REQUIRED_MODULES = ("flask", "django", "fastapi", "multipart", "httpx", "requests", "aiohttp",
                    "h11", "uvicorn", "gunicorn", "websockets", "hypothesis")

VENV_HINT = ("python3 -m venv /tmp/integ-venv && /tmp/integ-venv/bin/pip install -e . "
             "-r tests/integration/requirements.txt, then GRACEFUL_INTEGRATION=1 "
             "/tmp/integ-venv/bin/python -m pytest tests/integration")


def pytest_configure(config) -> None:
    if not ENABLED:
        return
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"GRACEFUL_INTEGRATION=1 but {sys.executable} lacks {', '.join(missing)}: "
            f"run the integration suite in its own venv ({VENV_HINT})")


@pytest.fixture
def markers(tmp_path):
    """A directory where the apps record events (INTEGRATION_MARKERS) that tests wait on."""
    path = tmp_path / "markers"
    path.mkdir()
    return path


@pytest.fixture
def data_file(tmp_path):
    """A 300 kB file of fixed pseudo-random bytes that the apps serve at /file."""
    import random

    path = tmp_path / "data.bin"
    path.write_bytes(random.Random(16).randbytes(300_000))
    return path


@pytest.fixture
def serve(procs, tmp_path, markers, data_file):
    """``serve("flask_app.py:app", "--workers", "2", ...)`` starts `graceful serve` with an app
    from tests/integration/apps/ on a free loopback port and waits until it is ready; the
    ``procs`` fixture kills its process group at teardown."""
    from _harness import GracefulServer

    def start(app: str, *extra: str, **kwargs) -> GracefulServer:
        return GracefulServer(procs, tmp_path, app, *extra, markers=markers,
                              data_file=data_file, **kwargs)

    return start


@pytest.fixture
def reference(procs, tmp_path, markers, data_file):
    """``reference("uvicorn", "fastapi_app:app")`` or ``reference("gunicorn", ...)``: the same
    app under another server from the venv, to tell a graceful defect from the app's own."""
    from _harness import ReferenceServer

    def start(server: str, app: str, *extra: str) -> ReferenceServer:
        return ReferenceServer(procs, tmp_path, server, app, *extra, markers=markers,
                               data_file=data_file)

    return start
