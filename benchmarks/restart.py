"""Restart a server under load, N times, by each strategy; print a table and write JSON.

    python benchmarks/restart.py                                  # reexec and naive, 50 restarts
    python benchmarks/restart.py --strategy reexec --restarts 20 --mode keepalive
    python benchmarks/restart.py --strategy serve-wsgi --strategy serve-asgi --restarts 20 \
        --json benchmarks/results/restart-serve.json

Strategies: reexec (graceful: SIGHUP, self re-exec of a socketserver app), naive (SIGTERM, then
start again), serve-wsgi and serve-asgi (``graceful serve`` with benchmarks/apps.py, SIGHUP),
handoff (a new, unrelated ``graceful serve --takeover`` process takes the sockets over),
reuseport (a new ``serve --reuse-port`` process binds beside the old one, which gets SIGTERM
once the new one is ready), reuseport-naive (the same with a plain stdlib server that closes
without steering),
master (``graceful serve --workers 2``: the master keeps its pid), run (``graceful run`` over
examples/systemd_style_server.py), run-gunicorn and run-uvicorn (``graceful run`` wrapping them,
when they are installed; never a dependency).
Exit status 0 only if every strategy that is meant to be lossless failed no request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from graceful._bench import STRATEGIES, format_table, run_strategy  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", action="append", choices=sorted(STRATEGIES),
                        help="repeatable; default: all")
    parser.add_argument("--restarts", type=int, default=50)
    parser.add_argument("--seconds-per-restart", type=float, default=0.5,
                        help="load time between restarts (0.5)")
    parser.add_argument("--mode", choices=("fresh", "keepalive", "both"), default="both")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                       "restart.json"))
    args = parser.parse_args()
    modes = ("fresh", "keepalive") if args.mode == "both" else (args.mode,)
    strategies = args.strategy or ["reexec", "naive"]
    duration = args.seconds_per_restart * (args.restarts + 1)
    results = []
    for name in strategies:
        print(f"{name}: {args.restarts} restarts over {duration:g}s, modes {'+'.join(modes)}",
              file=sys.stderr, flush=True)
        results.append(run_strategy(name, restarts=args.restarts, duration=duration,
                                    concurrency=args.concurrency, modes=modes))
    print(format_table(results))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"restarts": args.restarts, "modes": list(modes),
                   "concurrency": args.concurrency,
                   "results": [r.to_dict() for r in results]}, f, indent=2)
    print(f"wrote {args.json}", file=sys.stderr)
    lossy = [r for r in results if STRATEGIES[r.strategy]["lossless"]
             and (r.stats.failed or r.restarts != args.restarts)
             and not any("not installed" in e for e in r.errors)]
    for r in lossy:
        print(f"{r.strategy}: {r.stats.failed} failed requests, {r.restarts}/{args.restarts} "
              f"restarts: {r.stats.samples[:3]} {r.errors[:3]}", file=sys.stderr)
    return 1 if lossy else 0


if __name__ == "__main__":
    sys.exit(main())
