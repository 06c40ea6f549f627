"""A raw ASGI WebSocket echo application for the Autobahn run and the WebSocket benchmark.

Plain ASGI (no framework), so the same object runs under `graceful serve` and under uvicorn,
and what is measured is the server. Every message is sent back as it came: text as text,
binary as binary. A plain HTTP request gets a short 200, so a load balancer or `curl` can tell
the server is up.
"""


async def echo(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"ok\n"})
        return
    await _echo_websocket(receive, send)


async def _echo_websocket(receive, send):
    connect = await receive()
    assert connect["type"] == "websocket.connect", connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


# --- starting servers on it ----------------------------------------------------------------
# Not part of the app: the benchmarks that use it (autobahn.py, websocket.py) start each server
# the same way, so it lives next to the app they serve.

import importlib.util  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def server_commands(names):
    """``[(label, argv)]`` for graceful and, when importable here, uvicorn with each WebSocket
    implementation in ``names`` ("graceful", "websockets", "wsproto"). argv ends with the
    option that takes the listening fd; the fd is appended by ServerProcess."""
    commands = []
    for name in names:
        if name == "graceful":
            commands.append(("graceful", [sys.executable, "-m", "graceful", "serve",
                                          os.path.join(HERE, "apps_ws.py") + ":echo",
                                          "--log-level", "warning", "--bind"]))
        elif all(importlib.util.find_spec(m) for m in ("uvicorn", name)):
            commands.append((f"uvicorn+{name}", [
                sys.executable, "-m", "uvicorn", "--app-dir", HERE, "--ws", name,
                "--loop", "asyncio", "--log-level", "warning", "apps_ws:echo", "--fd"]))
        else:
            print(f"uvicorn or {name} is not importable by {sys.executable}: "
                  f"uvicorn+{name} skipped", file=sys.stderr)
    return commands


class ServerProcess:
    """A server on a listening socket bound here: no port can be taken between choosing and
    binding it, and connections queue from the start, so "listening" needs no polling."""

    def __init__(self, command):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        self.port = listener.getsockname()[1]
        fd = listener.fileno()
        os.set_inheritable(fd, True)
        target = f"fd://{fd}" if command[-1] == "--bind" else str(fd)
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([*command, target], pass_fds=[fd], env=env,
                                     stdout=self._log, stderr=self._log, start_new_session=True)
        listener.close()

    def cpu_seconds(self):
        """User + system CPU of the server process so far (its children too, for a master)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        """Kill the server's process group; return its log."""
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")
