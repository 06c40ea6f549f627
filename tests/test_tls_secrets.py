"""The password of an encrypted TLS key reaches ``serve --workers`` workers without being in any
environment: no process of the server's group shows it in /proc/PID/environ (where the same
uid can read it, and where every program the application starts inherits it), and no worker
keeps the descriptor it came in. The workers of a reload and a respawned worker get it too."""

from __future__ import annotations

import os
import secrets
import signal
import ssl
import subprocess

import pytest

from _serve import Client, Served
from _tls import make_certificates
from graceful import _proc


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    paths = make_certificates(str(directory))
    password = "pw-" + secrets.token_hex(12)  # a word found nowhere else in an environment
    encrypted = str(directory / "encrypted.key")
    subprocess.run(["openssl", "rsa", "-in", paths["server.key"], "-aes256", "-passout",
                    f"pass:{password}", "-out", encrypted], check=True, capture_output=True,
                   timeout=60)
    return dict(paths, encrypted=encrypted, password=password)


def _https_pid(served, certs) -> int:
    """The pid of the worker that answers one HTTPS request."""
    context = ssl.create_default_context(cafile=certs["ca.pem"])
    with context.wrap_socket(served.connect(timeout=30), server_hostname="127.0.0.1") as sock:
        response = Client(sock).request("GET", "/")
    assert response.status == 200, response
    return int(response.headers["x-pid"])


def _holders_of_the_password(master: int, password: str):
    """(pid, where) for each process of the server's group with the password in its
    environment, and each worker that still holds the memfd it came in."""
    found = []
    for member in _proc.group(master):
        try:
            with open(f"/proc/{member.pid}/environ", "rb") as f:
                if password.encode() in f.read():
                    found.append((member.pid, "environ"))
            if member.pid != master:
                for fd in os.listdir(f"/proc/{member.pid}/fd"):
                    if "graceful-secrets" in os.readlink(f"/proc/{member.pid}/fd/{fd}"):
                        found.append((member.pid, f"fd {fd}"))
        except OSError:
            continue  # it exited meanwhile
    return found


def _serve(procs, tmp_path, certs, *extra, env=None):
    return Served(procs, tmp_path, "edge_wsgi.py:app", "--workers", "2", "--certfile",
                  certs["server.pem"], "--keyfile", certs["encrypted"], *extra, env=env)


def _serving_workers(served, exclude=()):
    """The master's two workers once both logged that they are ready, none of ``exclude``."""
    def ready():
        workers = set(_proc.children(served.proc.pid))
        log = served.log()
        if len(workers) == 2 and not workers & set(exclude) and all(
                f"ready: pid {pid} " in log for pid in workers):
            return workers
        return None
    return served.wait(ready, 60, what="two ready workers")


def test_password_on_the_command_line_is_in_no_environment_through_reload_and_respawn(
        procs, tmp_path, certs):
    password = certs["password"]
    served = _serve(procs, tmp_path, certs, "--keyfile-password", password)
    master = served.proc.pid
    first = _serving_workers(served)
    assert _https_pid(served, certs) in first
    assert _holders_of_the_password(master, password) == []

    os.kill(master, signal.SIGHUP)  # new workers read the encrypted key again: they need it
    second = _serving_workers(served, exclude=first)
    assert "generation 2 is serving" in served.log()
    assert _https_pid(served, certs) in second
    assert _holders_of_the_password(master, password) == []

    victim = min(second)
    os.kill(victim, signal.SIGKILL)  # the worker respawned in its slot gets it as well
    third = _serving_workers(served, exclude={victim})
    assert len(third - second) == 1
    assert _holders_of_the_password(master, password) == []
    assert "reload failed" not in served.log() and "wrong --keyfile-password" not in served.log()


def test_password_from_the_environment_stays_in_the_masters_only(procs, tmp_path, certs):
    password = certs["password"]
    env = dict(os.environ, GRACEFUL_KEYFILE_PASSWORD=password)
    served = _serve(procs, tmp_path, certs, env=env)
    master = served.proc.pid
    workers = _serving_workers(served)
    assert _https_pid(served, certs) in workers
    # The master was given it in its environment (the user's choice); it copies it nowhere.
    assert _holders_of_the_password(master, password) == [(master, "environ")]
