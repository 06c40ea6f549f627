"""An ASGI app for the proxy and TLS tests: /info answers what the server told it, as JSON,
under the WSGI names of tests/apps/edge_wsgi.py so one test reads both."""

import json
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"].endswith("/info"):
        client = scope.get("client")
        server = scope.get("server")
        headers = dict(scope["headers"])
        tls = (scope.get("extensions") or {}).get("tls")
        info = {"REMOTE_ADDR": client[0] if client else "",
                "REMOTE_PORT": str(client[1]) if client and client[1] else None,
                "wsgi.url_scheme": scope["scheme"],
                "HTTP_HOST": headers.get(b"host", b"").decode() or None,
                "SERVER_NAME": server[0] if server else None,
                "SERVER_PORT": str(server[1]) if server and server[1] else "",
                "SCRIPT_NAME": scope["root_path"],
                "PATH_INFO": scope["path"],
                "HTTP_X_FORWARDED_FOR": (headers.get(b"x-forwarded-for") or b"").decode() or None,
                "HTTPS": "on" if tls is not None else None,
                "SSL_CLIENT_S_DN": tls["client_cert_name"] if tls else None}
        body = json.dumps(info).encode()
        kind = b"application/json"
    else:
        body = b"ok\n"
        kind = b"text/plain"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", b"%d" % len(body)),
                            (b"x-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": body})
