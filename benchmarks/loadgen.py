"""Load an HTTP server and classify every request: ok, bad_status, refused, reset, eof, timeout.

    python benchmarks/loadgen.py --port 8000 --duration 5 --concurrency 16 --mode keepalive

The generator itself is graceful._loadgen (stdlib asyncio on raw streams), shared with
`graceful demo` and benchmarks/restart.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from graceful._loadgen import LoadGenerator  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--unix", help="a Unix socket path instead of host:port")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--mode", choices=("fresh", "keepalive"), default="keepalive")
    parser.add_argument("--paths", default="/fast,/slow", help="comma-separated, in turn")
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    load = LoadGenerator(args.port, host=args.host, unix=args.unix, concurrency=args.concurrency,
                         mode=args.mode, paths=args.paths.split(","),
                         max_requests=args.max_requests)
    stats = asyncio.run(load.run(args.duration)).to_dict()
    lat = stats["latency_ms"]
    print(f"requests {stats['total']}  failed {stats['failed']}  "
          f"req/s {stats['total'] / args.duration:.0f}  "
          f"p50 {lat['p50']} ms  p90 {lat['p90']} ms  p99 {lat['p99']} ms  max {lat['max']} ms")
    for kind, n in stats["counts"].items():
        if n and kind != "ok":
            print(f"  {kind}: {n}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(stats, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
