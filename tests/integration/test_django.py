"""A Django project (settings in code, no database) under `graceful serve` (WSGI), driven by
requests, httpx, curl and h11."""

from __future__ import annotations

import hashlib
import json
import os

import httpx
import requests

from _harness import StrictRequest, app_fixtures, curl, strict_exchange

APP = "django_app.py:application"


server, server_in_each_mode = app_fixtures(APP)


def test_every_route_is_framed_strictly_on_one_keepalive_connection(server_in_each_mode,
                                                                     data_file):
    server = server_in_each_mode
    requests_ = [
        StrictRequest("GET", "/"),
        StrictRequest("GET", "/info/?a=1&b=caf%C3%A9", [("X-Test", "yes")]),
        StrictRequest("GET", "/info"),  # APPEND_SLASH: a permanent redirect
        StrictRequest("POST", "/form", [("Content-Type", "application/x-www-form-urlencoded")],
                      b"k=v&name=two+words"),
        StrictRequest("GET", "/stream?count=40"),
        StrictRequest("GET", "/file"),
        StrictRequest("HEAD", "/"),
        StrictRequest("GET", "/go"),
        StrictRequest("GET", "/boom"),
        StrictRequest("GET", "/missing"),
        StrictRequest("POST", "/echo", [("Content-Type", "application/octet-stream")],
                      b"d" * 150_000),
    ]
    responses = strict_exchange(server.port, requests_)
    assert [r.status for r in responses] == [200, 200, 301, 200, 200, 200, 200, 302, 500, 404, 200]
    info = json.loads(responses[1].body)
    assert info["query"] == {"a": "1", "b": "caf\u00e9"} and info["header"] == "yes"
    assert info["host"] == "127.0.0.1" and info["secure"] is False
    assert responses[2].header("location") == "/info/"
    assert json.loads(responses[3].body)["fields"] == {"k": "v", "name": "two words"}
    assert responses[4].body == b"".join(b"line %d\n" % i for i in range(40))
    assert responses[5].body == data_file.read_bytes()
    assert responses[7].header("location") == "/info/?source=redirect"
    assert responses[10].body == b"d" * 150_000


def test_requests_multipart_upload_and_redirects(server):
    upload = os.urandom(5 * 1024 * 1024)
    with requests.Session() as session:
        got = session.post(f"{server.url}/upload", files={"file": ("big.bin", upload)}, timeout=120)
        assert got.status_code == 200, got.text[:300]
        assert got.json() == {"size": len(upload), "sha256": hashlib.sha256(upload).hexdigest()}

        got = session.post(f"{server.url}/form", data={"x": "1"},
                           files={"a": ("a.txt", b"aaa"), "b": ("b.txt", b"bbbb")}, timeout=60)
        assert got.json() == {"fields": {"x": "1"}, "files": {"a": {"name": "a.txt", "size": 3},
                                                              "b": {"name": "b.txt", "size": 4}}}

        got = session.get(f"{server.url}/go", timeout=60)
        assert [r.status_code for r in got.history] == [302]
        assert got.json()["query"] == {"source": "redirect"}


def test_httpx_streams_and_curl_http10(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("GET", "/stream", params={"count": 1000}) as response:
            assert response.status_code == 200
            assert list(response.iter_lines()) == [f"line {i}" for i in range(1000)]
        assert client.get("/info/", headers={"X-Test": "h"}).json()["header"] == "h"

    got = curl("--http1.0", "--include", f"{server.url}/stream?count=2")
    assert got.returncode == 0, got.stderr
    head, _, body = got.stdout.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0] and b"chunked" not in head.lower()
    assert body == b"line 0\nline 1\n"
