"""graceful._proc.group: the processes of a process group, as /proc shows them."""

from __future__ import annotations

import subprocess

from _support import wait_for
from graceful import _proc


def test_group_lists_a_session_with_its_child_and_their_cpu_time(procs):
    # A parent in a session of its own that starts a child and spins a little, then sleeps.
    # The sleeps only keep both processes alive until the procs fixture kills the group.
    stay = "import time; time.sleep(600)"  # sleep-ok: alive until killed
    code = ("import subprocess, sys, time\n"
            f"child = subprocess.Popen([sys.executable, '-c', {stay!r}])\n"
            "end = time.process_time() + 0.2\n"
            "while time.process_time() < end: pass\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)\n")  # sleep-ok: stays alive until killed
    parent = procs.python("-c", code, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    members = {m.pid: m for m in _proc.group(parent.pid)}
    assert set(members) == {parent.pid, child}
    assert members[parent.pid].cpu_seconds >= 0.2
    assert all(m.state not in ("Z", "X") for m in members.values())
    assert _proc.group(parent.pid + 10 ** 7) == []  # no such group
    parent.kill()
    parent.wait()
    wait_for(lambda: [m.pid for m in _proc.group(parent.pid)] == [child], 30,
             "only the child left in the group")
