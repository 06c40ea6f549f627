#!/bin/sh
# uvicorn, unmodified, under graceful's master: a stable pid and reloads that fail no request.
#
# Run it:    sh examples/uvicorn.sh       (env: PORT=8000, PIDFILE=/tmp/graceful-uvicorn-example.pid, PYTHON=python3)
# Try it:    curl -i http://127.0.0.1:8000/
# Upgrade:   kill -HUP $(cat /tmp/graceful-uvicorn-example.pid)
# Stop:      kill -TERM $(cat /tmp/graceful-uvicorn-example.pid)
#
# The master binds the port once and keeps it; {fd:web} becomes the number of the socket's file
# descriptor in uvicorn's command line. On SIGHUP a new uvicorn starts on the same socket, and
# the old one gets SIGTERM (it finishes its requests) once the new one has been up for 1 s.
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m graceful run --bind "web=127.0.0.1:${PORT:-8000}" \
    --pidfile "${PIDFILE:-/tmp/graceful-uvicorn-example.pid}" --ready delay:1 \
    -- "$PYTHON" -m uvicorn --fd '{fd:web}' --log-level warning asgi_app:app
