"""How graceful's HTTP/1.1 request parser, h11 and httptools read the same requests.

    PYTHONPATH=. python benchmarks/conformance.py          # every parser that is importable
    PYTHONPATH=. python benchmarks/conformance.py --quiet  # only the counts

The cases are tests/http_corpus/*.json (described in tests/test_http_corpus.py): raw request
bytes, the outcome RFC 9112/9110 decide, and the section that decides it. Each parser reads
each case whole. Its outcome is "refused" (with the status, when the parser gives one),
"waits" (no verdict on these bytes: it wants more), or the complete requests it made, compared
on the fields the case names that the parser reports. Every outcome that differs from the
corpus is printed with the section that decides it. h11 and httptools are not dependencies;
one that is not importable is reported as such. Exit status 1 when graceful itself differs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
CORPUS = os.path.join(ROOT, "tests", "http_corpus")


class Outcome:
    """What one parser made of one case."""

    def __init__(self, requests: List[Dict[str, Any]], refused: bool = False,
                 status: Optional[int] = None, detail: str = "", waits: bool = False) -> None:
        self.requests = requests
        self.refused = refused
        self.status = status
        self.detail = detail
        self.waits = waits

    def __str__(self) -> str:
        if self.refused:
            status = f" {self.status}" if self.status else ""
            return f"refused{status} ({self.detail[:70]})"
        made = f"{len(self.requests)} request(s)"
        return made + (", then waits for more" if self.waits else "")


def _text(data: bytes) -> str:
    return data.decode("latin-1")


# -- the parsers ----------------------------------------------------------------------------------

def graceful_outcome(data: bytes) -> Outcome:
    from graceful.http11 import NEED_DATA, Body, EndOfMessage, HTTPError, Request, RequestParser

    parser = RequestParser()
    parser.feed(data)
    done: List[Dict[str, Any]] = []
    current: Dict[str, Any] = {}
    try:
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                return Outcome(done, waits=parser.buffered > 0 or parser.request is not None)
            if isinstance(event, Request):
                current = {"method": _text(event.method), "target": _text(event.target),
                           "version": event.version.decode(), "keep_alive": event.keep_alive,
                           "body": ""}
            elif isinstance(event, Body):
                current["body"] += _text(event.data)
            elif isinstance(event, EndOfMessage):
                current["trailers"] = [[_text(n), _text(v)] for n, v in event.trailers]
                done.append(current)
                parser.start_next()
    except HTTPError as exc:
        return Outcome(done, refused=True, status=exc.status, detail=exc.detail)


def h11_outcome(data: bytes) -> Outcome:
    import h11

    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    done: List[Dict[str, Any]] = []
    current: Dict[str, Any] = {}
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return Outcome(done, refused=True, status=exc.error_status_hint, detail=str(exc))
        if event is h11.NEED_DATA:
            return Outcome(done, waits=bool(conn.trailing_data[0]) or bool(current))
        if isinstance(event, h11.Request):
            current = {"method": _text(event.method), "target": _text(event.target),
                       "version": event.http_version.decode(), "body": ""}
        elif isinstance(event, h11.Data):
            current["body"] += _text(event.data)
        elif isinstance(event, h11.EndOfMessage):
            current["trailers"] = [[_text(n), _text(v)] for n, v in event.headers]
            done.append(current)
            current = {}
            try:  # answer, so that h11 reads the next request on the connection
                conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return Outcome(done)  # the connection closes after this request
        else:
            return Outcome(done)


def httptools_outcome(data: bytes) -> Outcome:
    import httptools

    done: List[Dict[str, Any]] = []

    class Protocol:
        current: Dict[str, Any] = {}

        def on_message_begin(self) -> None:
            self.current = {"target": "", "body": ""}

        def on_url(self, url: bytes) -> None:
            self.current["target"] += _text(url)

        def on_headers_complete(self) -> None:
            self.current["method"] = _text(parser.get_method())
            self.current["version"] = parser.get_http_version()
            self.current["keep_alive"] = parser.should_keep_alive()

        def on_body(self, body: bytes) -> None:
            self.current["body"] += _text(body)

        def on_message_complete(self) -> None:
            done.append(self.current)
            self.current = {}

    protocol = Protocol()
    parser = httptools.HttpRequestParser(protocol)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return Outcome(done, detail="upgrade")  # CONNECT or Upgrade: the rest is not HTTP
    except httptools.HttpParserError as exc:
        return Outcome(done, refused=True, detail=f"{type(exc).__name__}: {exc}")
    return Outcome(done, waits=bool(protocol.current))


PARSERS: List[Tuple[str, str, Callable[[bytes], Outcome]]] = [
    ("graceful", "graceful.http11", graceful_outcome),
    ("h11", "h11", h11_outcome),
    ("httptools", "httptools", httptools_outcome),
]


# -- comparing ------------------------------------------------------------------------------------

def load_cases() -> List[Dict[str, Any]]:
    cases = []
    for path in sorted(glob.glob(os.path.join(CORPUS, "*.json"))):
        with open(path, encoding="utf-8") as f:
            case = json.load(f)
        case["name"] = os.path.basename(path)[:-5]
        case["bytes"] = case["request"].encode("latin-1")
        cases.append(case)
    return cases


def difference(case: Dict[str, Any], outcome: Outcome) -> Optional[str]:
    """How ``outcome`` differs from what the case expects, or None."""
    expect = case["expect"]
    if "status" in expect:
        if not outcome.refused:
            return f"expected {expect['status']}, got {outcome}"
        if outcome.status is not None and outcome.status != expect["status"]:
            return f"expected {expect['status']}, got {outcome}"
        return None
    wanted_requests = expect["requests"]
    if outcome.refused or len(outcome.requests) != len(wanted_requests):
        return f"expected {len(wanted_requests)} request(s), got {outcome}"
    for index, (wanted, got) in enumerate(zip(wanted_requests, outcome.requests)):
        for name, value in wanted.items():
            if name in got and got[name] != value:
                return f"request {index + 1}: {name} {got[name]!r}, expected {value!r}"
    return None


def version_of(module_name: str) -> str:
    module = sys.modules.get(module_name.split(".")[0])
    return getattr(module, "__version__", "")


def main(argv: Optional[List[str]] = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--quiet", action="store_true", help="print only the counts")
    options = args.parse_args(argv)
    cases = load_cases()
    graceful_differs = False
    for name, module_name, outcome_of in PARSERS:
        try:
            __import__(module_name)
        except ImportError:
            print(f"{name}: not installed\n")
            continue
        differences = []
        for case in cases:
            found = difference(case, outcome_of(case["bytes"]))
            if found is not None:
                differences.append((case, found))
        label = f"{name} {version_of(module_name)}".strip()
        print(f"{label}: {len(differences)} of {len(cases)} cases differ from the RFCs' outcome")
        if not options.quiet:
            for case, found in differences:
                print(f"  {case['name']:<38} {case['rfc']}\n  {'':<38} {found}")
        print()
        graceful_differs |= name == "graceful" and bool(differences)
    return 1 if graceful_differs else 0


if __name__ == "__main__":
    sys.exit(main())
