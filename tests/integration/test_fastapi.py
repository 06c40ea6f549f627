"""A FastAPI app under `graceful serve` (ASGI), driven by httpx, aiohttp, requests, curl and h11."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os

import aiohttp
import httpx
import requests

from _harness import StrictRequest, app_fixtures, curl, strict_exchange

APP = "fastapi_app.py:app"


server, server_in_each_mode = app_fixtures(APP)


def test_every_route_is_framed_strictly_on_one_keepalive_connection(server_in_each_mode,
                                                                     data_file):
    server = server_in_each_mode
    data = data_file.read_bytes()
    requests_ = [
        StrictRequest("GET", "/"),
        StrictRequest("GET", "/items/3?q=x"),
        StrictRequest("GET", "/items/not-a-number"),
        StrictRequest("POST", "/items", [("Content-Type", "application/json")],
                      b'{"name": "", "price": -1}'),
        StrictRequest("POST", "/items", [("Content-Type", "application/json")], b"{not json"),
        StrictRequest("GET", "/stream?count=30"),
        StrictRequest("GET", "/events?count=3"),
        StrictRequest("GET", "/file"),
        StrictRequest("GET", "/file", [("Range", "bytes=-10")]),
        StrictRequest("HEAD", "/file"),
        StrictRequest("GET", "/big", [("Accept-Encoding", "gzip")]),
        StrictRequest("GET", "/go"),
        StrictRequest("GET", "/boom"),
        StrictRequest("GET", "/missing"),
        StrictRequest("PUT", "/items"),
    ]
    responses = strict_exchange(server.port, requests_)
    assert [r.status for r in responses] == [200, 200, 422, 422, 422, 200, 200, 200, 206, 200,
                                             200, 303, 500, 404, 405]
    assert json.loads(responses[1].body) == {"item_id": 3, "q": "x"}
    assert {e["loc"][-1] for e in json.loads(responses[3].body)["detail"]} == {"name", "price"}
    assert responses[5].body == b"".join(b"line %d\n" % i for i in range(30))
    assert responses[7].body == data
    assert responses[8].body == data[-10:]
    assert responses[9].header("content-length") == str(len(data))
    assert responses[10].header("content-encoding") == "gzip"
    assert gzip.decompress(responses[10].body) == b"z" * 100000


def test_httpx_json_validation_sse_gzip_and_url_for(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        created = client.post("/items", json={"name": "pen", "price": 1.5, "tags": ["a"]})
        assert created.status_code == 200
        assert created.json() == {"created": {"name": "pen", "price": 1.5, "tags": ["a"]}}
        invalid = client.post("/items", json={"name": "pen"})
        assert invalid.status_code == 422
        assert invalid.json()["detail"][0]["loc"] == ["body", "price"]

        with client.stream("GET", "/events", params={"count": 20}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[len("data: "):]) for line in response.iter_lines()
                      if line.startswith("data: ")]
        assert events == [{"n": i} for i in range(20)]

        big = client.get("/big", params={"size": 500000})  # httpx asks for gzip and decodes
        assert big.headers["content-encoding"] == "gzip" and big.text == "z" * 500000
        small = client.get("/big", params={"size": 10})
        assert "content-encoding" not in small.headers and small.text == "z" * 10

        where = client.get("/where").json()
        assert where["url_for"] == f"{server.url}/items/1"
        assert where["url"] == f"{server.url}/where" and where["client"] == "127.0.0.1"
        followed = client.get("/go", follow_redirects=True)
        assert followed.json() == {"item_id": 7, "q": "redirected"}
        assert [r.status_code for r in followed.history] == [303]


def test_multipart_upload_of_several_megabytes_with_requests_and_curl(server, tmp_path):
    first, second = os.urandom(4 * 1024 * 1024), os.urandom(3 * 1024 * 1024 + 17)
    got = requests.post(f"{server.url}/upload", data={"note": "two files"},
                        files=[("files", ("one.bin", first)), ("files", ("two.bin", second))],
                        timeout=120)
    assert got.status_code == 200, got.text[:300]
    assert got.json() == {"note": "two files", "files": [
        {"filename": "one.bin", "size": len(first), "sha256": hashlib.sha256(first).hexdigest()},
        {"filename": "two.bin", "size": len(second), "sha256": hashlib.sha256(second).hexdigest()},
    ]}

    path = tmp_path / "upload.bin"
    path.write_bytes(second)
    got = curl("-F", f"files=@{path}", "-F", "note=curl", f"{server.url}/upload")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["files"][0]["sha256"] == hashlib.sha256(second).hexdigest()


def test_file_ranges_with_curl(server, data_file):
    data = data_file.read_bytes()
    got = curl("--range", "1000-1999", "--include", f"{server.url}/file")
    assert got.returncode == 0, got.stderr
    head, _, body = got.stdout.partition(b"\r\n\r\n")
    assert b" 206 " in head.split(b"\r\n")[0] and body == data[1000:2000]
    got = curl("--range", "299990-", f"{server.url}/file")
    assert got.stdout == data[299990:]


def test_background_tasks_and_lifespan_state(server, markers):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/later", params={"word": "after"}).json() == {"scheduled": "after"}
        state = client.get("/state").json()
    assert state["greeting"] == "state from lifespan"
    assert state["started_by"] == state["pid"]  # each process ran its own lifespan
    background = markers / "background"
    server.wait(lambda: background.exists() and "after" in background.read_text(),
                what="the background task")
    server.quit()
    events = (markers / "lifespan").read_text().split("\n")
    started = [line.split()[0] for line in events if line.endswith("startup")]
    stopped = [line.split()[0] for line in events if line.endswith("shutdown")]
    assert started and sorted(started) == sorted(stopped)  # every startup got its shutdown


def test_aiohttp_concurrent_clients(server):
    async def run():
        async with aiohttp.ClientSession(base_url=server.url) as session:
            async def one(i: int):
                async with session.get(f"/items/{i}", params={"q": str(i)}) as response:
                    return response.status, await response.json()

            async def stream():
                async with session.get("/stream", params={"count": 500}) as response:
                    return await response.read()

            results = await asyncio.gather(*(one(i) for i in range(60)), stream(), stream())
        return results

    results = asyncio.run(asyncio.wait_for(run(), 120))
    assert results[:60] == [(200, {"item_id": i, "q": str(i)}) for i in range(60)]
    expected = b"".join(b"line %d\n" % i for i in range(500))
    assert results[60] == results[61] == expected
