"""The package surface: cheap import, standard library only, the CLI entry points."""

from __future__ import annotations

import json
import subprocess
import sys

import graceful

HEAVY = ["asyncio", "subprocess", "socket", "selectors", "threading", "ipaddress", "http"]


def _modules_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", f"import sys, json; {code}; "
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def test_import_graceful_loads_nothing_heavy():
    # The import-time budget (under 20 ms) is met by importing lazily: a plain
    # `import graceful` must not pull in sockets, subprocesses, asyncio or threads.
    baseline = _modules_after("pass")
    loaded = _modules_after("import graceful") - baseline
    assert not [m for m in loaded if m.split(".")[0] in HEAVY], sorted(loaded)


def test_runtime_imports_are_standard_library_only():
    code = ("import sys; before = set(sys.modules); import graceful, pkgutil, importlib; "
            "[importlib.import_module('graceful.' + m.name) "
            "for m in pkgutil.iter_modules(graceful.__path__) if m.name != '__main__']; "
            "print([n for n, m in list(sys.modules.items()) if n not in before "
            "and 'site-packages' in (getattr(m, '__file__', None) or '') "
            "and not n.startswith('graceful')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_is_exported_lazily():
    for name in graceful.__all__:
        assert getattr(graceful, name) is not None
    assert "Upgrader" in dir(graceful)


def test_cli_help():
    for args in (["-m", "graceful", "--help"], ["-m", "graceful", "demo", "--help"]):
        result = subprocess.run([sys.executable, *args], capture_output=True, text=True)
        assert result.returncode == 0 and "graceful" in result.stdout
    result = subprocess.run([sys.executable, "-m", "graceful"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr
