"""WebSocket conformance: the Autobahn|Testsuite fuzzing client against `graceful serve`.

    python benchmarks/autobahn.py              # every group: 1-7, 9, 10, 12, 13
    python benchmarks/autobahn.py --quick      # 1-7 and 10, for CI (a few minutes)
    python benchmarks/autobahn.py --cases '5.*' '12.1.*' --keep-reports /tmp/ab

The server is the echo app of benchmarks/apps_ws.py under `graceful serve`, and, when uvicorn
and `websockets` are importable by this python, the same app under `uvicorn --ws websockets`,
in the same run, for comparison. Autobahn's `wstest -m fuzzingclient` (Python 2.7 only) is
installed on first use with `python2.7 -m pip install --target CACHE` from the package registry,
with its dependencies pinned below. It writes reports/clients/index.json, which gives each case's
behaviour; the table printed counts them by group (a case counts as its worse verdict of
`behavior` and `behaviorClose`). Exit status: 0 when graceful has no FAILED and no
UNIMPLEMENTED case, 1 otherwise, 2 for bad input; with --skip-if-unavailable, a tool that cannot
be had (no python2.7, install failed) is reported and exits 0, so CI says why it skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import apps_ws  # benchmarks/, on sys.path as the script's directory

# What `pip install autobahntestsuite` resolves to for Python 2.7 as of 2026: the 25.10 release
# pins its own dependencies (twisted, autobahn 0.10.x, ...), so only the suite itself is pinned.
PACKAGES = ["autobahntestsuite==25.10.1"]
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "graceful", "autobahn")

QUICK_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]
ALL_CASES = QUICK_CASES[:-1] + ["9.*", "10.*", "12.*", "13.*"]
# How many cases each group has in autobahntestsuite 25.10: the table says when a run left some
# out. Group 9 (messages up to 16 MB, 4 MB in 64 B frames) runs in full in well under a minute
# here; 12 and 13 (1000 compressed messages per case, up to 128 KB, some in 256 B frames) take
# the longest, mostly in the Python 2.7 client: run them as chunks (--cases '12.*' with
# --keep-reports DIR each) and table the chunks together with --from-reports DIR DIR ...
GROUP_SIZES = {1: 16, 2: 11, 3: 7, 4: 10, 5: 20, 6: 145, 7: 37, 9: 54, 10: 1, 12: 90, 13: 126}

VERDICTS = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED"]
_SEVERITY = {v: i for i, v in enumerate(["OK", "INFORMATIONAL", "NON-STRICT", "UNIMPLEMENTED",
                                         "FAILED"])}


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)
    if args.from_reports:
        return _report(_read_reports(args.from_reports), args.results)
    try:
        wstest = _install(args.python2, args.cache)
    except _Unavailable as exc:
        print(f"autobahn: unavailable: {exc}", file=sys.stderr)
        return 0 if args.skip_if_unavailable else 1
    cases = args.cases or (QUICK_CASES if args.quick else ALL_CASES)
    exclude = args.exclude or []
    reports = args.keep_reports or tempfile.mkdtemp(prefix="autobahn-")
    servers = _servers(args.servers)
    started = time.monotonic()
    results: Dict[str, Dict[str, dict]] = {}
    for name, command in servers:
        results[name] = _run_one(name, command, wstest, cases, exclude, reports)
    print(f"\ncases {' '.join(cases)}" + (f", excluding {' '.join(exclude)}" if exclude else "")
          + f"; {time.monotonic() - started:.0f} s in all; reports in {reports}")
    if not args.keep_reports:
        shutil.rmtree(reports, ignore_errors=True)
    return _report(results, args.results)


def _read_reports(dirs: List[str]) -> Dict[str, Dict[str, dict]]:
    """The results of earlier --keep-reports runs, DIR/<server>/index.json, merged: a run in
    chunks (say 9 alone, 12 alone) is tabled as one."""
    results: Dict[str, Dict[str, dict]] = {}
    for reports in dirs:
        if not os.path.isdir(reports):
            sys.exit(f"autobahn: --from-reports {reports}: no such directory")
        for name in sorted(os.listdir(reports)):
            index = os.path.join(reports, name, "index.json")
            if os.path.exists(index):
                with open(index) as f:
                    results.setdefault(name, {}).update(json.load(f).get(name, {}))
    if not results:
        sys.exit(f"autobahn: no */index.json under {' '.join(dirs)}: "
                 f"give --keep-reports directories")
    return results


def _report(results: Dict[str, Dict[str, dict]], save: Optional[str] = None) -> int:
    print(_table(results))
    if save:
        _save(results, save)
    graceful = results.get("graceful", {})
    bad = sorted((c for c, r in graceful.items() if _verdict(r) in ("FAILED", "UNIMPLEMENTED")),
                 key=_case_key)
    if bad:
        print(f"graceful FAILED/UNIMPLEMENTED: {' '.join(bad)}")
    return 1 if bad or not graceful else 0


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only groups 1-7 and 10 (for CI)")
    parser.add_argument("--cases", nargs="+", metavar="PATTERN",
                        help="Autobahn case patterns such as '5.*' '12.1.*' (default: all groups)")
    parser.add_argument("--exclude", nargs="+", metavar="PATTERN",
                        help="case patterns to leave out, such as '9.1.6'")
    parser.add_argument("--results", metavar="FILE",
                        help="also write the table, by server and group, as JSON to FILE")
    parser.add_argument("--servers", default="graceful,uvicorn",
                        help="comma-separated: graceful, uvicorn (skipped if not importable)")
    parser.add_argument("--python2", default=_default_python2(),
                        help="a Python 2.7 interpreter with pip (default: pyenv's 2.7)")
    parser.add_argument("--cache", default=DEFAULT_CACHE,
                        help=f"where autobahntestsuite is installed (default {DEFAULT_CACHE})")
    parser.add_argument("--keep-reports", metavar="DIR",
                        help="write Autobahn's HTML/JSON reports here and keep them")
    parser.add_argument("--from-reports", metavar="DIR", nargs="+",
                        help="only print the table of earlier --keep-reports DIRs (merged)")
    parser.add_argument("--skip-if-unavailable", action="store_true",
                        help="exit 0 with a reason when the tool cannot be installed")
    args = parser.parse_args(argv)
    unknown = set(args.servers.split(",")) - {"graceful", "uvicorn"}
    if unknown:
        parser.error(f"--servers: unknown {', '.join(sorted(unknown))}; "
                     f"use graceful and/or uvicorn")
    return args


def _default_python2() -> str:
    pyenv = os.path.expanduser("~/.pyenv/versions/2.7.18/bin/python2.7")
    return pyenv if os.path.exists(pyenv) else (shutil.which("python2.7") or "python2.7")


# --- the tool ------------------------------------------------------------------------------

class _Unavailable(Exception):
    """Autobahn cannot be run here; the message says why."""


def _install(python2: str, cache: str) -> List[str]:
    """The wstest command, installing the suite into ``cache`` the first time."""
    if shutil.which(python2) is None and not os.path.exists(python2):
        raise _Unavailable(f"no Python 2.7 at {python2!r} (give one with --python2)")
    site = os.path.join(cache, "site")
    # addsitedir, not PYTHONPATH: zope and other namespace packages are wired up by the .pth
    # files pip writes into the target, and Python reads those only in a site directory.
    command = [python2, "-c", "import site, sys; site.addsitedir(sys.argv.pop(1)); "
               "from autobahntestsuite.wstest import run; sys.argv[0] = 'wstest'; run()", site]
    if not os.path.exists(os.path.join(site, "autobahntestsuite", "wstest.py")):
        print(f"autobahn: installing {' '.join(PACKAGES)} into {site}", file=sys.stderr)
        os.makedirs(cache, exist_ok=True)
        done = subprocess.run([python2, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                               "--no-warn-script-location", "--target", site, *PACKAGES],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
        if done.returncode != 0:
            shutil.rmtree(site, ignore_errors=True)
            tail = done.stdout.decode(errors="replace").strip().splitlines()[-1:]
            raise _Unavailable(f"pip install into {site} failed (exit {done.returncode}): "
                               f"{' '.join(tail) or 'no output'}")
    return command


def _wstest_env() -> Dict[str, str]:
    """This process's environment without any PYTHON* variable meant for Python 3."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


# --- the servers ---------------------------------------------------------------------------

def _servers(names: str) -> List[Tuple[str, List[str]]]:
    return apps_ws.server_commands(["websockets" if n == "uvicorn" else n
                                    for n in names.split(",")])


def _run_one(name: str, command: List[str], wstest: List[str], cases: List[str],
             exclude: List[str], reports: str) -> Dict[str, dict]:
    outdir = os.path.join(reports, name)
    os.makedirs(outdir, exist_ok=True)
    server = apps_ws.ServerProcess(command)
    spec = {"outdir": outdir, "cases": cases, "exclude-cases": exclude,
            "exclude-agent-cases": {},
            "options": {"failByDrop": False},
            "servers": [{"agent": name, "url": f"ws://127.0.0.1:{server.port}"}]}
    spec_path = os.path.join(reports, f"{name}.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    started = time.monotonic()
    print(f"autobahn: {name} on port {server.port} ...", file=sys.stderr, flush=True)
    try:
        done = subprocess.run([*wstest, "-m", "fuzzingclient", "-s", spec_path],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=_wstest_env(), cwd=reports)
    finally:
        log = server.stop()
    print(f"autobahn: {name} done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    index = os.path.join(outdir, "index.json")
    if not os.path.exists(index):
        out = done.stdout.decode(errors="replace")
        sys.exit(f"autobahn: wstest wrote no {index} (exit {done.returncode}):\n{out[-3000:]}"
                 f"\nserver log:\n{log[-2000:]}")
    with open(index) as f:
        return json.load(f).get(name, {})


# --- the table -----------------------------------------------------------------------------

def _verdict(result: dict) -> str:
    verdicts = [result.get("behavior", "FAILED"), result.get("behaviorClose", "OK")]
    verdicts = [v if v in _SEVERITY else "FAILED" for v in verdicts]
    return max(verdicts, key=_SEVERITY.__getitem__)


def _case_key(case: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def _counts(results: Dict[str, Dict[str, dict]]) -> Dict[str, Dict[str, Dict[str, int]]]:
    """{server: {group or "all": {verdict: count, "cases": n}}}."""
    out: Dict[str, Dict[str, Dict[str, int]]] = {}
    for name, cases in results.items():
        groups = out[name] = {}
        for case, result in cases.items():
            for key in (str(_case_key(case)[0]), "all"):
                counts = groups.setdefault(key, dict.fromkeys(["cases", *VERDICTS], 0))
                counts["cases"] += 1
                counts[_verdict(result)] += 1
    return out


def _save(results: Dict[str, Dict[str, dict]], path: str) -> None:
    bad = {name: sorted((c for c, r in cases.items() if _verdict(r) in ("FAILED", "UNIMPLEMENTED")),
                        key=_case_key) for name, cases in results.items()}
    with open(path, "w") as f:
        json.dump({"command": "python benchmarks/autobahn.py " + " ".join(sys.argv[1:]),
                   "counts": _counts(results), "failed_or_unimplemented": bad,
                   "group_sizes": GROUP_SIZES, "table": _table(results)}, f, indent=1)
        f.write("\n")


def _table(results: Dict[str, Dict[str, dict]]) -> str:
    header = "| server | group | cases | " + " | ".join(VERDICTS) + " | seconds |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, cases in results.items():
        groups: Dict[int, List[str]] = {}
        for case in cases:
            groups.setdefault(_case_key(case)[0], []).append(case)
        totals = dict.fromkeys(VERDICTS, 0)
        for group in sorted(groups):
            counts = dict.fromkeys(VERDICTS, 0)
            for case in groups[group]:
                counts[_verdict(cases[case])] += 1
            seconds = sum(cases[c].get("duration", 0) for c in groups[group]) / 1000
            for v in VERDICTS:
                totals[v] += counts[v]
            ran = _of(len(groups[group]), GROUP_SIZES.get(group))
            lines.append(f"| {name} | {group} | {ran} | "
                         + " | ".join(str(counts[v]) for v in VERDICTS) + f" | {seconds:.0f} |")
        seconds = sum(r.get("duration", 0) for r in cases.values()) / 1000
        lines.append(f"| {name} | all | {_of(len(cases), sum(GROUP_SIZES.values()))} | "
                     + " | ".join(str(totals[v]) for v in VERDICTS) + f" | {seconds:.0f} |")
    return "\n".join(lines)


def _of(ran: int, full: "int | None") -> str:
    """The case count, and the group's full size when the run left some out."""
    return str(ran) if full is None or ran >= full else f"{ran} of {full}"


if __name__ == "__main__":
    sys.exit(main())
