"""Which close code WebSockets get from each way a server ends: 1012 (Service Restart) when a
successor takes over, 1001 (Going Away) on a final stop; and a worker that never says it
stopped accepting does not hold its siblings' WebSockets past the bound."""

from __future__ import annotations

import os
import signal

import pytest

from _serve import Served
from test_ws_drain_workers import _connect_to_each, _late_quit_app

_OPTIONS = ("--ws-drain-time", "0.5", "--ws-ping-interval", "0", "--graceful-timeout", "60")


def _closes(clients, served):
    for client in clients:
        client.thread.join(90)
        assert not client.thread.is_alive(), f"a client was never closed; {served.log()[-3000:]}"
    return {c.close for c in clients}


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 1001), (signal.SIGINT, 1001),
                                          (signal.SIGHUP, 1012), (signal.SIGUSR2, 1012)])
def test_a_single_process_closes_with_the_code_of_its_end(procs, tmp_path, signum, code):
    served = Served(procs, tmp_path, "ws_app.py:app", *_OPTIONS)
    clients = _connect_to_each(served.port, pids=1, each=3, reconnect=False)
    served.proc.send_signal(signum)
    assert _closes(clients, served) == {("close", code, "")}


def test_a_master_stop_after_its_lame_duck_closes_with_1001(procs, tmp_path):
    served = Served(procs, tmp_path, "ws_app.py:app", "--workers", "2", "--shutdown-delay", "1",
                    *_OPTIONS)
    clients = _connect_to_each(served.port, pids=2, each=2, reconnect=False)
    served.proc.send_signal(signal.SIGTERM)
    assert _closes(clients, served) == {("close", 1001, "")}
    assert served.proc.wait(60) == 0


def test_a_master_upgrade_closes_its_workers_websockets_with_1012(procs, tmp_path):
    served = Served(procs, tmp_path, "ws_app.py:app", "--workers", "2", *_OPTIONS)
    clients = _connect_to_each(served.port, pids=2, each=2)
    old = {c.pid for c in clients}
    served.proc.send_signal(signal.SIGUSR2)  # the master re-executes; its successor's workers
    assert _closes(clients, served) == {("close", 1012, "")}
    assert all(c.error is None and c.new_pid not in old for c in clients)


def test_a_worker_that_never_confirms_does_not_hold_back_its_sibling(procs, tmp_path):
    # The late worker handles SIGQUIT only after the graceful timeout: the master kills it.
    # Its sibling's clients get their 1012 once half the timeout passed, not never.
    served = Served(procs, tmp_path, _late_quit_app(tmp_path, 600.0), "--workers", "2",
                    "--ws-drain-time", "0.5", "--ws-ping-interval", "0",
                    "--graceful-timeout", "16")
    clients = _connect_to_each(served.port, pids=2, each=3, reconnect=False)
    os.kill(served.proc.pid, signal.SIGHUP)
    served.wait(lambda: "did not confirm within 8s" in served.log(), 60, what="the bound")
    late = int((tmp_path / "late-quit").read_text())
    prompt = [c for c in clients if c.pid != late]
    assert _closes(prompt, served) == {("close", 1012, "")}
    served.wait(lambda: f"worker {late} did not stop within the graceful timeout: SIGKILL"
                in served.log(), 60, what="the late worker to be killed")


def test_a_worker_drained_during_the_masters_lame_duck_waits_and_closes_with_1001(procs,
                                                                                   tmp_path):
    # One worker drains on its own (here SIGQUIT; its lame duck timer may also fire before the
    # master's) while the master still counts down its lame duck: its sibling still accepts,
    # and the stop is final, so its clients wait for the master's drain and get 1001.
    served = Served(procs, tmp_path, "ws_app.py:app", "--workers", "2", "--shutdown-delay", "4",
                    *_OPTIONS)
    clients = _connect_to_each(served.port, pids=2, each=2, reconnect=False)
    served.proc.send_signal(signal.SIGTERM)
    early = clients[0].pid
    # The worker's own lame duck first (the master's SIGTERM): a SIGTERM that came after our
    # SIGQUIT would mean "close everything now".
    served.wait(lambda: f"[{early}] INFO lame duck for 4s" in served.log(),
                what="the worker's lame duck")
    os.kill(early, signal.SIGQUIT)
    served.wait(lambda: f"[{early}] INFO draining (SIGQUIT)" in served.log(),
                what="the worker's own drain")
    assert _closes(clients, served) == {("close", 1001, "")}
    assert served.proc.wait(60) == 0
