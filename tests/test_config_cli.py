"""The Config through the real command line: a configuration change deploys by SIGHUP under load,
in one process and behind a master, and a bad one is a rollback that changes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from _serve import APPS, Served
from _support import ROOT, Load, free_port, wait_for

APP = os.path.join(APPS, "wsgi_app.py") + ":app"


def _ini(path, **values) -> str:
    path.write_text("[graceful]\n" + "".join(f"{k.replace('_', '-')} = {v}\n"
                                             for k, v in values.items()))
    return str(path)


def _ready_status(port: int) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/ready")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _hello_pid(port: int) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/hello")
        response = conn.getresponse()
        response.read()
        return int(response.getheader("X-Pid"))
    finally:
        conn.close()


def _start(procs, tmp_path, ini: str, *extra: str) -> Served:
    port = free_port()
    served = Served(procs, tmp_path, "wsgi_app.py:app", "--config", ini, *extra, port=port,
                    wait=False)
    served.wait(lambda: "is serving" in served.log() or "ready: pid" in served.log(),
                what="the server to serve")
    return served


@pytest.mark.parametrize("mode", ["one process", "workers"])
def test_a_changed_config_file_deploys_by_sighup_under_load(procs, tmp_path, mode):
    ini = tmp_path / "graceful.ini"
    extra = ("--workers", "2") if mode == "workers" else ()
    _ini(ini, threads=4)
    served = _start(procs, tmp_path, str(ini), *extra)
    assert _ready_status(served.port) == 404  # no ready path yet: the app answers
    load = Load(served.port, keepalive=True, paths=("/hello",), clients=4).start()
    try:
        load.wait_requests(50)
        _ini(ini, threads=4, ready_path="/ready")
        served.proc.send_signal(signal.SIGHUP)
        served.wait(lambda: _ready_status(served.port) == 200, what="the new configuration")
        done = load.total
        load.wait_requests(done + 50)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    if mode == "workers":
        assert served.proc.poll() is None  # the master keeps its pid


@pytest.mark.parametrize("mode", ["one process", "workers"])
def test_a_bad_config_file_at_reload_is_a_rollback(procs, tmp_path, mode):
    ini = tmp_path / "graceful.ini"
    extra = ("--workers", "2") if mode == "workers" else ()
    _ini(ini, ready_path="/ready")
    served = _start(procs, tmp_path, str(ini), *extra)
    before = _hello_pid(served.port)
    ini.write_text("[graceful]\nready-path = /ready\nthreadz = 4\n")
    served.proc.send_signal(signal.SIGHUP)
    served.wait(lambda: "threadz" in served.log(), what="the bad key to be reported")
    served.wait(lambda: "rolled back" in served.log() or "reload failed" in served.log(),
                what="the rollback")
    assert "did you mean threads?" in served.log()
    assert _ready_status(served.port) == 200
    if mode == "one process":
        assert _hello_pid(served.port) == before
    assert served.proc.poll() is None


def test_print_config_by_file_env_and_command_line_agree(tmp_path):
    ini = _ini(tmp_path / "g.ini", app=APP, bind="web=127.0.0.1:8001", workers=2,
               max_body=4096)
    env = dict(os.environ, PYTHONPATH=ROOT)

    def show(*args, **extra_env) -> str:
        result = subprocess.run([sys.executable, "-m", "graceful", "serve", *args,
                                 "--print-config"], capture_output=True, text=True, timeout=60,
                                env=dict(env, **extra_env), cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
        return "\n".join(line.split("  ;")[0].rstrip() for line in result.stdout.splitlines())

    by_file = show("--config", ini)
    by_env = show(GRACEFUL_APP=APP, GRACEFUL_BIND="web=127.0.0.1:8001", GRACEFUL_WORKERS="2",
                  GRACEFUL_MAX_BODY="4096")
    by_argv = show(APP, "--bind", "web=127.0.0.1:8001", "--workers", "2", "--max-body", "4096")
    assert by_file == by_env == by_argv
    assert "max-body = 4096" in by_file


@pytest.mark.parametrize("args, env, message", [
    (["serve", "x:app", "--config", "/nonexistent/g.ini"], {}, "--config /nonexistent/g.ini: No such"),
    (["serve", "x:app"], {"GRACEFUL_WORKRES": "2"}, "did you mean GRACEFUL_WORKERS?"),
    (["run", "--", "true"], {"GRACEFUL_STOP_SIGNAL": "NOPE"}, "'NOPE' is not a signal name"),
    (["serve"], {}, "no application"),
])
def test_bad_configuration_is_one_line_and_status_2(tmp_path, args, env, message):
    result = subprocess.run([sys.executable, "-m", "graceful", *args], capture_output=True,
                            text=True, timeout=60, cwd=str(tmp_path),
                            env=dict(os.environ, PYTHONPATH=ROOT, **env))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
