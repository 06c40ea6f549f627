"""Pidfiles with real processes: one winner among many, stale takeover, handover, safety."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest

from _support import read_line, wait_for
from graceful.errors import PidfileError
from graceful.pidfile import Pidfile, owner_pid, read_pid

CONTENDER = textwrap.dedent("""
    import os, sys
    from graceful.pidfile import Pidfile
    from graceful.errors import PidfileError
    go, path = int(sys.argv[1]), sys.argv[2]
    print("waiting", flush=True)
    os.read(go, 1)
    try:
        Pidfile(path).acquire()
    except PidfileError as exc:
        print("lost", exc, flush=True)
    else:
        print("won", os.getpid(), flush=True)
        sys.stdin.read()  # hold the pidfile until the test closes our stdin
""")

HOLDER = textwrap.dedent("""
    import os, sys
    from graceful.pidfile import Pidfile
    p = Pidfile(sys.argv[1])
    p.acquire()
    print("held", os.getpid(), flush=True)
    sys.stdin.read()
    p.release()
    print("released", flush=True)
""")


def _holder(procs, path):
    proc = procs.python("-c", HOLDER, str(path), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert read_line(proc.stdout) == f"held {proc.pid}\n"
    return proc


def test_twenty_racing_processes_have_exactly_one_winner(procs, tmp_path):
    path = tmp_path / "race.pid"
    go_r, go_w = os.pipe()
    try:
        racers = [procs.python("-c", CONTENDER, str(go_r), str(path), pass_fds=[go_r],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(20)]
        for proc in racers:
            assert read_line(proc.stdout, 30) == "waiting\n"
        os.write(go_w, b"x" * 20)  # release them all at once
        results = [read_line(proc.stdout, 30) for proc in racers]
    finally:
        os.close(go_r)
        os.close(go_w)
    winners = [r for r in results if r.startswith("won")]
    assert len(winners) == 1, results
    winner = int(winners[0].split()[1])
    assert read_pid(path) == winner and owner_pid(path) == winner
    for line in results:
        if line.startswith("lost"):
            assert "held by running process" in line and str(path) in line
    assert [p.name for p in tmp_path.iterdir()] == ["race.pid"]  # no temp files left


def test_pidfile_of_a_killed_owner_is_taken_over(procs, tmp_path):
    path = tmp_path / "app.pid"
    holder = _holder(procs, path)
    with pytest.raises(PidfileError, match=f"held by running process {holder.pid}"):
        Pidfile(path).acquire()
    holder.kill()
    holder.wait()
    assert read_pid(path) == holder.pid and owner_pid(path) is None  # stale
    mine = Pidfile(path)
    mine.acquire()
    try:
        assert read_pid(path) == os.getpid() and mine.held
    finally:
        mine.release()
    assert not path.exists()


def test_a_live_pid_in_an_unlocked_file_is_still_stale(tmp_path):
    path = tmp_path / "app.pid"
    path.write_text("1\n")  # pid 1 is alive, but nobody holds the lock: stale
    with Pidfile(path):
        assert read_pid(path) == os.getpid()


def test_refuses_a_symlink_and_a_directory(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep me")
    link = tmp_path / "link.pid"
    link.symlink_to(target)
    with pytest.raises(PidfileError, match="symbolic link"):
        Pidfile(link).acquire()
    assert target.read_text() == "keep me" and link.is_symlink()
    (tmp_path / "dir.pid").mkdir()
    with pytest.raises(PidfileError, match="not a regular file"):
        Pidfile(tmp_path / "dir.pid").acquire()
    with pytest.raises(PidfileError, match="cannot create a file"):
        Pidfile(tmp_path / "missing" / "x.pid").acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.pid", "link.pid", "target"]


def test_handover_to_a_successor_while_the_predecessor_lives(procs, tmp_path):
    path = tmp_path / "app.pid"
    predecessor = _holder(procs, path)
    successor = Pidfile(path)
    successor.handover(predecessor.pid)
    try:
        assert read_pid(path) == os.getpid() and owner_pid(path) == os.getpid()
        predecessor.stdin.close()  # it releases: the file no longer names it, so it stays
        assert read_line(predecessor.stdout) == "released\n"
        assert predecessor.wait(timeout=30) == 0
        assert read_pid(path) == os.getpid()
    finally:
        successor.release()
    assert not path.exists()


def test_handover_refuses_a_file_of_an_unrelated_live_process(procs, tmp_path):
    path = tmp_path / "app.pid"
    holder = _holder(procs, path)
    with pytest.raises(PidfileError, match="not our predecessor"):
        Pidfile(path).handover(holder.pid + 100000)
    assert read_pid(path) == holder.pid


def test_release_leaves_a_file_that_is_not_ours(tmp_path):
    path = tmp_path / "app.pid"
    mine = Pidfile(path)
    mine.acquire()
    os.unlink(path)
    path.write_text("12345\n")  # somebody else's now
    mine.release()
    mine.release()  # idempotent
    assert read_pid(path) == 12345


FORK_EXEC = textwrap.dedent("""
    import os, sys
    from graceful.pidfile import Pidfile
    Pidfile(sys.argv[1]).acquire()
    child = os.fork()
    if child == 0:
        os.execv("/bin/sleep", ["sleep", "60"])  # keeps every fd that is not close-on-exec
    print(child, flush=True)
    sys.stdin.read()
""")


def test_the_lock_is_not_inherited_across_exec(procs, tmp_path):
    path = tmp_path / "app.pid"
    holder = procs.python("-c", FORK_EXEC, str(path), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE)
    sleeper = int(read_line(holder.stdout))
    wait_for(lambda: _cmdline(sleeper).startswith(b"sleep"), what="the child to exec")
    assert owner_pid(path) == holder.pid
    holder.kill()
    holder.wait()
    assert os.path.exists(f"/proc/{sleeper}")  # the exec'd child lives on ...
    assert owner_pid(path) is None  # ... without the lock


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_readers(tmp_path):
    path = tmp_path / "app.pid"
    assert read_pid(path) is None and owner_pid(path) is None
    path.write_text("not a pid")
    with pytest.raises(PidfileError, match="does not hold a pid"):
        read_pid(path)
    path.write_text("0\n")
    with pytest.raises(PidfileError):
        read_pid(path)
