"""Triggers that reach a generation at an awkward moment, with real processes: a SIGHUP sent to
a master that has already handed over (SIGUSR2), and a SIGHUP that comes while an upgrade or a
reload is still being tried and then rolls back."""

from __future__ import annotations

import os
import signal
import socket

from _serve import Client, Served
from _support import Load, children_of, process_state, reap_orphans, wait_for
from graceful.pidfile import read_pid

APP = "lifecycle_app.py:app"


class Control:
    """The directory ``lifecycle_app`` reads: its readiness file and the two sockets on which
    the test learns that a start / a held request is under way, and ends it."""

    def __init__(self, tmp_path) -> None:
        self.path = tmp_path / "control"
        self.path.mkdir()
        self.env = dict(os.environ, LIFECYCLE_APP_CONTROL=str(self.path))
        self._listeners = {}
        for name in ("start", "hold"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(self.path / f"{name}.sock"))
            sock.listen(16)
            sock.settimeout(60)
            self._listeners[name] = sock
        self.waiting = []  # connections of processes waiting for us

    def readiness(self, verdict: str) -> None:
        (self.path / "readiness").write_text(verdict)

    def arrived(self, name: str) -> int:
        """Wait for the next process to wait on ``name``; its pid."""
        conn, _ = self._listeners[name].accept()
        conn.settimeout(60)
        self.waiting.append(conn)
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(64)
            assert chunk, "the waiting process went away"
            data += chunk
        return int(data)

    def release(self) -> None:
        """Let every waiting process go on (a start then fails; a held request answers)."""
        for conn in self.waiting:
            conn.close()
        self.waiting = []

    def close(self) -> None:
        self.release()
        for sock in self._listeners.values():
            sock.close()


def _pid_in(pidfile):
    try:
        return read_pid(pidfile)
    except Exception:
        return None


def _workers(pid: int):
    return sorted(c for c in children_of(pid) if process_state(c) not in (None, "Z"))


def _gone(pid: int) -> bool:
    reap_orphans()
    return process_state(pid) in (None, "Z")


def test_sighup_to_a_master_that_handed_over_reloads_the_new_master(procs, tmp_path):
    control = Control(tmp_path)
    pidfile = tmp_path / "master.pid"
    served = Served(procs, tmp_path, APP, "--workers", "2", "--pidfile", str(pidfile),
                    "--graceful-timeout", "90", env=control.env)
    old = served.proc.pid
    served.wait(lambda: _pid_in(pidfile) == old and len(_workers(old)) == 2, what="2 workers")
    held = Client(served.connect(timeout=60))
    held.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
    holder = control.arrived("hold")  # in flight at an old worker: the old master drains on
    loads = [Load(served.port, keepalive=k, clients=2).start() for k in (True, False)]
    loads[0].wait_requests(50)
    os.kill(old, signal.SIGUSR2)
    new = served.wait(lambda: _pid_in(pidfile) not in (None, old) and _pid_in(pidfile), 60,
                      what="a new master in the pidfile")
    served.wait(lambda: len(_workers(new)) == 2, 60, what="the new master's 2 workers")
    first_workers = set(_workers(new))
    assert process_state(holder) not in (None, "Z") and process_state(old) not in (None, "Z")

    os.kill(old, signal.SIGHUP)  # an operator who read the pidfile a moment too early
    served.wait(lambda: "generation 2 is serving" in served.log(), 60,
                what="the new master to reload")
    served.wait(lambda: len(_workers(new)) == 2 and not set(_workers(new)) & first_workers, 60,
                what="the new master's workers to be replaced")
    assert served.log().count(f"passed the trigger on to pid {new}") == 1
    control.release()
    response = held.response()
    assert response.status == 200 and response.headers["x-pid"] == str(holder)
    assert served.proc.wait(60) == 0  # the old master drained, then exited
    for load in loads:
        load.wait_requests(load.total + 50)
        load.stop()
    assert [f for load in loads for f in load.failures] == []
    os.kill(new, signal.SIGQUIT)
    served.wait(lambda: _gone(new), 60, what="the new master to stop")
    control.close()


def test_sighup_during_an_upgrade_that_rolls_back_upgrades_once_more(procs, tmp_path):
    control = Control(tmp_path)
    pidfile = tmp_path / "server.pid"
    served = Served(procs, tmp_path, APP, "--pidfile", str(pidfile), "--ready-timeout", "60",
                    env=control.env)
    first = served.proc.pid
    load = Load(served.port, keepalive=True, clients=2).start()
    load.wait_requests(50)
    control.readiness("fail")
    os.kill(first, signal.SIGHUP)
    bad = control.arrived("start")  # the first attempt is starting: it will fail
    control.readiness("ok")  # the operator fixed the code...
    os.kill(first, signal.SIGHUP)  # ...and asks again, twice, while the bad one is still tried
    served.wait(lambda: served.log().count("SIGHUP: an upgrade is") == 1, 60,
                what="the trigger to reach the upgrading generation")
    os.kill(first, signal.SIGHUP)
    served.wait(lambda: served.log().count("SIGHUP: an upgrade is") == 2, 60,
                what="the next trigger to reach it")
    control.release()
    served.wait(lambda: "upgrade rolled back" in served.log(), 60, what="the rollback")
    second = served.wait(lambda: _pid_in(pidfile) not in (None, first, bad) and _pid_in(pidfile),
                         60, what="one more upgrade after the rollback")
    served.wait_ready(second)
    assert served.proc.wait(60) == 0
    load.wait_requests(load.total + 50)
    load.stop()
    assert load.failures == [] and second in load.pids
    # One more upgrade, not one per trigger: the second generation has started no successor.
    assert served.log().count("started successor pid") == 2
    assert children_of(second) == []
    os.kill(second, signal.SIGQUIT)
    served.wait(lambda: _gone(second), 60, what="the second generation to stop")
    control.close()


def test_sighup_during_a_reload_that_rolls_back_reloads_once_more(procs, tmp_path):
    control = Control(tmp_path)
    pidfile = tmp_path / "master.pid"
    served = Served(procs, tmp_path, APP, "--workers", "2", "--pidfile", str(pidfile),
                    "--ready-timeout", "60", env=control.env)
    master = served.proc.pid
    served.wait(lambda: _pid_in(pidfile) == master and len(_workers(master)) == 2,
                what="2 workers")
    first_workers = set(_workers(master))
    load = Load(served.port, keepalive=True, clients=2).start()
    load.wait_requests(50)
    control.readiness("fail")
    os.kill(master, signal.SIGHUP)
    bad = {control.arrived("start"), control.arrived("start")}  # generation 2 is starting
    control.readiness("ok")
    os.kill(master, signal.SIGHUP)
    served.wait(lambda: served.log().count("SIGHUP: a reload is") == 1, 60,
                what="the SIGHUP to reach the reloading master")
    os.kill(master, signal.SIGHUP)
    served.wait(lambda: served.log().count("SIGHUP: a reload is") == 2, 60,
                what="the next SIGHUP to reach it")
    control.release()
    served.wait(lambda: "reload failed, generation 1 keeps serving" in served.log(), 60,
                what="the rollback")
    served.wait(lambda: "generation 3 is serving" in served.log(), 60,
                what="one more reload after the rollback")
    served.wait(lambda: len(_workers(master)) == 2, 60, what="old workers to exit")
    workers = set(_workers(master))
    assert not workers & (first_workers | bad)
    load.wait_requests(load.total + 50)
    load.stop()
    assert load.failures == [] and workers & set(load.pids)
    assert "generation 4" not in served.log()  # one more reload, not one per SIGHUP
    served.proc.send_signal(signal.SIGQUIT)
    assert served.proc.wait(60) == 0
    control.close()


def _delivered(pid: int, signum: int) -> bool:
    """Whether no ``signum`` is pending for ``pid`` any more (its handler has it)."""
    with open(f"/proc/{pid}/status") as f:
        pending = next(int(line.split()[1], 16) for line in f if line.startswith("ShdPnd:"))
    return not pending & (1 << (signum - 1))


def test_sigusr2s_during_a_master_upgrade_that_rolls_back_give_one_more(procs, tmp_path):
    control = Control(tmp_path)
    pidfile = tmp_path / "master.pid"
    served = Served(procs, tmp_path, APP, "--workers", "2", "--pidfile", str(pidfile),
                    "--ready-timeout", "60", env=control.env)
    old = served.proc.pid
    served.wait(lambda: _pid_in(pidfile) == old and len(_workers(old)) == 2, what="2 workers")
    control.readiness("fail")
    os.kill(old, signal.SIGUSR2)
    control.arrived("start")  # the new master's workers are starting: they will fail
    control.arrived("start")
    control.readiness("ok")
    for _ in range(2):  # one at a time: two SIGUSR2s pending at once are one to the kernel
        os.kill(old, signal.SIGUSR2)
        wait_for(lambda: _delivered(old, signal.SIGUSR2), 30, what="SIGUSR2 to be delivered")
    control.release()
    served.wait(lambda: "upgrade rolled back" in served.log(), 60, what="the rollback")
    new = served.wait(lambda: _pid_in(pidfile) not in (None, old) and _pid_in(pidfile), 60,
                      what="one more master upgrade after the rollback")
    assert served.proc.wait(60) == 0
    log = served.log()
    assert log.count("started successor pid") == 2, log  # not one upgrade per SIGUSR2
    assert "passed the trigger on" not in log
    served.wait(lambda: len(_workers(new)) == 2, 60, what="the new master's workers")
    os.kill(new, signal.SIGQUIT)
    served.wait(lambda: _gone(new), 60, what="the new master to stop")
    control.close()
