"""The signal dispatcher with real signals: handlers record, callbacks run outside them."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import threading


from _support import open_fds, read_line
from graceful.errors import SignalError
from graceful.signals import SignalDispatcher

THREADED_CHILD = textwrap.dedent("""
    import os, signal, sys, threading
    from graceful.signals import SignalDispatcher
    d = SignalDispatcher()
    def show(signum):
        print(signal.Signals(signum).name, threading.current_thread().name, flush=True)
    def broken(signum):
        raise RuntimeError("callback failure is logged, not fatal")
    d.on(signal.SIGHUP, show)
    d.on(signal.SIGUSR2, broken)
    d.on(signal.SIGUSR2, show)
    d.on(signal.SIGTERM, show)
    d.install()
    d.start_thread()
    print("ready", flush=True)
    threading.Event().wait()  # the main thread stays blocked
""")


def test_callbacks_run_in_the_dispatcher_thread_while_main_is_blocked(procs):
    proc = procs.python("-c", THREADED_CHILD, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert read_line(proc.stdout) == "ready\n"
    for signum in (signal.SIGHUP, signal.SIGUSR2, signal.SIGTERM, signal.SIGHUP):
        os.kill(proc.pid, signum)
        line = read_line(proc.stdout)
        assert line == f"{signal.Signals(signum).name} graceful-signals\n"
    assert proc.poll() is None  # SIGTERM did not kill it: the dispatcher owns it now


ASYNCIO_CHILD = textwrap.dedent("""
    import asyncio, os, signal
    from graceful.signals import SignalDispatcher
    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        d = SignalDispatcher()
        d.on(signal.SIGUSR1, lambda s: print("USR1 in loop", flush=True))
        d.on(signal.SIGQUIT, lambda s: done.set_result(None))
        d.install()
        d.attach(loop)
        print("ready", flush=True)
        await done
        d.close()
        print("closed", flush=True)
    asyncio.run(main())
""")


def test_asyncio_attach(procs):
    proc = procs.python("-c", ASYNCIO_CHILD, stdout=subprocess.PIPE)
    assert read_line(proc.stdout) == "ready\n"
    os.kill(proc.pid, signal.SIGUSR1)
    assert read_line(proc.stdout) == "USR1 in loop\n"
    os.kill(proc.pid, signal.SIGQUIT)
    assert read_line(proc.stdout) == "closed\n"
    assert proc.wait(timeout=30) == 0


def test_install_from_another_thread_is_a_clear_error():
    d = SignalDispatcher()
    d.on(signal.SIGUSR1, lambda s: None)
    errors = []

    def install():
        try:
            d.install()
        except SignalError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=install)
    t.start()
    t.join()
    d.close()
    assert errors and "main thread" in errors[0]


def test_in_process_burst_is_dispatched_once_each_and_restored():
    seen = []
    previous = signal.getsignal(signal.SIGUSR1)
    d = SignalDispatcher()
    d.on(signal.SIGUSR1, seen.append)
    d.install()
    try:
        for _ in range(5):
            signal.raise_signal(signal.SIGUSR1)  # handled synchronously in this thread
        assert d.wait(5) == [signal.SIGUSR1] * 5
        signal.raise_signal(signal.SIGUSR1)
        d.dispatch()
        assert seen == [signal.SIGUSR1]
    finally:
        d.close()
    assert signal.getsignal(signal.SIGUSR1) == previous


def test_close_is_idempotent_and_leaks_no_fd():
    before = open_fds()
    for _ in range(20):
        d = SignalDispatcher()
        d.on(signal.SIGUSR1, lambda s: None)
        d.install()
        d.start_thread()
        d.close()
        d.close()
    assert open_fds() == before


def test_pipe_is_close_on_exec():
    d = SignalDispatcher()
    try:
        assert not os.get_inheritable(d.fileno())
    finally:
        d.close()
