"""sd_notify: the exact datagrams, to a path and to an abstract NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
import time

import pytest

from _support import open_fds
from graceful import systemd


@pytest.fixture(params=["path", "abstract"])
def receiver(request, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
        env_value = address
    else:
        name = f"graceful-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        env_value = "@" + name
    sock.settimeout(10)
    yield sock, {"NOTIFY_SOCKET": env_value}
    sock.close()


def test_each_helper_sends_its_exact_bytes(receiver):
    sock, env = receiver
    assert systemd.ready(environ=env)
    assert sock.recv(4096) == b"READY=1"
    assert systemd.ready("serving 2 listeners", environ=env)
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving 2 listeners"
    assert systemd.stopping(environ=env)
    assert sock.recv(4096) == b"STOPPING=1"
    assert systemd.mainpid(4242, environ=env)
    assert sock.recv(4096) == b"MAINPID=4242"
    assert systemd.status("draining", environ=env)
    assert sock.recv(4096) == b"STATUS=draining"
    assert systemd.notify("WATCHDOG=1", "STATUS=x", environ=env)
    assert sock.recv(4096) == b"WATCHDOG=1\nSTATUS=x"


def test_reloading_carries_the_monotonic_clock(receiver):
    sock, env = receiver
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading(environ=env)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = sock.recv(4096).split(b"\n")
    assert first == b"RELOADING=1"
    key, value = second.split(b"=")
    assert key == b"MONOTONIC_USEC" and before <= int(value) <= after


def test_from_a_child_process(receiver, procs):
    sock, env = receiver
    code = "from graceful import systemd; systemd.ready('from child'); systemd.mainpid(7)"
    proc = procs.python("-c", code, env={**os.environ, **env})
    assert proc.wait(timeout=30) == 0
    assert sock.recv(4096) == b"READY=1\nSTATUS=from child"
    assert sock.recv(4096) == b"MAINPID=7"


def test_unset_is_a_silent_no_op():
    assert systemd.notify("READY=1", environ={}) is False
    assert systemd.ready(environ={"NOTIFY_SOCKET": ""}) is False


def test_a_socket_that_is_not_there_warns_and_does_not_raise(tmp_path, caplog):
    before = open_fds()
    with caplog.at_level(logging.WARNING, logger="graceful"):
        assert systemd.ready(environ={"NOTIFY_SOCKET": str(tmp_path / "missing")}) is False
    assert "sd_notify" in caplog.text
    assert open_fds() == before


def test_fields_cannot_inject_lines():
    with pytest.raises(ValueError):
        systemd.notify("STATUS=a\nREADY=1", environ={})
    with pytest.raises(ValueError):
        systemd.notify("READY", environ={})


def test_no_fd_leaks(receiver):
    sock, env = receiver
    before = open_fds()
    for _ in range(50):
        systemd.ready(environ=env)
        sock.recv(4096)
    assert open_fds() == before
