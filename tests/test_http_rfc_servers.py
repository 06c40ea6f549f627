"""RFC 9112/9110 rules of the parser as clients see them, over real sockets, for both servers:
impossible heads refused at once, Date on refusals, Connection: close in HTTP/1.0, the
absolute-form authority as the request's host, HTTP/1.2 served as 1.1."""

from __future__ import annotations

import email.utils
import json

import pytest

from _serve import Client, Served

# The WSGI side needs HTTP_HOST, which the shared test app does not show: a small app of ours.
WSGI_HOST_APP = '''
import json

def app(environ, start_response):
    body = json.dumps({"host": environ.get("HTTP_HOST"),
                       "protocol": environ["SERVER_PROTOCOL"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


@pytest.fixture(params=["wsgi", "asgi"])
def served(request, procs, tmp_path):
    if request.param == "wsgi":
        app_file = tmp_path / "host_app.py"
        app_file.write_text(WSGI_HOST_APP)
        app = f"{app_file}:app"
    else:
        app = "asgi_app.py:app"
    # A header timeout far beyond the client's read timeout: a refusal that waited for it
    # (the old behaviour, 408) would fail the test instead of passing late.
    served = Served(procs, tmp_path, app, "--header-timeout", "120")
    served.interface = request.param
    return served


def _seen(served, response) -> dict:
    """The host and protocol the application saw, from either app's JSON."""
    data = json.loads(response.body)
    if served.interface == "wsgi":
        return data
    hosts = [value for name, value in data["headers"] if name == "host"]
    assert len(hosts) == 1, data["headers"]
    return {"host": hosts[0], "protocol": "HTTP/" + data["http_version"]}


@pytest.mark.parametrize("head", [
    b"GET /scope HTTP/1.1\nHost: t\n",            # bare LF, and the head never ends
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03",  # a TLS ClientHello on the plain port
])
def test_impossible_head_is_refused_at_once_with_a_date(served, head):
    client = Client(served.connect(timeout=20))
    client.send(head)
    r = client.response()
    assert (r.status, r.headers["connection"]) == (400, "close")
    email.utils.parsedate_to_datetime(r.headers["date"])  # RFC 9110 6.6.1, on errors too
    assert client.closed_by_server()


def test_connection_close_wins_in_http_1_0(served):
    client = Client(served.connect())
    client.send(b"GET /scope HTTP/1.0\r\nHost: t\r\nConnection: keep-alive, close\r\n\r\n")
    r = client.response()
    assert r.status == 200 and r.headers.get("connection") == "close"
    assert client.closed_by_server()


def test_absolute_form_authority_is_the_host_the_app_sees(served):
    client = Client(served.connect())
    client.send(b"GET http://target.example:81/scope HTTP/1.1\r\nHost: other.example\r\n\r\n")
    r = client.response()
    assert r.status == 200
    assert _seen(served, r)["host"] == "target.example:81"
    client.send(b"GET /scope HTTP/1.2\r\nHost: t\r\n\r\n")  # same connection: kept alive
    r = client.response()
    assert r.status == 200 and "connection" not in r.headers
    assert _seen(served, r) == {"host": "t", "protocol": "HTTP/1.1"}
