"""``graceful serve``: loading applications, interface detection, and clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from _support import ROOT
from graceful.serve import AppLoadError, detect_interface, load_app


def test_load_app_forms(tmp_path, monkeypatch):
    (tmp_path / "myapp.py").write_text(
        "def app(environ, start_response):\n    return []\n"
        "async def asgi(scope, receive, send):\n    pass\n"
        "class Holder:\n    inner = staticmethod(app)\n"
        "def create():\n    return asgi\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert detect_interface(load_app("myapp:app")) == "wsgi"
    assert detect_interface(load_app("myapp:asgi")) == "asgi"
    assert detect_interface(load_app("myapp:create()")) == "asgi"
    assert load_app("myapp:Holder.inner").__name__ == "app"
    assert detect_interface(load_app(str(tmp_path / "myapp.py") + ":asgi")) == "asgi"

    class Callable:
        async def __call__(self, scope, receive, send):
            pass
    assert detect_interface(Callable()) == "asgi"


@pytest.mark.parametrize("spec, message", [
    ("nocolon", "write MODULE:APP"),
    ("no_such_module_xyz:app", "no module named 'no_such_module_xyz'"),
    ("graceful:no_such_attr", "has no attribute 'no_such_attr'"),
    ("graceful:__version__", "not an application callable"),
    ("/no/such/file.py:app", "no file /no/such/file.py"),
    ("graceful:1bad", "is not an attribute name"),
])
def test_load_errors_are_clear(spec, message):
    with pytest.raises(AppLoadError, match=message):
        load_app(spec)


def test_cli_reports_a_bad_app_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "graceful", "serve", "no_such_module_xyz:app",
                             "--bind", "127.0.0.1:0"], capture_output=True, text=True, timeout=60,
                            cwd=str(tmp_path), env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "graceful serve: cannot load 'no_such_module_xyz:app'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "'0' is not a positive whole number"),
    (["--graceful-timeout", "-1"], "'-1' is not a number of seconds"),
    (["--bind", "nonsense:port"], "nonsense:port"),
])
def test_cli_bad_options(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "graceful", "serve", "x:app", *args],
                            capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                            env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
