"""SO_REUSEPORT reload: a second instance starts on the same port, then the first one stops.

The incident: php-fpm's reload was made "graceful" by starting a second instance on the same
port with SO_REUSEPORT and then stopping the first. Each socket of a reuseport group has its own
accept queue; the kernel keeps spreading new connections over both while the old one shuts
down, and closing it resets whatever was queued on it. Under load, every reload fails requests.

Reproduction on loopback, under fresh and keep-alive load (1 in 4 requests takes 200 ms), N
reloads each: start the new instance beside the old one, wait for its READY=1 (sd_notify), send
the old one SIGTERM.

- naive: Python's ThreadingHTTPServer with SO_REUSEPORT (benchmarks/naive_reuseport_server.py),
  shut down the usual way;
- graceful: ``graceful serve --reuse-port``: the new socket keeps the group's traffic on the old
  one until it is ready, then takes all of it (SO_ATTACH_REUSEPORT_CBPF), so the old one only
  has its own queue left to serve when it closes.

Run it (about 20 s; exits 0 only if the graceful run failed no request):

    python benchmarks/scenarios/reuseport.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

from graceful._bench import run_strategy  # noqa: E402


def main() -> int:
    p = c.parser(__doc__, "reuseport")
    p.add_argument("--reloads", type=int, default=10, help="reloads per run (10)")
    args = p.parse_args()
    runs = {}
    for kind, strategy in (("naive", "reuseport-naive"), ("graceful", "reuseport")):
        c.say(f"{kind}: {args.reloads} SO_REUSEPORT reloads under load ...")
        result = run_strategy(strategy, restarts=args.reloads, duration=0.5 * (args.reloads + 1),
                              concurrency=8)
        runs[kind] = result.to_dict()
    naive, graceful = runs["naive"], runs["graceful"]
    columns = ["naive: http.server + SO_REUSEPORT", "graceful serve --reuse-port"]
    rows = [("requests", [naive["total"], graceful["total"]]),
            ("failed", [naive["failed"], graceful["failed"]]),
            ("  how", [c.failure_breakdown(r["counts"]) for r in (naive, graceful)]),
            ("reloads done", [naive["restarts"], graceful["restarts"]]),
            ("median handover (ms)", [naive["handover_ms"]["median"],
                                      graceful["handover_ms"]["median"]])]
    table = c.print_table(columns, rows)
    ok = graceful["failed"] == 0 and graceful["restarts"] == args.reloads
    print("graceful: zero failed requests" if ok else "graceful: FAILED requests (see above)")
    c.write_json(args.json, {"scenario": "reuseport", "ok": ok, "table": table,
                             "runs": {"naive": naive, "graceful": graceful}})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
