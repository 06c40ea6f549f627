"""Faults of the built-in HTTP servers met in the field: concurrent receive(), empty files,
slow readers, unread request bodies, scope details, file descriptor exhaustion."""

from __future__ import annotations

import json
import os
import re

import pytest

from _serve import Client, Served
from _support import wait_established, wait_for

BOTH = pytest.mark.parametrize("app", ["wsgi_app.py:app", "asgi_app.py:app"])


def test_asgi_every_pending_receive_gets_the_disconnect(procs, tmp_path):
    events = tmp_path / "events"
    env = dict(os.environ, ASGI_APP_EVENTS=str(events))
    served = Served(procs, tmp_path, "asgi_app.py:app", env=env)
    client = Client(served.connect())
    client.send(b"GET /two-receivers HTTP/1.1\r\nHost: t\r\n\r\n")
    assert client._take_line().startswith(b"HTTP/1.1 200")  # streaming, both receive() pending
    client.sock.close()
    line = wait_for(lambda: events.exists() and re.search(r"receivers .*", events.read_text()),
                    20, what="the stream to end").group()
    assert line.split()[1:] == ["http.disconnect", "http.disconnect"]


def test_asgi_path_is_decoded_with_replacement_and_asgi_dict_is_per_request(procs, tmp_path):
    served = Served(procs, tmp_path, "asgi_app.py:app")
    client = Client(served.connect())
    scope = json.loads(client.request("GET", "/scope").body)
    assert scope["asgi_was_changed"] is False
    scope = json.loads(client.request("GET", "/scope/%c0/caf%C3%A9?x=%c0").body)
    assert scope["path"] == "/scope/\ufffd/caf\u00e9"
    assert scope["raw_path"] == "/scope/%c0/caf%C3%A9"
    assert scope["query_string"] == "x=%c0"
    assert scope["asgi_was_changed"] is False  # the previous request changed its own copy


@pytest.mark.parametrize("app", ["wsgi_app.py:app", "wsgi_app.py:raw_app"])
def test_wsgi_empty_file_response_keeps_the_connection(procs, tmp_path, app):
    served = Served(procs, tmp_path, app)
    client = Client(served.connect())
    for _ in range(2):
        r = client.request("GET", "/empty-file")
        assert (r.status, r.body, r.headers["content-length"]) == (200, b"", "0")
        assert "connection" not in r.headers
    assert client.request("GET", "/hello").status == 200  # the same connection
    assert "Traceback" not in served.log(), served.log()
