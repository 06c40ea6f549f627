#!/bin/sh
# gunicorn, unmodified, under graceful's master: a stable pid and reloads that fail no request.
#
# Run it:    sh examples/gunicorn.sh      (env: PORT=8000, PIDFILE=/tmp/graceful-gunicorn-example.pid, PYTHON=python3)
# Try it:    curl -i http://127.0.0.1:8000/
# Upgrade:   kill -HUP $(cat /tmp/graceful-gunicorn-example.pid)
# Stop:      kill -TERM $(cat /tmp/graceful-gunicorn-example.pid)
#
# The master binds the port once and keeps it. On SIGHUP it starts a whole new gunicorn (which
# imports the code now on disk) on the same socket, and sends the old gunicorn SIGTERM (its
# graceful shutdown) once the new one has been up for 1 s (--ready delay:1).
# gunicorn gets no --bind: it adopts the socket by itself from LISTEN_FDS/LISTEN_PID, as under
# systemd socket activation. `--bind fd://{fd:web}` works too: a command that names its fds
# gets no LISTEN_FDS (gunicorn would adopt fd 3 twice).
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
exec "$PYTHON" -m graceful run --bind "web=127.0.0.1:${PORT:-8000}" \
    --pidfile "${PIDFILE:-/tmp/graceful-gunicorn-example.pid}" --ready delay:1 \
    -- "$PYTHON" -m gunicorn -k gthread --threads 4 -w 2 wsgi_app:app
