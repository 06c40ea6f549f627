"""A plain WSGI application, no framework, served by graceful's own HTTP/1.1 server.

Run it:    graceful serve examples/wsgi_app.py:app --bind web=127.0.0.1:8000 --pidfile /tmp/graceful-wsgi-example.pid --ready-path /-/ready
Try it:    curl -i http://127.0.0.1:8000/
Upgrade:   kill -HUP $(cat /tmp/graceful-wsgi-example.pid)
Stop:      kill -QUIT $(cat /tmp/graceful-wsgi-example.pid)

SIGHUP starts the same command again (so it imports this file as it is now on disk), hands it
the listening socket and lets the old process finish its requests. /-/ready answers 200 while
serving and 503 while draining. This file is also the application of the gunicorn, systemd,
supervisor, Docker and Kubernetes examples.
"""

import os


def app(environ, start_response):
    body = f"hello from pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body))),
                              ("X-Pid", str(os.getpid()))])
    return [body]
