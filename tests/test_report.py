"""benchmarks/report.py and its SVG timelines, on synthetic data: no servers are started.

The scenario runner is exercised with throwaway scripts written to a temporary directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = {"svg": "http://www.w3.org/2000/svg"}


def _load(name: str, filename: str):
    """Import a file from benchmarks/ without leaving benchmarks/ on sys.path (it has modules,
    such as apps.py, whose names tests could otherwise pick up)."""
    saved = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(ROOT, "benchmarks", filename))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    finally:
        sys.path[:] = saved


svg = _load("graceful_bench_svg", "_svg.py")
report = _load("graceful_bench_report", "report.py")


def _series(points):
    return [{"t": round(i * 0.1, 1), "ok": ok, "errors": err} for i, (ok, err) in
            enumerate(points)]


def _parse(text: str) -> ET.Element:
    root = ET.fromstring(text.encode("utf-8"))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def _rects(root: ET.Element, cls: str):
    return [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == cls]


def _lines(root: ET.Element, cls: str):
    return [r for r in root.iter("{http://www.w3.org/2000/svg}line") if r.get("class") == cls]


def test_bars_markers_and_errors_are_counted():
    points = [(10, 0), (12, 0), (0, 5), (3, 2), (11, 0), (0, 0), (9, 0)]
    text = svg.timeline_svg("reexec: SIGHUP", [
        {"label": "fresh, fast", "note": "49 requests, 7 failed", "series": _series(points),
         "restarts": [0.2, 0.45]},
        {"label": "keepalive, fast", "series": _series([(4, 0)] * 5), "restarts": [0.1]},
    ], subtitle="synthetic", duration=0.7)
    root = _parse(text)
    ok, err = _rects(root, "ok"), _rects(root, "err")
    assert len(ok) == sum(1 for o, _ in points if o) + 5
    assert len(err) == sum(1 for _, e in points if e) == 2
    assert all(r.get("fill") == svg.ERROR_COLOUR == "#d62728" for r in err)
    assert len(_lines(root, "restart")) == 3
    assert root.find("svg:title", NS).text == "reexec: SIGHUP"
    assert root.find("svg:desc", NS).text == "synthetic"
    assert len(root.findall("svg:g[@class='panel']", NS)) == 2
    legend = root.find("svg:g[@class='legend']", NS)
    assert legend is not None and len(legend.findall("svg:text", NS)) == 3
    # Stacking: an error bar sits right on top of the ok bar of its bucket.
    panel = root.find("svg:g[@class='panel']", NS)
    ok_top = {r.get("x"): float(r.get("y")) for r in _rects(panel, "ok")}
    for r in _rects(panel, "err"):
        if r.get("x") in ok_top:
            assert float(r.get("y")) + float(r.get("height")) == pytest.approx(ok_top[r.get("x")],
                                                                              abs=0.02)
    assert all(float(r.get("width")) > 0 for r in ok + err)
    for r in ok + err:
        for attr in ("x", "y", "width", "height"):
            assert float(r.get(attr)) >= 0


def test_no_errors_means_no_red():
    root = _parse(svg.timeline_svg("clean", [{"label": "x", "series": _series([(5, 0)] * 20),
                                              "restarts": []}]))
    assert not _rects(root, "err")
    assert len(_rects(root, "ok")) == 20
    assert not _lines(root, "restart")


def test_empty_panels_and_no_panels_are_still_svg():
    _parse(svg.timeline_svg("nothing", []))
    root = _parse(svg.timeline_svg("empty", [{"label": "did not run", "series": [],
                                              "restarts": []}]))
    assert not _rects(root, "ok") and not _rects(root, "err")


def test_markers_are_placed_in_time_order_on_the_axis():
    root = _parse(svg.timeline_svg("t", [{"label": "x", "series": _series([(1, 0)] * 40),
                                          "restarts": [1.0, 2.0, 3.0]}]))
    xs = [float(line.get("x1")) for line in _lines(root, "restart")]
    assert xs == sorted(xs)
    assert svg.LEFT < xs[0] < xs[-1] < svg.WIDTH - svg.RIGHT
    # 4 s over the plot width: restart 2 is at the middle.
    assert xs[1] == pytest.approx(svg.LEFT + (svg.WIDTH - svg.LEFT - svg.RIGHT) / 2, abs=0.01)


def test_text_is_escaped():
    nasty = 'a<b>&"c\' ]]> <!-- x --> <script>alert(1)</script>'
    root = _parse(svg.timeline_svg(nasty, [{"label": nasty, "note": nasty,
                                            "series": _series([(1, 1)]), "restarts": [0.05]}],
                                   subtitle=nasty))
    assert root.find("svg:title", NS).text == nasty
    assert root.find("svg:desc", NS).text == nasty
    assert not list(root.iter("{http://www.w3.org/2000/svg}script"))
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert any(t and "<script>" in t for t in texts)


@settings(max_examples=200, deadline=None)
@given(name=st.text(), description=st.text(), label=st.text(max_size=300),
       counts=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 500)), max_size=60),
       restarts=st.lists(st.floats(0, 10, allow_nan=False), max_size=8))
def test_any_text_and_data_give_well_formed_svg(name, description, label, counts, restarts):
    title = f"{name}: {description}"
    text = svg.timeline_svg(title, [{"label": label, "note": description,
                                     "series": _series(counts), "restarts": restarts}],
                            subtitle=description)
    root = _parse(text)
    assert (root.find("svg:title", NS).text or "") == svg.clean(title)
    assert len(_rects(root, "ok")) == sum(1 for ok, _ in counts if ok)
    assert len(_rects(root, "err")) == sum(1 for _, err in counts if err)
    assert len(_lines(root, "restart")) == len(restarts)
    # A single failure among thousands of successes is still a visible red mark.
    assert all(float(r.get("height")) >= svg.MIN_ERROR_PX - 0.01 for r in _rects(root, "err"))


@given(st.text())
def test_xml_text_round_trips_what_xml_can_carry(value):
    root = ET.fromstring(f'<a b="{svg.xml_text(value)}">{svg.xml_text(value)}</a>')
    assert (root.text or "") == svg.clean(value)
    assert root.get("b") == svg.clean(value)


# -- report.py: tables, verdicts, scenarios -----------------------------------------------------


def _cell(strategy="reexec", lossless=True, failed=0, restarts=3, **extra):
    counts = dict.fromkeys(report.KINDS, 0)
    counts["ok"] = 100
    counts["refused"] = failed
    cell = {"strategy": strategy, "description": f"{strategy} | described", "lossless": lossless,
            "mode": "fresh", "mix": "slow", "paths": ["/fast", "/slow"],
            "restarts_requested": 3, "restarts": restarts, "duration_s": 3.2,
            "concurrency": 8, "total": 100 + failed, "failed": failed, "counts": counts,
            "latency_ms": {"p50": 0.5, "p90": 201.0, "p99": 202.0, "max": 210.0},
            "handover_ms": {"median": 100.0, "max": 120.0}, "restart_errors": [],
            "restarted_at": [0.8, 1.6, 2.4], "series": _series([(10, 0), (8, 2)]),
            "error_samples": [], "exception": None, "wall_s": 4.0, "slow_seen": True}
    cell.update(extra)
    return cell


def test_verdicts():
    assert report.strategy_verdict([_cell()]) == "lossless"
    assert report.strategy_verdict([_cell(), _cell(failed=1)]) == "FAILED"
    assert report.strategy_verdict([_cell(restarts=2)]) == "FAILED"
    assert report.strategy_verdict([_cell(exception="RuntimeError: no")]) == "FAILED"
    assert report.strategy_verdict([_cell(lossless=False, failed=5)]) == "lossy (expected)"
    assert report.strategy_verdict([_cell(lossless=False)]) == "clean (not required)"


def test_markdown_tables_escape_pipes_and_list_errors_by_kind():
    doc = {"ok": False, "meta": {"command": "python benchmarks/report.py", "restarts": 3,
                                 "seconds_per_restart": 0.8, "concurrency": 8,
                                 "python": "3.11.7", "cpus": 2, "loadavg_before": "0",
                                 "loadavg_after": "0", "runtime_s": 10.0, "matrix_s": 9.0,
                                 "scenarios_s": 1.0},
           "cells": [_cell(), _cell("naive", lossless=False, failed=7)],
           "skipped": [{"strategy": "run-gunicorn", "reason": "gunicorn is not installed"}],
           "scenarios_run": True, "scenarios_dir": "benchmarks/scenarios", "scenarios": []}
    text = report.markdown(doc, svg_prefix="benchmarks/results/")
    assert "reexec \\| described" in text
    assert "refused 7" in text
    assert "[timeline-naive.svg](benchmarks/results/timeline-naive.svg)" in text
    assert "skipped run-gunicorn: gunicorn is not installed" in text
    assert "No scenarios in `benchmarks/scenarios`" in text
    assert "**FAIL**" in text
    header = next(line for line in text.splitlines() if line.startswith("| strategy | what it does"))
    row = next(line for line in text.splitlines() if line.startswith("| reexec"))
    assert len(re.split(r"(?<!\\)\|", row)) == len(header.split("|"))


def test_panels_say_what_each_cell_was():
    panels = report.timeline_panels([_cell(), _cell(mode="keepalive", mix="fast",
                                                    exception="RuntimeError: boom")])
    assert panels[0]["label"] == "fresh connections, 1 in 4 /slow"
    assert "did not run: RuntimeError: boom" in panels[1]["note"]
    _parse(svg.timeline_svg("t", panels))


def test_every_strategy_has_a_mix_whose_paths_exist():
    # The strategies' servers (the demo server, benchmarks/apps.py, the systemd-style example)
    # answer /slow after 200 ms; the matrix relies on that for its "slow" cells.
    assert report.MIXES["slow"].count("/slow") == 1 and len(report.MIXES["slow"]) == 4
    assert report.MIXES["fast"] == ("/fast",)
    assert len(report.CELLS) == 4


def _script(directory, name, body):
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return path


def test_scenarios_run_with_json_path_timeout_and_exit_status(tmp_path):
    scenarios, out = tmp_path / "scenarios", tmp_path / "results"
    scenarios.mkdir()
    _script(scenarios, "good.py", """
        import json, sys
        path = sys.argv[sys.argv.index("--json") + 1]
        json.dump({"clean": True}, open(path, "w"))
        print("| case | failed |")
        print("| x | 0 |")
    """)
    _script(scenarios, "bad.py", """
        import sys
        print("lost 3 requests")
        print("boom", file=sys.stderr)
        sys.exit(1)
    """)
    _script(scenarios, "slow.py", "import time\ntime.sleep(60)\n")  # sleep-ok: a hung child
    _script(scenarios, "_helper.py", "raise SystemExit('must not run')\n")
    assert [os.path.basename(p) for p in report.find_scenarios(str(scenarios))] == \
        ["bad.py", "good.py", "slow.py"]
    code = report.main(["--no-matrix", "--scenarios-dir", str(scenarios), "--out", str(out),
                        "--scenario-timeout", "3"])
    assert code == 1
    data = json.loads((out / "report.json").read_text())
    by_name = {s["name"]: s for s in data["scenarios"]}
    assert by_name["good"]["passed"] and by_name["good"]["json_valid"] is True
    assert json.loads((out / "scenario-good.json").read_text()) == {"clean": True}
    assert by_name["bad"]["exit_status"] == 1 and by_name["bad"]["json_valid"] is None
    assert by_name["slow"]["timed_out"] and by_name["slow"]["exit_status"] is None
    assert by_name["slow"]["runtime_s"] < 30
    assert data["failed_scenarios"] == ["bad", "slow"]
    md = (out / "report.md").read_text()
    assert "| x | 0 |" in md and "boom" in md and "timed out" in md


def test_empty_scenario_directory_passes(tmp_path):
    (tmp_path / "scenarios").mkdir()
    code = report.main(["--no-matrix", "--scenarios-dir", str(tmp_path / "scenarios"),
                        "--out", str(tmp_path / "results")])
    assert code == 0
    assert "No scenarios in" in (tmp_path / "results" / "report.md").read_text()
