"""Listeners: binding, adopting inherited fds, the registry, and real inheritance by children
(from a predecessor through GRACEFUL_FDS, and from systemd-socket-activate)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import uuid

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from _support import ROOT, free_port, http_get, read_line
from graceful.addresses import TCPAddress, UnixAddress, format_address
from graceful.errors import GracefulError, ListenerError
from graceful.listeners import Listeners, adopt, bind, default_backlog, local_address

CHILD = os.path.join(ROOT, "tests", "children", "listener_child.py")


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this machine")


def _assert_listener_flags(sock: socket.socket) -> None:
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    assert not os.get_inheritable(sock.fileno())
    assert not sock.getblocking()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _closed_fd() -> int:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    return r


# -- binding ------------------------------------------------------------------------------------


def test_bind_tcp4_is_a_nonblocking_cloexec_listener_with_reuseaddr():
    with bind("127.0.0.1:0") as sock:
        assert sock.family == socket.AF_INET
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        _assert_listener_flags(sock)
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the kernel queues it: the listener is live


def test_default_backlog_follows_somaxconn_within_bounds():
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    assert default_backlog() == max(128, min(somaxconn, 4096))


@needs_ipv6
def test_bind_tcp6_sets_v6only_explicitly():
    with bind("[::1]:0") as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        _assert_listener_flags(sock)
        assert local_address(sock) == TCPAddress("::1", sock.getsockname()[1])


def test_reuse_port_lets_two_listeners_share_a_port_and_its_absence_is_a_clear_error():
    with bind("127.0.0.1:0", reuse_port=True) as first:
        port = first.getsockname()[1]
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        with bind(f"127.0.0.1:{port}", reuse_port=True) as second:
            assert second.getsockname()[1] == port
        with pytest.raises(ListenerError, match=rf"cannot bind 127\.0\.0\.1:{port}: .*another server"):
            bind(f"127.0.0.1:{port}")


def test_bind_error_names_the_address():
    with pytest.raises(ListenerError, match=r"cannot resolve no-such-host\.invalid:80: .*check the host name"):
        bind("tcp://no-such-host.invalid:80")


def test_unix_socket_gets_the_mode_asked_for(tmp_path):
    path = str(tmp_path / "s.sock")
    with bind(f"unix:{path}", mode=0o600) as sock:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        _assert_listener_flags(sock)
        assert local_address(sock) == UnixAddress(path)


def test_stale_unix_socket_is_replaced(tmp_path):
    path = str(tmp_path / "s.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # a crashed server leaves its socket file behind
    with bind(f"unix:{path}") as sock:
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        client.close()
        assert sock.accept()[0]


def test_live_unix_socket_is_left_alone(tmp_path):
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen()
        inode = os.stat(path).st_ino
        with pytest.raises(ListenerError, match="a running process is listening"):
            bind(f"unix:{path}")
        assert os.stat(path).st_ino == inode


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
def test_path_that_is_not_a_socket_is_never_unlinked(tmp_path, kind):
    path = tmp_path / "s.sock"
    if kind == "file":
        path.write_text("precious")
    elif kind == "directory":
        path.mkdir()
    else:
        (tmp_path / "target").write_text("precious")
        path.symlink_to(tmp_path / "target")
    with pytest.raises(ListenerError, match="exists and is not a socket; refusing to remove it"):
        bind(f"unix:{path}")
    assert os.path.lexists(path)
    if kind != "directory":
        assert path.read_text() == "precious"


def test_abstract_unix_socket():
    name = f"graceful-test-{uuid.uuid4().hex}"
    with bind(f"unix:@{name}") as sock:
        assert local_address(sock) == UnixAddress(name, abstract=True)
        client = socket.socket(socket.AF_UNIX)
        client.connect(b"\0" + name.encode())
        client.close()


# -- adopting -----------------------------------------------------------------------------------


def test_adopt_keeps_the_fd_number_and_makes_it_cloexec_and_nonblocking():
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    plain.setblocking(True)
    os.set_inheritable(plain.fileno(), True)
    fd = plain.detach()
    sock = adopt(fd, source="test")
    with sock:
        assert sock.fileno() == fd
        _assert_listener_flags(sock)


def test_adopt_refuses_an_fd_that_is_not_open():
    fd = _closed_fd()
    with pytest.raises(ListenerError, match=rf"test source: fd {fd} is not open"):
        adopt(fd, source="test source")


@pytest.mark.parametrize("kind", ["file", "udp", "unconnected tcp", "connected unix"])
def test_adopt_refuses_what_is_not_a_listener_and_leaves_the_fd_open(tmp_path, kind):
    keep = []
    if kind == "file":
        fd = os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR)
        expected = "is not a socket"
    elif kind == "udp":
        keep.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        fd = keep[-1].fileno()
        expected = "is not a stream socket"
    elif kind == "unconnected tcp":
        keep.append(socket.socket())
        fd = keep[-1].fileno()
        expected = "is a socket that is not listening"
    else:
        a, b = socket.socketpair()
        keep += [a, b]
        fd = a.fileno()
        expected = "is a socket that is not listening"
    try:
        with pytest.raises(ListenerError, match=f"fd {fd} {expected}"):
            adopt(fd, source="test")
        assert _is_open(fd)
    finally:
        for s in keep:
            s.close()
        if kind == "file":
            os.close(fd)


# -- the registry -------------------------------------------------------------------------------


def _inherited(*names_and_addresses):
    """Listeners as a predecessor would pass them: bound elsewhere, keyed by name."""
    return [(name, bind(address)) for name, address in names_and_addresses]


def test_listen_prefers_the_inherited_listener_of_that_name():
    inherited = _inherited(("web", "127.0.0.1:0"))
    fd = inherited[0][1].fileno()
    listeners = Listeners(inherited)
    try:
        sock = listeners.listen("web", "127.0.0.1:0")  # :0 would bind a new port: it must not
        assert sock.fileno() == fd
        assert listeners.listen("web", "127.0.0.1:0") is sock
        assert listeners.fds() == {"web": fd}
        assert listeners.unclaimed == []
    finally:
        listeners.close()


def test_listen_matches_an_unnamed_inherited_listener_by_address():
    port = free_port()
    with bind(f"127.0.0.1:{port}") as unnamed:
        listeners = Listeners([(format_address(local_address(unnamed)), unnamed)])
        assert listeners.listen("web", f"127.0.0.1:{port}") is unnamed
        assert listeners.items() == [("web", unnamed)]


def test_listen_binds_what_was_not_inherited_and_close_unclaimed_closes_the_rest():
    listeners = Listeners(_inherited(("old", "127.0.0.1:0")))
    old = listeners._unclaimed[0][1]
    try:
        web = listeners.listen("web=127.0.0.1:0")
        assert listeners.get("web") is web and old.fileno() != web.fileno()
        assert listeners.close_unclaimed() == ["old"]
        assert old.fileno() == -1
        assert listeners.unclaimed == []
        assert web.fileno() >= 0
    finally:
        listeners.close()
    assert web.fileno() == -1


def test_from_environ_adopts_graceful_fds_and_removes_the_variables():
    sock = bind("127.0.0.1:0")
    env = {"GRACEFUL_FDS": f"web={sock.fileno()}", "OTHER": "kept"}
    fd = sock.detach()
    listeners = Listeners.from_environ(env)
    try:
        assert env == {"OTHER": "kept"}
        assert listeners.unclaimed == ["web"]
        assert listeners.listen("web", ":0").fileno() == fd
    finally:
        listeners.close()


def test_from_environ_error_leaves_every_fd_open_and_removes_the_variables(tmp_path):
    good = bind("127.0.0.1:0")
    path_fd = os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR)
    env = {"GRACEFUL_FDS": f"web={good.fileno()},bad={path_fd}"}
    try:
        with pytest.raises(ListenerError, match=rf"GRACEFUL_FDS entry bad={path_fd}: fd {path_fd} "
                                                r"is not a socket"):
            Listeners.from_environ(env)
        assert env == {}
        assert _is_open(good.fileno()) and _is_open(path_fd)
        _assert_listener_flags(good)
    finally:
        good.close()
        os.close(path_fd)


@pytest.mark.parametrize("env, message", [
    ({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, "LISTEN_PID='1' but this process is"),
    ({"LISTEN_PID": "", "LISTEN_FDS": "1"}, "meant for another process"),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "-1"}, "LISTEN_FDS='-1' is not a count"),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "two"}, "LISTEN_FDS='two' is not a count"),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "²"}, "is not a count"),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "99999"}, "is not a count"),
    ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web"},
     "LISTEN_FDNAMES='web' has 1 names but LISTEN_FDS=2"),
    ({"GRACEFUL_FDS": "web=3,web=4"}, "appears twice"),
    ({"GRACEFUL_FDS": "web"}, "is not NAME=FD"),
    ({"GRACEFUL_FDS": "web={closed}"}, "is not open"),
])
def test_from_environ_garbage_is_a_clear_error(env, message):
    values = {"pid": os.getpid(), "closed": _closed_fd()}
    env = {key: value.format(**values) for key, value in env.items()}
    with pytest.raises(ListenerError, match=message):
        Listeners.from_environ(env)
    assert env == {}


_VARIABLES = ("GRACEFUL_FDS", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(_VARIABLES), st.text(max_size=40)))
def test_from_environ_on_arbitrary_text_adopts_nothing_or_raises_a_clear_error(env):
    # Only values that cannot name an fd of this test process: adopting one would take it over.
    count = env.get("LISTEN_FDS", "")
    assume(not (env.get("LISTEN_PID") == str(os.getpid()) and count.isascii() and count.isdigit()
                and int(count) > 0))
    try:
        from graceful.fdenv import decode_fds
        assume(not decode_fds(env.get("GRACEFUL_FDS", "")))
    except ListenerError:
        pass
    given_env = dict(env)
    try:
        listeners = Listeners.from_environ(env)
    except GracefulError as exc:
        assert any(var in str(exc) for var in given_env), exc
    else:
        assert listeners.unclaimed == []
    assert env == {}


# -- real inheritance by child processes --------------------------------------------------------


def _report(response: bytes) -> dict:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), response
    return json.loads(body)


def test_child_adopts_a_listener_passed_in_graceful_fds_with_its_queue(procs):
    listener = bind("127.0.0.1:0")
    port = listener.getsockname()[1]
    # Connect before the child exists: the connection waits in the queue the child inherits.
    early = socket.create_connection(("127.0.0.1", port), timeout=30)
    early.sendall(b"GET / HTTP/1.0\r\n\r\n")
    env = dict(os.environ, GRACEFUL_FDS=f"web={listener.fileno()}")
    child = procs.python(CHILD, "web", _NOT_PASSED, env=env, pass_fds=[listener.fileno()])
    listener.close()  # the child's copy alone keeps the queue now
    chunks = []
    while True:
        data = early.recv(65536)
        if not data:
            break
        chunks.append(data)
    early.close()
    report = _report(b"".join(chunks))
    assert report["pid"] == child.pid
    assert report["inherited"] == ["web"]
    assert report["left"] == {var: None for var in _VARIABLES}
    assert report["inheritable"] is False and report["blocking"] is False
    assert child.wait(30) == 0


# The address the child falls back to if it did not inherit "web": an error, not a new bind.
_NOT_PASSED = "fd://1023"
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


@pytest.mark.skipif(not os.access(SOCKET_ACTIVATE, os.X_OK),
                    reason="systemd-socket-activate is not installed (Debian package systemd)")
def test_child_serves_on_a_socket_from_systemd_socket_activate(procs):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    activator = procs.spawn(
        [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=web", "-E", "PYTHONPATH",
         sys.executable, CHILD, "web", _NOT_PASSED],
        env=env, stderr=subprocess.PIPE,
    )
    line = read_line(activator.stderr, 30)
    assert f"Listening on 127.0.0.1:{port}" in line, line
    report = _report(http_get(port, "/", timeout=30))
    # The activator execs the child in place, so LISTEN_PID named the child's own pid.
    assert report["pid"] == activator.pid
    assert report["seen"]["LISTEN_PID"] == str(activator.pid)
    assert report["seen"]["LISTEN_FDS"] == "1"
    assert report["seen"]["LISTEN_FDNAMES"] == "web"
    assert report["inherited"] == ["web"]
    assert report["fd"] == 3
    assert report["left"] == {var: None for var in _VARIABLES}
    assert report["inheritable"] is False and report["blocking"] is False
    assert activator.wait(30) == 0
