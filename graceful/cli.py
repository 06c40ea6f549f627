"""The ``graceful`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graceful",
        description="Restart, upgrade or move a server to new code without failing a request.",
    )
    parser.add_argument("--version", action="version", version=f"graceful {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="show a zero-failure upgrade under load next to a naive restart",
        description="Start an example server on a free loopback port, load it with fresh and "
                    "keep-alive clients (fast and 200 ms requests), upgrade it by SIGHUP, then "
                    "do the same with a naive stop-and-start restart, and compare. Exits 0 only "
                    "if the graceful run failed no request.")
    demo.add_argument("--duration", type=float, default=10.0, help="seconds of load per run (10)")
    demo.add_argument("--upgrades", type=int, default=5, help="restarts per run (5)")
    demo.add_argument("--concurrency", type=int, default=8, help="load clients (8)")
    demo.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    demo.set_defaults(func=_demo)

    from .serve import add_arguments, add_handoff_arguments, add_respawn_arguments

    serve = commands.add_parser(
        "serve", help="serve a WSGI or ASGI application; SIGHUP upgrades it to the code on disk",
        description="Serve a WSGI or ASGI application with graceful's HTTP/1.1 server. SIGHUP "
                    "(or SIGUSR2) starts the same command again with the listeners inherited "
                    "and hands over once it is ready; SIGQUIT drains and exits; SIGTERM drains "
                    "after --shutdown-delay.")
    add_arguments(serve)
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="run N worker processes behind a master with a stable pid "
                            "(SIGHUP then reloads the workers; default: one process, no master)")
    add_respawn_arguments(serve)
    serve.set_defaults(func=_serve)

    run = commands.add_parser(
        "run", help="run any server command under a master with a stable pid",
        description="Hold the listeners and run COMMAND as worker generations. {fd:NAME} in "
                    "COMMAND is replaced by the listener's fd; LISTEN_FDS/LISTEN_FDNAMES/"
                    "LISTEN_PID are set as systemd would. SIGHUP starts a new generation and "
                    "stops the old one once the new one is ready. Examples: graceful run --bind "
                    "web=:8000 -- uvicorn --fd {fd:web} app:app; graceful run --bind web=:8000 "
                    "-- gunicorn app:app (gunicorn reads LISTEN_FDS itself); a COMMAND with {fd:NAME} gets no "
                    "LISTEN_FDS (gunicorn --bind fd://{fd:web} works too)")
    run.add_argument("--bind", "-b", action="append", default=[], metavar="[NAME=]ADDRESS")
    run.add_argument("--workers", type=int, default=1, metavar="N")
    run.add_argument("--ready", default="delay:1", metavar="fd|notify|delay:SECONDS",
                     help="when a worker counts as ready (default delay:1)")
    run.add_argument("--stop-signal", default="TERM", type=_signal_arg,
                     help="signal that stops a worker gracefully (TERM)")
    run.add_argument("--pidfile", metavar="PATH")
    run.add_argument("--graceful-timeout", type=float, default=30.0)
    run.add_argument("--ready-timeout", type=float, default=30.0)
    run.add_argument("--shutdown-delay", type=float, default=0.0)
    add_respawn_arguments(run)
    run.add_argument("--watchdog", type=float, default=None, metavar="SECONDS",
                     help="replace a worker that sent no systemd WATCHDOG=1 for this long: "
                          "workers get NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (default: off)")
    run.add_argument("--init", action="store_true",
                     help="a minimal init for containers: run COMMAND once, forward signals, "
                          "reap zombies, exit with its status")
    run.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT")
    add_handoff_arguments(run)
    run.add_argument("--log-level", default="info")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    run.set_defaults(func=_run)

    proxy = commands.add_parser(
        "pidproxy", help="keep a stable foreground pid for a server that re-execs itself",
        description="Start COMMAND, forward signals to the pid PIDFILE names, follow it across "
                    "upgrades, and exit with its status when the last generation is gone.")
    proxy.add_argument("pidfile", metavar="PIDFILE")
    proxy.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    proxy.set_defaults(func=_pidproxy)

    for name, signum, text in (("reload", "HUP", "upgrade/reload: SIGHUP"),
                               ("stop", "TERM", "stop: SIGTERM (lame duck, then drain)"),
                               ("quit", "QUIT", "drain now: SIGQUIT")):
        control = commands.add_parser(name, help=text)
        control.add_argument("--pidfile", required=True)
        control.add_argument("--wait", action="store_true",
                             help="wait until the new generation serves, or the process exited")
        control.add_argument("--timeout", type=float, default=60.0)
        control.set_defaults(func=_control, signal_name=signum)
    status = commands.add_parser("status", help="pid, state, children and listeners")
    status.add_argument("--pidfile", required=True)
    status.set_defaults(func=_status)
    return parser


def _signal_arg(text: str) -> int:
    import signal

    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a signal name (e.g. TERM, QUIT)") from None


def _command(args: argparse.Namespace) -> list:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    return command


def _run(args: argparse.Namespace) -> int:
    import logging

    from .errors import GracefulError
    from .master import Master
    from .serve import handoff_options

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s [%(process)d] %(levelname)s %(message)s")
    try:
        master = Master(_command(args), binds=args.bind, workers=1 if args.init else args.workers,
                        ready="delay:0" if args.init else args.ready,
                        stop_signal=args.stop_signal, pidfile=args.pidfile,
                        ready_timeout=args.ready_timeout, graceful_timeout=args.graceful_timeout,
                        shutdown_delay=args.shutdown_delay,
                        max_failures=None if args.keep_trying else args.max_failures,
                        timeout=args.timeout, watchdog=args.watchdog, respawn=not args.init, reuse_port=args.reuse_port,
                        **handoff_options(args))
        return master.run()
    except GracefulError as exc:
        print(f"graceful run: {exc}", file=sys.stderr)
        return 2


def _pidproxy(args: argparse.Namespace) -> int:
    from .pidproxy import run_pidproxy

    command = _command(args)
    if not command:
        print("graceful pidproxy: no command: graceful pidproxy PIDFILE -- COMMAND ...",
              file=sys.stderr)
        return 2
    try:
        return run_pidproxy(args.pidfile, command)
    except OSError as exc:
        print(f"graceful pidproxy: cannot start {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 2


def _control(args: argparse.Namespace) -> int:
    from .control import send_control

    return send_control(args.pidfile, args.signal_name, wait=args.wait, timeout=args.timeout)


def _status(args: argparse.Namespace) -> int:
    from .control import print_status

    return print_status(args.pidfile)


def _serve(args: argparse.Namespace) -> int:
    from .errors import GracefulError
    from .serve import run, run_workers

    try:
        if args.workers is not None:
            return run_workers(args)
        return run(args)
    except GracefulError as exc:
        print(f"graceful serve: {exc}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    import json

    from ._bench import format_table, run_strategy

    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    results = []
    for strategy in ("reexec", "naive"):
        say(f"{strategy}: {args.duration:g}s of load, {args.upgrades} restarts ...")
        results.append(run_strategy(strategy, restarts=args.upgrades, duration=args.duration,
                                    concurrency=args.concurrency, progress=say))
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in results], f, indent=2)
    graceful_run = results[0]
    ok = graceful_run.stats.failed == 0 and graceful_run.restarts == args.upgrades
    print("graceful: zero failed requests" if ok else "graceful: FAILED requests (see above)")
    return 0 if ok else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)
