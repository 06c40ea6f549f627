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

    from .serve import add_arguments

    serve = commands.add_parser(
        "serve", help="serve a WSGI or ASGI application; SIGHUP upgrades it to the code on disk",
        description="Serve a WSGI or ASGI application with graceful's HTTP/1.1 server. SIGHUP "
                    "(or SIGUSR2) starts the same command again with the listeners inherited "
                    "and hands over once it is ready; SIGQUIT drains and exits; SIGTERM drains "
                    "after --shutdown-delay.")
    add_arguments(serve)
    serve.set_defaults(func=_serve)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .errors import GracefulError
    from .serve import run

    try:
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
