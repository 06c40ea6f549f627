"""A WSGI app for the proxy and TLS tests: /info answers what the server told it, as JSON."""

import json
import os

_KEYS = ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME",
         "SERVER_PORT", "SCRIPT_NAME", "PATH_INFO", "HTTP_X_FORWARDED_FOR", "HTTPS",
         "SSL_CLIENT_VERIFY", "SSL_CLIENT_S_DN", "SSL_PROTOCOL")


def app(environ, start_response):
    if environ["PATH_INFO"] == "/stream":  # no Content-Length: to HTTP/1.0, the close ends it
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"part %d\n" % i for i in range(3))
    if environ["PATH_INFO"].endswith("/info"):
        body = json.dumps({key: environ.get(key) for key in _KEYS}).encode()
        kind = "application/json"
    else:
        body = b"ok\n"
        kind = "text/plain"
    start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(len(body))),
                              ("X-Pid", str(os.getpid()))])
    return [body]
