"""Run the restart matrix and the incident scenarios; write JSON, a Markdown report and SVGs.

    python benchmarks/report.py                       # everything, about 3-4 minutes on 2 cores
    python benchmarks/report.py --quick               # fewer restarts, shorter cells
    python benchmarks/report.py --only reexec --only naive --no-scenarios

The matrix: every strategy in ``graceful._bench.STRATEGIES`` (those whose ``needs`` module is
not installed are skipped, and the report says so) x fresh or keep-alive clients x only fast
requests (``/fast``) or the mix where 1 in 4 requests is ``/slow`` (200 ms). Each cell is its own
run: a new server, ``--restarts`` restarts at even intervals, ``--seconds-per-restart`` of load
between them.

The scenarios: every ``benchmarks/scenarios/*.py`` whose name does not start with ``_`` runs as
``python SCRIPT --json benchmarks/results/scenario-NAME.json`` with a timeout; its exit status,
run time and printed table go into the report.

Writes, under ``--out`` (benchmarks/results): report.json (every cell, with its time series),
report.md (the tables), and timeline-STRATEGY.svg (one per strategy, its four cells stacked).
Exit status 0 only if every strategy marked lossless failed no request and completed every
restart in every cell, and every scenario exited 0.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _svg import timeline_svg  # noqa: E402
from graceful._bench import PATHS_MIXED, STRATEGIES, run_strategy  # noqa: E402
from graceful._loadgen import KINDS  # noqa: E402

MODES = ("fresh", "keepalive")
MIXES = {"fast": ("/fast",), "slow": tuple(PATHS_MIXED)}
MIX_LABELS = {"fast": "/fast only", "slow": "1 in 4 /slow"}
MODE_LABELS = {"fresh": "fresh connections", "keepalive": "keep-alive"}
CELLS = [(mode, mix) for mode in MODES for mix in MIXES]
SLOW_P90_MS = 150.0  # in the /slow mix a quarter of requests take 200 ms, so p90 is above this


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- the matrix ---------------------------------------------------------------------------------


def skip_reason(name: str) -> Optional[str]:
    """Why strategy ``name`` cannot run here, or None."""
    needs = STRATEGIES[name].get("needs")
    if needs and importlib.util.find_spec(needs) is None:
        return f"{needs} is not installed for {sys.executable}"
    return None


def run_cell(name: str, mode: str, mix: str, *, restarts: int, seconds: float,
             concurrency: int) -> dict:
    """One strategy, one client mode, one request mix: a new server restarted ``restarts``
    times; the ``RunResult`` as a dict, plus what the cell was."""
    spec = STRATEGIES[name]
    duration = seconds * (restarts + 1)
    cell = {"strategy": name, "description": spec.get("description", name),
            "lossless": bool(spec.get("lossless")), "mode": mode, "mix": mix,
            "paths": list(MIXES[mix]), "restarts_requested": restarts,
            "duration_s": duration, "concurrency": concurrency}
    started = time.monotonic()
    try:
        result = run_strategy(name, restarts=restarts, duration=duration,
                              concurrency=concurrency, modes=(mode,), paths=MIXES[mix])
        cell.update(result.to_dict())
        cell["exception"] = None
    except Exception as exc:  # a server that did not start: a failed cell, not a crash
        cell.update({"restarts": 0, "total": 0, "failed": 0, "counts": dict.fromkeys(KINDS, 0),
                     "latency_ms": {"p50": None, "p90": None, "p99": None, "max": None},
                     "handover_ms": {"median": None, "max": None}, "series": [],
                     "restarted_at": [], "restart_errors": [], "error_samples": [],
                     "exception": f"{type(exc).__name__}: {exc}"})
    cell["wall_s"] = round(time.monotonic() - started, 2)
    p90 = cell["latency_ms"].get("p90")
    cell["slow_seen"] = None if mix == "fast" else (p90 is not None and p90 >= SLOW_P90_MS)
    return cell


def cell_clean(cell: dict) -> bool:
    """No failed request, every restart completed, no exception."""
    return (not cell["exception"] and cell["failed"] == 0
            and cell["restarts"] == cell["restarts_requested"])


def strategy_verdict(cells: Sequence[dict]) -> str:
    clean = all(cell_clean(c) for c in cells)
    if cells and cells[0]["lossless"]:
        return "lossless" if clean else "FAILED"
    return "clean (not required)" if clean else "lossy (expected)"


# -- scenarios ----------------------------------------------------------------------------------


def find_scenarios(directory: str) -> List[str]:
    return sorted(path for path in glob.glob(os.path.join(directory, "*.py"))
                  if not os.path.basename(path).startswith("_"))


def _display_command(args: Sequence[str]) -> str:
    """``args`` as one would type them from the repository: ``python`` and relative paths."""
    def short(arg: str) -> str:
        rel = os.path.relpath(arg, ROOT) if os.path.isabs(arg) else arg
        return arg if rel.startswith("..") else rel

    shown = ["python"] + [short(a) for a in args[1:]]
    return " ".join(shlex.quote(a) for a in shown)


def run_scenario(path: str, out_dir: str, timeout: float) -> dict:
    """Run one scenario script in its own process group; on timeout the group is killed."""
    name = os.path.splitext(os.path.basename(path))[0]
    json_path = os.path.join(out_dir, f"scenario-{name}.json")
    if os.path.exists(json_path):
        os.remove(json_path)  # a stale file must not pass for this run's result
    args = [sys.executable, path, "--json", json_path]
    _progress(f"scenario {name}: {_display_command(args)}")
    started = time.monotonic()
    proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        stdout, stderr = proc.communicate()
    runtime = time.monotonic() - started
    written = None
    if os.path.exists(json_path):
        try:
            with open(json_path) as f:
                json.load(f)
            written = True
        except (OSError, ValueError):
            written = False
    outcome = {
        "name": name, "script": os.path.relpath(path, ROOT),
        "command": _display_command(args),
        "exit_status": None if timed_out else proc.returncode, "timed_out": timed_out,
        "timeout_s": timeout, "runtime_s": round(runtime, 2),
        "json": os.path.relpath(json_path, ROOT), "json_valid": written,
        "stdout": stdout.decode("utf-8", "replace"),
        "stderr_tail": stderr.decode("utf-8", "replace")[-2000:],
    }
    outcome["passed"] = not timed_out and proc.returncode == 0
    _progress(f"scenario {name}: {'timed out' if timed_out else f'exit {proc.returncode}'} "
              f"after {runtime:.1f}s")
    return outcome


# -- output -------------------------------------------------------------------------------------


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _md(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|")


def errors_by_kind(cell: dict) -> str:
    parts = [f"{kind} {cell['counts'][kind]}" for kind in KINDS[1:] if cell["counts"].get(kind)]
    return ", ".join(parts) if parts else "-"


def cell_label(cell: dict) -> str:
    return f"{cell['mode']}, {cell['mix']}"


def matrix_table(cells: Sequence[dict]) -> str:
    lines = ["| strategy | clients, requests | restarts | requests | failed | errors by kind "
             "| p50 | p99 | handover median (max) |",
             "|---|---|--:|--:|--:|---|--:|--:|--:|"]
    for cell in cells:
        handover = cell["handover_ms"]
        ho = "-" if handover["median"] is None else \
            f"{_ms(handover['median'])} ({_ms(handover['max'])})"
        errors = errors_by_kind(cell)
        if cell["exception"]:
            errors = f"did not run: {cell['exception']}"
        elif cell["restart_errors"]:
            errors += f"; {len(cell['restart_errors'])} restarts incomplete"
        if cell["slow_seen"] is False:
            errors += "; /slow did not look slow"
        lines.append(
            f"| {_md(cell['strategy'])} | {_md(cell_label(cell))} "
            f"| {cell['restarts']}/{cell['restarts_requested']} | {cell['total']} "
            f"| {cell['failed']} | {_md(errors)} | {_ms(cell['latency_ms']['p50'])} "
            f"| {_ms(cell['latency_ms']['p99'])} | {ho} |")
    return "\n".join(lines)


def verdict_table(by_strategy: Dict[str, List[dict]], svg_prefix: str) -> str:
    lines = ["| strategy | what it does | lossless required | verdict | timeline |",
             "|---|---|---|---|---|"]
    for name, cells in by_strategy.items():
        lines.append(f"| {_md(name)} | {_md(cells[0]['description'])} "
                     f"| {'yes' if cells[0]['lossless'] else 'no'} "
                     f"| {strategy_verdict(cells)} "
                     f"| [timeline-{name}.svg]({svg_prefix}timeline-{name}.svg) |")
    return "\n".join(lines)


def scenario_table(scenarios: Sequence[dict]) -> str:
    lines = ["| scenario | outcome | exit status | run time | JSON |", "|---|---|--:|--:|---|"]
    for s in scenarios:
        outcome = "passed" if s["passed"] else ("timed out" if s["timed_out"] else "FAILED")
        json_state = {True: s["json"], False: f"{s['json']} (not valid JSON)",
                      None: "not written"}[s["json_valid"]]
        lines.append(f"| {_md(s['name'])} | {outcome} "
                     f"| {'-' if s['exit_status'] is None else s['exit_status']} "
                     f"| {s['runtime_s']:.1f} s | {_md(json_state)} |")
    return "\n".join(lines)


def markdown(report: dict, svg_prefix: str = "") -> str:
    meta = report["meta"]
    by_strategy: Dict[str, List[dict]] = {}
    for cell in report["cells"]:
        by_strategy.setdefault(cell["strategy"], []).append(cell)
    out = ["# Restart benchmark report", "",
           f"`{meta['command']}`: {meta['restarts']} restarts per cell, "
           f"{meta['seconds_per_restart']:g} s of load between restarts, "
           f"{meta['concurrency']} clients; Python {meta['python']}, {meta['cpus']} CPUs, "
           f"load average {meta['loadavg_before']} before and {meta['loadavg_after']} after; "
           f"{meta['runtime_s']:.0f} s in all (matrix {meta['matrix_s']:.0f} s, scenarios "
           f"{meta['scenarios_s']:.0f} s). Result: **{'pass' if report['ok'] else 'FAIL'}**.",
           ""]
    if report["cells"] or report["skipped"]:
        out += ["## Restart matrix", "",
                "Every cell is its own server, restarted under load by the strategy; `fresh` "
                "clients open a connection per request, `keepalive` clients reuse one; `fast` "
                "requests only `/fast`, `slow` makes 1 in 4 requests `/slow` (200 ms). "
                "Handover: from the restart signal to the first response from a new pid.", ""]
    if report["cells"]:
        out += [verdict_table(by_strategy, svg_prefix), "", matrix_table(report["cells"]), ""]
    for skipped in report["skipped"]:
        out.append(f"- skipped {skipped['strategy']}: {_md(skipped['reason'])}")
    if report["skipped"]:
        out.append("")
    out += ["## Scenarios", ""]
    if not report["scenarios_run"]:
        out += ["Not run (`--no-scenarios`).", ""]
    elif not report["scenarios"]:
        out += [f"No scenarios in `{report['scenarios_dir']}`.", ""]
    else:
        out += [scenario_table(report["scenarios"]), ""]
        for s in report["scenarios"]:
            out += [f"### {s['name']}", "", f"`{s['command']}`", ""]
            text = s["stdout"].rstrip() or "(no output)"
            if not s["passed"] and s["stderr_tail"].strip():
                text += "\n--- stderr (end) ---\n" + s["stderr_tail"].rstrip()
            fence = "```"
            while fence in text:
                fence += "`"
            out += [fence, text, fence, ""]
    return "\n".join(out)


def timeline_panels(cells: Sequence[dict]) -> List[dict]:
    panels = []
    for cell in cells:
        if cell["exception"]:
            note = f"did not run: {cell['exception']}"
        else:
            note = (f"{cell['total']} requests, {cell['failed']} failed"
                    + (f" ({errors_by_kind(cell)})" if cell["failed"] else "")
                    + f", handover median {_ms(cell['handover_ms']['median'])}")
        panels.append({"label": f"{MODE_LABELS[cell['mode']]}, {MIX_LABELS[cell['mix']]}",
                       "note": note, "series": cell["series"],
                       "restarts": cell["restarted_at"]})
    return panels


def write_timeline(out_dir: str, name: str, cells: Sequence[dict]) -> str:
    first = cells[0]
    title = f"{name}: {first['description']} ({strategy_verdict(cells)})"
    subtitle = (f"{len(cells)} cells stacked (fresh/keep-alive clients x /fast only/1 in 4 "
                f"/slow), each a new server: {first['concurrency']} clients, "
                f"{first['restarts_requested']} restarts per cell.")
    svg = timeline_svg(title, timeline_panels(cells), subtitle=subtitle,
                       duration=max(c["duration_s"] for c in cells))
    path = os.path.join(out_dir, f"timeline-{name}.svg")
    with open(path, "w", encoding="utf-8") as f:
        f.write(svg)
    return path


def _loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="STRATEGY",
                        choices=list(STRATEGIES), help="repeatable; default: every strategy")
    parser.add_argument("--quick", action="store_true",
                        help="2 restarts per cell, 0.5 s between them")
    parser.add_argument("--restarts", type=int, help="restarts per cell (3; 2 with --quick)")
    parser.add_argument("--seconds-per-restart", type=float,
                        help="load time between restarts (0.8; 0.5 with --quick)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-scenarios", action="store_true")
    parser.add_argument("--no-matrix", action="store_true")
    parser.add_argument("--scenarios-dir", default=os.path.join(HERE, "scenarios"))
    parser.add_argument("--scenario-timeout", type=float, default=120.0,
                        help="seconds per scenario before it is killed (120)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    restarts = args.restarts if args.restarts is not None else (2 if args.quick else 3)
    seconds = args.seconds_per_restart if args.seconds_per_restart is not None else \
        (0.5 if args.quick else 0.8)
    command = " ".join(["python", os.path.relpath(os.path.abspath(__file__), ROOT)]
                       + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])
    os.makedirs(args.out, exist_ok=True)
    began = time.monotonic()
    loadavg_before = _loadavg()

    cells: List[dict] = []
    skipped: List[dict] = []
    names = [] if args.no_matrix else (args.only or list(STRATEGIES))
    for name in names:
        reason = skip_reason(name)
        if reason:
            _progress(f"{name}: skipped, {reason}")
            skipped.append({"strategy": name, "reason": reason})
            continue
        mine = []
        for mode, mix in CELLS:
            cell = run_cell(name, mode, mix, restarts=restarts, seconds=seconds,
                            concurrency=args.concurrency)
            _progress(f"{name} {mode} {mix}: {cell['total']} requests, {cell['failed']} failed, "
                      f"{cell['restarts']}/{restarts} restarts, handover median "
                      f"{_ms(cell['handover_ms']['median'])}, {cell['wall_s']:.1f}s"
                      + (f", {cell['exception']}" if cell["exception"] else ""))
            mine.append(cell)
        cells.extend(mine)
        write_timeline(args.out, name, mine)
    matrix_s = time.monotonic() - began

    scenarios: List[dict] = []
    if not args.no_scenarios:
        for path in find_scenarios(args.scenarios_dir):
            scenarios.append(run_scenario(path, args.out, args.scenario_timeout))
    runtime = time.monotonic() - began

    by_strategy: Dict[str, List[dict]] = {}
    for cell in cells:
        by_strategy.setdefault(cell["strategy"], []).append(cell)
    failed_strategies = [name for name, mine in by_strategy.items()
                         if strategy_verdict(mine) == "FAILED"]
    failed_scenarios = [s["name"] for s in scenarios if not s["passed"]]
    report = {
        "ok": not failed_strategies and not failed_scenarios,
        "failed_strategies": failed_strategies, "failed_scenarios": failed_scenarios,
        "meta": {"command": command, "restarts": restarts, "seconds_per_restart": seconds,
                 "concurrency": args.concurrency, "python": platform.python_version(),
                 "executable": sys.executable, "platform": platform.platform(),
                 "cpus": os.cpu_count(), "loadavg_before": loadavg_before,
                 "loadavg_after": _loadavg(), "commit": _git_commit(),
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                     timespec="seconds"),
                 "runtime_s": round(runtime, 1), "matrix_s": round(matrix_s, 1),
                 "scenarios_s": round(runtime - matrix_s, 1)},
        "cells": cells, "skipped": skipped,
        "scenarios_run": not args.no_scenarios,
        "scenarios_dir": os.path.relpath(os.path.abspath(args.scenarios_dir), ROOT),
        "scenarios": scenarios,
    }
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    text = markdown(report)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)
    _progress(f"wrote {os.path.join(args.out, 'report.md')}, report.json and "
              f"{len(by_strategy)} timelines in {runtime:.1f}s")
    for name in failed_strategies:
        bad = [c for c in by_strategy[name] if not cell_clean(c)]
        for c in bad:
            _progress(f"{name} {cell_label(c)}: {c['failed']} failed, "
                      f"{c['restarts']}/{restarts} restarts: {c['error_samples'][:3]} "
                      f"{c['restart_errors'][:3]} {c['exception'] or ''}")
    for name in failed_scenarios:
        _progress(f"scenario {name} did not pass")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
