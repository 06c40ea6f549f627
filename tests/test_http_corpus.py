"""The parser against a corpus written from RFC 9112/9110 as data (tests/http_corpus/).

One JSON file per case: ``request`` holds the raw bytes as a string (each character one byte,
latin-1), ``expect`` either ``{"status": N}`` (the parser refuses with N once those bytes are
in, even when they do not complete a request: refusals must not wait for more) or
``{"requests": [...]}`` (the complete requests those bytes make, each listing only the fields
the case is about). ``rfc`` names the section that decides it; benchmarks/conformance.py
compares other parsers on the same files.
"""

from __future__ import annotations

import glob
import json
import os

import pytest

from graceful.http11 import NEED_DATA, Body, EndOfMessage, HTTPError, Request, RequestParser

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "http_corpus")
CASE_FILES = sorted(glob.glob(os.path.join(CORPUS, "*.json")))
# The rules of issue 12 and the smuggling shapes: each must have cases in the corpus.
REQUIRED_TAGS = {"item-7", "item-8", "item-10", "item-11", "item-12", "item-13", "item-14",
                 "smuggling", "framing", "chunked", "fields", "line-ends", "host", "target",
                 "version", "request-line", "keep-alive", "expect", "pipelining"}
REQUEST_FIELDS = {"method", "target", "path", "query", "version", "host", "keep_alive",
                  "expect_continue", "chunked", "headers", "body", "trailers"}


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        case = json.load(f)
    case["bytes"] = case["request"].encode("latin-1")
    return case


def run(data: bytes, piece: int) -> list:
    """Feed ``data`` in pieces of ``piece`` bytes; the complete requests, as dicts of text."""
    parser = RequestParser()
    done = []
    current: dict = {}
    for start in range(0, len(data), piece):
        parser.feed(data[start:start + piece])
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Request):
                current = _fields(event)
            elif isinstance(event, Body):
                current["body"] += event.data.decode("latin-1")
            elif isinstance(event, EndOfMessage):
                current["trailers"] = _text_pairs(event.trailers)
                done.append(current)
                parser.start_next()
    return done


def _fields(request: Request) -> dict:
    return {
        "method": request.method.decode("latin-1"), "target": request.target.decode("latin-1"),
        "path": request.path.decode("latin-1"), "query": request.query.decode("latin-1"),
        "version": request.version.decode(), "keep_alive": request.keep_alive,
        "host": None if request.host is None else request.host.decode("latin-1"),
        "expect_continue": request.expect_continue, "chunked": request.chunked,
        "headers": _text_pairs(request.headers), "body": "",
    }


def _text_pairs(pairs) -> list:
    return [[name.decode("latin-1"), value.decode("latin-1")] for name, value in pairs]


def test_the_corpus_covers_every_rule():
    cases = [load(path) for path in CASE_FILES]
    assert len(cases) >= 100
    seen = set().union(*(case["tags"] for case in cases))
    assert REQUIRED_TAGS <= seen, REQUIRED_TAGS - seen
    for case in cases:
        assert case["rfc"].startswith("RFC "), case
        for wanted in case["expect"].get("requests", []):
            assert set(wanted) <= REQUEST_FIELDS, wanted


@pytest.mark.parametrize("piece", [1 << 30, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: os.path.basename(p)[:-5])
def test_corpus_case(path, piece):
    case = load(path)
    expect = case["expect"]
    if "status" in expect:
        with pytest.raises(HTTPError) as info:
            run(case["bytes"], piece)
        assert info.value.status == expect["status"], (case["rfc"], info.value)
        return
    got = run(case["bytes"], piece)
    assert len(got) == len(expect["requests"]), (case["rfc"], got)
    for wanted, request in zip(expect["requests"], got):
        assert {name: request[name] for name in wanted} == wanted, case["rfc"]
