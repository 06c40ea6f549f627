"""A Flask app under `graceful serve` (WSGI), driven by requests, httpx, curl and h11."""

from __future__ import annotations

import hashlib
import json
import os

import httpx
import requests

from _harness import StrictRequest, app_fixtures, curl, strict_exchange

APP = "flask_app.py:app"


server, server_in_each_mode = app_fixtures(APP)


def test_every_route_is_framed_strictly_on_one_keepalive_connection(server_in_each_mode,
                                                                     data_file):
    server = server_in_each_mode
    requests_ = [
        StrictRequest("GET", "/"),
        StrictRequest("GET", "/json"),
        StrictRequest("POST", "/json?x=1", [("Content-Type", "application/json")],
                      b'{"a": [1, 2]}'),
        StrictRequest("GET", "/stream?count=50"),
        StrictRequest("GET", "/file"),
        StrictRequest("HEAD", "/file"),
        StrictRequest("GET", "/file", [("Range", "bytes=10-19")]),
        StrictRequest("GET", "/go"),
        StrictRequest("GET", "/abort"),
        StrictRequest("GET", "/boom"),
        StrictRequest("GET", "/missing"),
        StrictRequest("DELETE", "/json"),
        StrictRequest("POST", "/echo", [("Content-Type", "application/octet-stream")],
                      b"e" * 200_000),
        StrictRequest("GET", "/cookie"),
    ]
    responses = strict_exchange(server.port, requests_)
    assert [r.status for r in responses] == [200, 200, 200, 200, 200, 200, 206, 302, 418, 500,
                                             404, 405, 200, 200]
    data = data_file.read_bytes()
    assert json.loads(responses[2].body) == {"received": {"a": [1, 2]}, "args": {"x": "1"}}
    assert responses[3].body == b"".join(b"line %d\n" % i for i in range(50))
    assert responses[4].body == data
    assert responses[5].header("content-length") == str(len(data))
    assert responses[6].body == data[10:20]
    assert responses[6].header("content-range") == f"bytes 10-19/{len(data)}"
    assert responses[7].header("location").endswith("/json?source=redirect")
    assert responses[12].body == b"e" * 200_000
    assert all(r.header("x-pid") for r in responses)


def test_requests_json_forms_cookies_redirects_and_a_large_upload(server, tmp_path):
    upload = os.urandom(6 * 1024 * 1024)
    with requests.Session() as session:
        got = session.post(f"{server.url}/json", json={"name": "caf\u00e9"}, timeout=60)
        assert got.status_code == 200 and got.json()["received"] == {"name": "caf\u00e9"}
        assert session.get(f"{server.url}/json", timeout=60).json()["unicode"] == "caf\u00e9 \u2603"

        got = session.post(f"{server.url}/form", data={"a": "1", "b": "two words"},
                           files={"doc": ("doc.txt", b"contents", "text/plain")}, timeout=60)
        assert got.json() == {"fields": {"a": "1", "b": "two words"},
                              "files": {"doc": {"filename": "doc.txt", "size": 8}}}

        got = session.post(f"{server.url}/upload", files={"file": ("big.bin", upload)}, timeout=120)
        assert got.json() == {"size": len(upload), "sha256": hashlib.sha256(upload).hexdigest()}

        assert session.get(f"{server.url}/cookie", timeout=60).json() == {"seen": None}
        assert session.get(f"{server.url}/cookie", timeout=60).json() == {"seen": "oatmeal"}

        got = session.get(f"{server.url}/go", timeout=60)
        assert got.status_code == 200 and [r.status_code for r in got.history] == [302]
        assert got.json()["framework"] == "flask"

        assert session.get(f"{server.url}/boom", timeout=60).status_code == 500


def test_httpx_streams_a_response_and_a_chunked_request_body(server):
    def body():
        for i in range(100):
            yield b"%05d" % i * 1000

    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("GET", "/stream", params={"count": 2000}) as response:
            assert response.status_code == 200
            assert response.headers.get("transfer-encoding") == "chunked"
            lines = list(response.iter_lines())
        assert lines == [f"line {i}" for i in range(2000)]

        echoed = client.post("/echo", content=body())  # a generator: sent chunked
        assert echoed.status_code == 200
        assert echoed.content == b"".join(body())


def test_curl_ranges_uploads_and_http10(server, data_file, tmp_path):
    data = data_file.read_bytes()
    got = curl("--range", "100-199", f"{server.url}/file")
    assert got.returncode == 0, got.stderr
    assert got.stdout == data[100:200]

    got = curl("--data-binary", f"@{data_file}", "-H", "Content-Type: application/octet-stream",
               f"{server.url}/echo")
    assert got.returncode == 0, got.stderr
    assert got.stdout == data

    got = curl("--http1.0", "--include", f"{server.url}/stream?count=3")
    assert got.returncode == 0, got.stderr
    head, _, body = got.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
    assert b"chunked" not in head.lower()  # an HTTP/1.0 client cannot read chunked framing
    assert body == b"line 0\nline 1\nline 2\n"
