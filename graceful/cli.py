"""The ``graceful`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Tuple

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graceful",
        description="Restart, upgrade or move a server to new code without failing a request.",
    )
    parser.add_argument("--version", action="version", version=f"graceful {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND")

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

    from .config import add_arguments

    serve = commands.add_parser(
        "serve", help="serve a WSGI or ASGI application; SIGHUP upgrades it to the code on disk",
        description="Serve a WSGI or ASGI application with graceful's HTTP/1.1 server. SIGHUP "
                    "(or SIGUSR2) starts the same command again with the listeners inherited "
                    "and hands over once it is ready; SIGQUIT drains and exits; SIGTERM drains "
                    "after --shutdown-delay. Every option can also come from a config file "
                    "(--config) or the environment (GRACEFUL_<OPTION>).")
    add_arguments(serve, "serve")
    serve.set_defaults(func=_serve)

    run = commands.add_parser(
        "run", help="run any server command under a master with a stable pid",
        description="Hold the listeners and run COMMAND as worker generations. {fd:NAME} in "
                    "COMMAND is replaced by the listener's fd; LISTEN_FDS/LISTEN_FDNAMES/"
                    "LISTEN_PID are set as systemd would. SIGHUP starts a new generation and "
                    "stops the old one once the new one is ready. Examples: graceful run --bind "
                    "web=:8000 -- uvicorn --fd {fd:web} app:app; graceful run --bind web=:8000 "
                    "-- gunicorn app:app (gunicorn reads LISTEN_FDS itself); a COMMAND with "
                    "{fd:NAME} gets no LISTEN_FDS (gunicorn --bind fd://{fd:web} works too)")
    add_arguments(run, "run")
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


def _command(args: argparse.Namespace) -> list:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    return command


def _load_config(command: str, args: argparse.Namespace) -> Any:
    """The effective Config, or a one-line error (exit 2)."""
    from .config import Config

    config = Config.load(command, args)
    if getattr(args, "print_config", False):
        print(config.format())
        raise _Done(0)
    return config


class _Done(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _run(args: argparse.Namespace) -> int:
    from .master import Master
    from .serve import _configure_logging, handoff_options

    config = _load_config("run", args)
    _configure_logging(config)
    workers = 1 if config.init else config.workers

    def next_generation() -> Tuple[List[str], Dict[str, str]]:
        from .config import Config, ConfigError
        from .master import MasterError

        try:
            return Config.load("run", args).command, {}
        except ConfigError as exc:
            raise MasterError(f"configuration: {exc}") from None

    master = Master(config.command, binds=config.bind, workers=workers,
                    ready="delay:0" if config.init else config.ready,
                    stop_signal=config.stop_signal, pidfile=config.pidfile,
                    ready_timeout=config.ready_timeout, graceful_timeout=config.graceful_timeout,
                    shutdown_delay=config.shutdown_delay,
                    max_failures=None if config.keep_trying else config.max_failures,
                    timeout=config.timeout, watchdog=config.watchdog,
                    respawn=not config.init, reuse_port=config.reuse_port,
                    next_generation=next_generation, **handoff_options(config))
    return master.run()


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
    from .config import Config
    from .serve import run, run_workers

    config = _load_config("serve", args)
    if not config.app:
        raise _Usage("no application: give APP (MODULE:APP), app = in the --config file, or "
                     "GRACEFUL_APP")
    if config.workers is not None:
        return run_workers(config, reread=lambda: Config.load("serve", args))
    return run(config)


class _Usage(Exception):
    """A one-line error about how graceful was called."""


def _demo(args: argparse.Namespace) -> int:
    import json

    from ._bench import format_table, run_strategy

    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    results = []
    for strategy in ("reexec", "naive"):
        say(f"{strategy}: {args.duration:g}s of load, {args.upgrades} restarts ...")
        try:
            results.append(run_strategy(strategy, restarts=args.upgrades,
                                        duration=args.duration, concurrency=args.concurrency,
                                        progress=say))
        except OSError as exc:  # no writable temp directory for the servers' pidfile, say
            print(f"graceful demo: cannot run the {strategy} server: {exc} (set TMPDIR to a "
                  f"writable directory with free space)", file=sys.stderr)
            return 2
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in results], f, indent=2)
    graceful_run = results[0]
    ok = graceful_run.stats.failed == 0 and graceful_run.restarts == args.upgrades
    print("graceful: zero failed requests" if ok else "graceful: FAILED requests (see above)")
    return 0 if ok else 1


def main(argv: Optional[List[str]] = None) -> int:
    from .errors import GracefulError

    parser = _parser()
    args = parser.parse_args(argv)
    if args.subcommand is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except _Done as done:
        return done.status
    except (GracefulError, _Usage) as exc:
        print(f"graceful {args.subcommand}: {exc}", file=sys.stderr)
        return 2
