"""A restart timeline as SVG, from plain data, with the standard library only.

``timeline_svg(title, panels)`` draws one panel per benchmark cell, stacked: a bar per 100 ms
bucket with the successful requests, the failed ones stacked on top in red (at least a few
pixels tall, so that a single failure is seen), and a dashed
vertical line at each restart; each panel has its own scales. Each panel is a dict::

    {"label": "fresh, /slow mix",          # panel heading
     "note": "124 requests, 0 failed",     # optional, right-aligned under the heading
     "series": [{"t": 0.0, "ok": 12, "errors": 0}, ...],   # t: bucket start, seconds
     "restarts": [0.8, 1.6]}               # seconds since the load began

(``series`` is the format of ``Stats.to_dict()["series"]``, ``restarts`` that of
``RunResult.to_dict()["restarted_at"]``.) Every bar is a ``rect`` of class ``ok`` or ``err``
and every restart marker a ``line`` of class ``restart``, so the result can be checked by
parsing it. Text is escaped, and characters XML 1.0 cannot carry are dropped.
"""

from __future__ import annotations

import math
import re
from typing import Dict, List, Optional, Sequence

BUCKET = 0.1  # seconds per bar

WIDTH = 900
LEFT, RIGHT = 64, 16
TOP = 72  # title, subtitle and legend
PANEL_HEIGHT = 150
PANEL_GAP = 34  # heading of the panel below, and the x tick labels
BOTTOM = 34  # x axis label

OK_COLOUR = "#4e79a7"
ERROR_COLOUR = "#d62728"
RESTART_COLOUR = "#333333"
MIN_ERROR_PX = 2.5

# Characters outside XML 1.0's Char production: C0 controls but tab/LF/CR, surrogates,
# U+FFFE and U+FFFF.
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: object) -> str:
    """``value`` as XML character data or attribute value: escaped, control characters
    dropped, and CR, LF and tab as references so a parser hands them back unchanged."""
    text = _NOT_XML.sub("", str(value))
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;").replace("\r", "&#13;")
            .replace("\n", "&#10;").replace("\t", "&#9;"))


def clean(value: object) -> str:
    """What a parser reads back from ``xml_text(value)``."""
    return _NOT_XML.sub("", str(value))


def _short(text: str, limit: int) -> str:
    text = " ".join(clean(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _nice_step(span: float, target: int) -> float:
    """A 1/2/5 x 10^n step that cuts ``span`` into about ``target`` intervals."""
    if span <= 0:
        return 1.0
    raw = span / max(1, target)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def timeline_svg(title: str, panels: Sequence[Dict], *, subtitle: str = "",
                 duration: Optional[float] = None) -> str:
    """The SVG document (a string) for ``panels`` under ``title``. Each panel's time axis spans
    at least ``duration`` seconds, and its last bucket and restart."""
    panels = list(panels)
    plot_w = WIDTH - LEFT - RIGHT
    height = TOP + len(panels) * (PANEL_HEIGHT + PANEL_GAP) + BOTTOM
    out: List[str] = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">',
        f"<title>{xml_text(title)}</title>",
    ]
    if subtitle:
        out.append(f"<desc>{xml_text(subtitle)}</desc>")
    out.append(f'<rect class="background" x="0" y="0" width="{WIDTH}" height="{height}" '
               'fill="#ffffff"/>')
    out.append(f'<text class="heading" x="{LEFT}" y="20" font-size="15" font-weight="bold">'
               f"{xml_text(_short(title, 105))}</text>")
    if subtitle:
        out.append(f'<text x="{LEFT}" y="37" fill="#555555">{xml_text(_short(subtitle, 140))}'
                   "</text>")
    # Legend, its own row under the title.
    lx, ly = LEFT, 56
    out.append(f'<g class="legend">'
               f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{OK_COLOUR}"/>'
               f'<text x="{lx + 14}" y="{ly}">ok requests per 100 ms</text>'
               f'<rect x="{lx + 150}" y="{ly - 9}" width="10" height="10" '
               f'fill="{ERROR_COLOUR}"/>'
               f'<text x="{lx + 164}" y="{ly}">failed requests per 100 ms</text>'
               f'<line x1="{lx + 320}" y1="{ly - 10}" x2="{lx + 320}" y2="{ly + 2}" '
               f'stroke="{RESTART_COLOUR}" stroke-width="1.2" stroke-dasharray="4,3"/>'
               f'<text x="{lx + 326}" y="{ly}">restart signalled (R1, R2, ...)</text></g>')

    for index, panel in enumerate(panels):
        # Each panel has its own time axis, so one slow cell does not squash the others.
        end = max([float(p["t"]) + BUCKET for p in panel.get("series", ())]
                  + [float(t) for t in panel.get("restarts", ())] + [duration or 0.0, BUCKET])
        x_step = _nice_step(end, 10)

        def x(t: float, end: float = end) -> float:
            return LEFT + plot_w * max(0.0, t) / end

        top = TOP + PANEL_GAP - 14 + index * (PANEL_HEIGHT + PANEL_GAP)
        bottom = top + PANEL_HEIGHT
        series = [(float(p["t"]), int(p["ok"]), int(p["errors"]))
                  for p in panel.get("series", ())]
        peak = max([ok + err for _, ok, err in series] + [1])
        y_step = _nice_step(peak, 4)
        y_max = math.ceil(peak / y_step) * y_step

        def y(v: float, bottom: float = bottom, y_max: float = y_max) -> float:
            return bottom - PANEL_HEIGHT * v / y_max

        out.append(f'<g class="panel" data-index="{index}">')
        out.append(f'<text class="label" x="{LEFT}" y="{top - 5}" font-weight="bold">'
                   f'{xml_text(_short(panel.get("label", ""), 70))}</text>')
        if panel.get("note"):
            out.append(f'<text class="note" x="{WIDTH - RIGHT}" y="{top - 5}" '
                       f'text-anchor="end" fill="#555555">'
                       f'{xml_text(_short(panel["note"], 100))}</text>')
        # Grid and y axis.
        for step in range(int(round(y_max / y_step)) + 1):
            value = step * y_step
            out.append(f'<line x1="{LEFT}" y1="{_num(y(value))}" x2="{WIDTH - RIGHT}" '
                       f'y2="{_num(y(value))}" stroke="#e5e5e5"/>')
            out.append(f'<text x="{LEFT - 6}" y="{_num(y(value) + 4)}" text-anchor="end">'
                       f"{_num(value)}</text>")
        label_y = (top + bottom) / 2
        out.append(f'<text class="axis-label" x="16" y="{_num(label_y)}" text-anchor="middle" '
                   f'transform="rotate(-90 16 {_num(label_y)})">requests / 100 ms</text>')
        # Bars.
        bar_w = max(0.5, plot_w * BUCKET / end - 1)
        for t, ok, err in series:
            if ok:
                out.append(f'<rect class="ok" x="{_num(x(t))}" y="{_num(y(ok))}" '
                           f'width="{_num(bar_w)}" height="{_num(bottom - y(ok))}" '
                           f'fill="{OK_COLOUR}"><title>{_num(t)} s: {ok} ok</title></rect>')
            if err:  # at least MIN_ERROR_PX tall: one failure among hundreds still shows
                err_h = max(MIN_ERROR_PX, y(ok) - y(ok + err))
                out.append(f'<rect class="err" x="{_num(x(t))}" y="{_num(y(ok) - err_h)}" '
                           f'width="{_num(bar_w)}" height="{_num(err_h)}" '
                           f'fill="{ERROR_COLOUR}"><title>{_num(t)} s: {err} failed</title>'
                           "</rect>")
        # Restart markers.
        for number, t in enumerate(panel.get("restarts", ()), 1):
            xt = _num(x(float(t)))
            out.append(f'<line class="restart" x1="{xt}" y1="{top}" x2="{xt}" y2="{bottom}" '
                       f'stroke="{RESTART_COLOUR}" stroke-width="1.2" stroke-dasharray="4,3">'
                       f"<title>restart {number} at {float(t):.3f} s</title></line>")
            out.append(f'<text x="{xt}" y="{top + 10}" dx="3" font-size="9" '
                       f'fill="{RESTART_COLOUR}">R{number}</text>')
        # X axis.
        out.append(f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" '
                   'stroke="#000000"/>')
        out.append(f'<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="#000000"/>')
        for step in range(int(end / x_step + 1e-9) + 1):
            tick = step * x_step
            xt = _num(x(tick))
            out.append(f'<line x1="{xt}" y1="{bottom}" x2="{xt}" y2="{bottom + 4}" '
                       'stroke="#000000"/>')
            out.append(f'<text x="{xt}" y="{bottom + 15}" text-anchor="middle">'
                       f"{_num(tick)}</text>")
        out.append("</g>")
    out.append(f'<text class="axis-label" x="{LEFT + plot_w / 2:.0f}" y="{height - 8}" '
               'text-anchor="middle">seconds since the load began</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
