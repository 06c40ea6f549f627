"""A server behind a shell entrypoint in a container: SIGTERM never reaches it.

The incident: a Docker image starts ``sh entrypoint.sh`` and the script runs the server as a
child (``python -m ...`` on its last line, without ``exec``). The shell is PID 1 of the
container's pid namespace, and PID 1 gets no signal it has not installed a handler for: ``sh``
has none for SIGTERM, so ``docker stop`` (or a Kubernetes pod deletion) does nothing at all; the
server never hears of it. After the grace period the runtime sends SIGKILL, the kernel kills
everything in the namespace, and every request in flight is cut. The server can be as graceful
as it likes: it never gets the chance.

Reproduction: each container is ``unshare --pid --fork --mount-proc`` (a new pid namespace; its
first process is PID 1 there, exactly as in a container), or, where unshare is not available,
a PID 1 stand-in that ignores SIGTERM (``trap '' TERM``; the script says which it used). The
server is ``graceful serve benchmarks/apps.py:wsgi``. Four keep-alive clients send 200 ms
requests without pause; after 1 s the script does what ``docker stop -t 2`` does: SIGTERM to PID
1, SIGKILL if it has not exited 2 s later.

- naive: ``entrypoint.sh`` runs the server without ``exec``; PID 1 is ``sh``;
- exec: ``entrypoint.sh`` ends with ``exec python -m graceful serve ...``; the server is PID 1;
- init: ``graceful run --init -- python -m graceful serve ...`` is PID 1 (as an ENTRYPOINT); it
  passes SIGTERM on to the server, reaps zombies and exits with the server's status;
- init over the wrapper: ``graceful run --init -- sh entrypoint.sh`` with the entrypoint still
  not using ``exec``: the init signals the command's whole process group, so the server behind
  the shell gets SIGTERM too, and the init waits for it to drain before it exits (with the
  shell's status: it died of SIGTERM).

A failure is a request the server had received and never answered (reset, eof, timeout, error
status). Connections refused once nothing listens any more are shown but are not failures: the
server never saw them, and a client or load balancer can retry them safely.

Run it (about 15 s; exits 0 only if no fix cut a request or needed SIGKILL):

    python benchmarks/scenarios/shell_wrapper.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

GRACE = 2.0  # docker stop -t 2 (Docker's default is 10 s, Kubernetes' 30 s)
LOAD_BEFORE_STOP = 1.0


def unshare_works() -> bool:
    try:
        done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c",
                               'test "$$" = 1'], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def container_command(pid1: List[str], namespaced: bool) -> List[str]:
    if namespaced:
        return ["unshare", "--pid", "--fork", "--mount-proc", *pid1]
    # Stand-in for PID 1's signal rule: a signal without a handler is ignored.
    return ["sh", "-c", "trap '' TERM; exec \"$@\"", "pid1", *pid1]


def server_command(port: int) -> List[str]:
    return [c.PYTHON, "-m", "graceful", "serve", c.repo_file("benchmarks", "apps.py") + ":wsgi",
            "--bind", f"web=127.0.0.1:{port}", "--log-level", "warning"]


def write_entrypoint(directory: str, port: int, use_exec: bool) -> str:
    path = os.path.join(directory, "entrypoint-exec.sh" if use_exec else "entrypoint.sh")
    server = " ".join(f"'{arg}'" for arg in server_command(port))
    with open(path, "w") as f:
        f.write("#!/bin/sh\n"
                "# a typical container entrypoint: prepare, then start the server\n"
                "echo 'entrypoint: preparing the configuration' >&2\n"
                f"{'exec ' if use_exec else ''}{server}\n")
    return path


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _describe_tree(pid1: int) -> str:
    """``sh > python`` : PID 1's command and the chain of its first children."""
    names, pid = [], pid1
    for _ in range(4):
        cmdline = _cmdline(pid)
        names.append("graceful run" if " run --init" in cmdline else
                     "graceful serve" if " serve " in cmdline else _comm(pid))
        kids = c.children_of(pid)
        if not kids:
            break
        pid = kids[0]
    return " > ".join(names)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run(kind: str, namespaced: bool) -> dict:
    procs = c.Processes()
    port = c.free_port()
    # Four keep-alive clients, each always in a 200 ms request; started 50 ms apart so that
    # whenever the stop comes, requests are in flight at different stages.
    loads = [c.LoadGenerator(port, concurrency=1, mode="keepalive", paths=("/slow",))
             for _ in range(4)]
    with tempfile.TemporaryDirectory(prefix="graceful-shell-") as tmp:
        if kind == "init-wrapper":
            pid1_argv = [c.PYTHON, "-m", "graceful", "run", "--init", "--log-level", "warning",
                         "--", "sh", write_entrypoint(tmp, port, use_exec=False)]
        elif kind == "init":
            pid1_argv = [c.PYTHON, "-m", "graceful", "run", "--init", "--log-level", "warning",
                         "--", *server_command(port)]
        else:
            pid1_argv = ["sh", write_entrypoint(tmp, port, use_exec=(kind == "exec"))]
        try:
            container = procs.start(container_command(pid1_argv, namespaced),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not c.wait_http(port, "/fast", 30.0, container):
                raise RuntimeError(f"{kind}: the server did not start")
            if namespaced:
                # The namespace's PID 1, as the host sees it: unshare's only child.
                if not c.wait_until(lambda: bool(c.children_of(container.pid)), 10.0):
                    raise RuntimeError(f"{kind}: unshare has no child")
                pid1 = c.children_of(container.pid)[0]
            else:
                pid1 = container.pid
            tree = _describe_tree(pid1)
            for load in loads:
                load.start(max_duration=60)
                time.sleep(0.05)  # pacing: the clients' requests are out of phase
            time.sleep(LOAD_BEFORE_STOP)  # pacing: the container serves for a while
            # docker stop -t GRACE
            os.kill(pid1, signal.SIGTERM)
            stop_at = time.monotonic()
            exited = c.wait_until(lambda: container.poll() is not None, GRACE, 0.002)
            killed = not exited
            if killed:
                os.kill(pid1, signal.SIGKILL)
                if not c.wait_until(lambda: container.poll() is not None, 10.0):
                    raise RuntimeError(f"{kind}: the container survived SIGKILL")
            stop_seconds = time.monotonic() - stop_at
            status = container.returncode
            # The container is gone once its PID 1 is: in a pid namespace the kernel kills
            # everything left in it; the trap stand-in needs the same done by hand.
            try:
                os.killpg(container.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # nothing left
            c.wait_until(lambda: not c.group_pids(container.pid), 10.0)
        finally:
            for load in loads:
                load.stop()
            procs.close()
    totals = c.load_totals(loads)
    counts = totals["counts"]
    cut = totals["failed"] - counts["refused"]
    return {"process_tree": tree, "pid1_emulation": "unshare --pid" if namespaced else
            "trap '' TERM", "stop_seconds": round(stop_seconds, 2), "sigkill": killed,
            "exit_status": status, "requests": totals["total"], "cut": cut,
            "refused_after_stop": counts["refused"], "counts": counts,
            "error_samples": totals["error_samples"]}


COLUMNS = {"naive": "naive: sh runs the server",
           "exec": "exec in entrypoint.sh",
           "init": "graceful run --init as PID 1",
           "init-wrapper": "--init over sh, no exec"}


def main() -> int:
    p = c.parser(__doc__, "shell_wrapper")
    p.add_argument("--pid1", choices=("auto", "unshare", "trap"), default="auto",
                   help="how PID 1 is made: a new pid namespace (unshare, needs root), a "
                        "stand-in that ignores SIGTERM (trap), or unshare where it works (auto)")
    args = p.parse_args()
    namespaced = args.pid1 == "unshare" or (args.pid1 == "auto" and unshare_works())
    c.say("PID 1: " + ("a new pid namespace (unshare --pid --fork --mount-proc)" if namespaced
                       else "unshare is not available here: PID 1 stand-in with trap '' TERM"))
    runs = {}
    for kind in ("naive", "exec", "init", "init-wrapper"):
        c.say(f"{kind}: load, then SIGTERM to PID 1 and SIGKILL after {GRACE:g} s ...")
        runs[kind] = run(kind, namespaced)
    order = list(runs)
    rows = [("PID 1 > its child", [runs[k]["process_tree"] for k in order]),
            ("requests", [runs[k]["requests"] for k in order]),
            ("in-flight requests cut", [runs[k]["cut"] for k in order]),
            ("  how", [c.failure_breakdown(runs[k]["counts"], ("reset", "eof", "timeout",
                                                               "bad_status", "other"))
                       for k in order]),
            ("refused after the stop", [runs[k]["refused_after_stop"] for k in order]),
            ("stop took", [f"{runs[k]['stop_seconds']:.2f} s" for k in order]),
            ("SIGKILL needed", ["yes" if runs[k]["sigkill"] else "no" for k in order]),
            ("exit status", ["SIGKILL" if runs[k]["sigkill"]
                             else c.exit_text(runs[k]["exit_status"]) for k in order])]
    table = c.print_table([COLUMNS[k] for k in order], rows)
    print(f"PID 1: {runs['naive']['pid1_emulation']}")
    ok = all(runs[k]["cut"] == 0 and not runs[k]["sigkill"] for k in ("exec", "init", "init-wrapper"))
    print("graceful: no request cut, no SIGKILL" if ok else "graceful: FAILED (see above)")
    c.write_json(args.json, {"scenario": "shell_wrapper", "ok": ok, "grace_seconds": GRACE,
                             "table": table, "runs": runs})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
