"""ASGI app that sends the same response headers in the shapes the spec allows: tuples, lists,
bytearray values, with framing and hop-by-hop fields the server must act on or drop every time;
/bad sends a value with a CR after the good ones were seen."""

FIELDS = [(b"x-tuple", b"1"), (b"content-type", b"text/plain"), (b"content-length", b"3"),
          (b"transfer-encoding", b"chunked"), (b"connection", b"keep-alive")]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = list(FIELDS) + [[b"x-list", b"2"], (b"x-bytearray", bytearray(b"3"))]
    if scope["path"] == "/bad":
        headers.append((b"x-evil", b"a\rb"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok\n"})
