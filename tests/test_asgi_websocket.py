"""WebSockets in the ASGI server, over real sockets, with a stdlib client written here.

The client is independent of graceful's own codec (a bug shared by both sides would pass).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import struct
import threading
import zlib
from typing import List, Optional, Tuple

import pytest

from _serve import Served
from _support import process_state, reap_orphans, wait_for

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TAIL = b"\x00\x00\xff\xff"


class WSClient:
    """A minimal RFC 6455 client: handshake, masked frames, messages, the close."""

    def __init__(self, port: int, path: str = "/echo", headers=(), timeout: float = 30.0,
                 answer_pings: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.answer_pings = answer_pings
        self.pings: List[bytes] = []
        self.pongs: List[bytes] = []
        self.send_lock = threading.Lock()
        key = base64.b64encode(os.urandom(16))
        lines = [f"GET {path} HTTP/1.1", "Host: test", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}",
                 "Sec-WebSocket-Version: 13"] + [f"{n}: {v}" for n, v in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._take_until(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {}
        for field in fields:
            name, _, value = field.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.body = b""
        if self.status == 101:
            expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
            assert self.headers["sec-websocket-accept"] == expected
        elif "content-length" in self.headers:
            self.body = self._take(int(self.headers["content-length"]))
        extensions = self.headers.get("sec-websocket-extensions", "")
        self.deflate = extensions.startswith("permessage-deflate")
        self.inflater = zlib.decompressobj(wbits=-15)
        self.compressor = zlib.compressobj(wbits=-15)

    # -- bytes ----------------------------------------------------------------------------------

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed; buffered {self.buffer[:100]!r}")
        self.buffer += data

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _take_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        data, self.buffer = self.buffer.split(marker, 1)
        return data

    # -- frames ---------------------------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False,
                   masked: bool = True) -> None:
        first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
        n = len(payload)
        bit = 0x80 if masked else 0
        if n < 126:
            head = struct.pack("!BB", first, bit | n)
        elif n < 65536:
            head = struct.pack("!BBH", first, bit | 126, n)
        else:
            head = struct.pack("!BBQ", first, bit | 127, n)
        if masked:
            mask = os.urandom(4)
            key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
            payload = mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else mask
        with self.send_lock:
            self.sock.sendall(head + payload)

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())

    def send_bytes(self, data: bytes) -> None:
        self.send_frame(0x2, data)

    def send_compressed(self, opcode: int, data: bytes) -> None:
        out = self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        self.send_frame(opcode, out[:-4], rsv1=True)

    def send_close(self, code: int = 1000, reason: bytes = b"") -> None:
        self.send_frame(0x8, struct.pack("!H", code) + reason)

    def recv_frame(self) -> Tuple[bool, bool, int, bytes]:
        first, second = self._take(2)
        assert not second & 0x80, "a server frame must not be masked"
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._take(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._take(8))
        return bool(first & 0x80), bool(first & 0x40), first & 0x0F, self._take(n)

    def recv(self):
        """The next message: ("text", str), ("bytes", bytes) or ("close", code, reason)."""
        parts, opcode, compressed = [], None, False
        while True:
            fin, rsv1, op, payload = self.recv_frame()
            if op == 0x9:
                self.pings.append(payload)
                if self.answer_pings:
                    self.send_frame(0xA, payload)
                continue
            if op == 0xA:
                self.pongs.append(payload)
                continue
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                return ("close", code, payload[2:].decode())
            if op != 0x0:
                opcode, compressed = op, rsv1
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                if compressed:
                    data = self.inflater.decompress(data + TAIL)
                return ("text", data.decode()) if opcode == 0x1 else ("bytes", data)

    def closed_by_server(self) -> bool:
        try:
            while True:
                self._fill()
        except EOFError:
            return True
        except ConnectionResetError:
            return False

    def close(self) -> None:
        self.sock.close()


def events(path) -> List[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def served(procs, tmp_path):
    env = dict(os.environ, WS_APP_EVENTS=str(tmp_path / "events"))
    return Served(procs, tmp_path, "ws_app.py:app", "--ws-ping-interval", "0", env=env)


# -- messages -----------------------------------------------------------------------------------


def test_echo_text_binary_fragmented_and_big(served, tmp_path):
    client = WSClient(served.port)
    assert client.status == 101 and client.headers["x-pid"] == str(served.proc.pid)
    assert "sec-websocket-extensions" not in client.headers  # nothing was offered
    assert "sec-websocket-protocol" not in client.headers
    client.send_text("hello")
    assert client.recv() == ("text", "hello")
    client.send_text("")
    assert client.recv() == ("text", "")
    client.send_text("κόσμε ✓")
    assert client.recv() == ("text", "κόσμε ✓")
    client.send_bytes(b"\x00\xff" * 100)
    assert client.recv() == ("bytes", b"\x00\xff" * 100)
    # Fragments with a ping between them; the pong comes back whatever the app does.
    client.send_frame(0x1, "frag".encode(), fin=False)
    client.send_frame(0x9, b"are you there")
    client.send_frame(0x0, "ment".encode(), fin=False)
    client.send_frame(0x0, "ed é".encode())
    assert client.recv() == ("text", "fragmented é")
    assert client.pongs == [b"are you there"]
    big = os.urandom(1 << 20)
    client.send_bytes(big)
    assert client.recv() == ("bytes", big)
    client.send_close(1000, b"done")
    assert client.recv() == ("close", 1000, "")
    assert client.closed_by_server()
    served.wait(lambda: {"event": "disconnect", "code": 1000, "pid": served.proc.pid}
                in events(tmp_path / "events"), what="the app to see the disconnect")


def test_application_close_and_error(served):
    client = WSClient(served.port)
    client.send_text("close-me")
    assert client.recv() == ("close", 4000, "asked")
    client.send_close(4000)
    assert client.closed_by_server()
    boom = WSClient(served.port, "/boom")
    assert boom.status == 101
    assert boom.recv() == ("close", 1011, "")
    boom.close()


def test_protocol_errors_close_with_their_code(served):
    client = WSClient(served.port)
    client.send_frame(0x1, b"unmasked", masked=False)
    assert client.recv() == ("close", 1002, "")
    assert client.closed_by_server()
    client = WSClient(served.port)
    client.send_frame(0x1, b"ok \xf4\x90", fin=False)  # invalid UTF-8, message not finished
    assert client.recv() == ("close", 1007, "")
    client = WSClient(served.port)
    client.send_frame(0x9, b"x" * 126)
    assert client.recv() == ("close", 1002, "")


def test_compressed_messages_and_max_size(procs, tmp_path):
    served = Served(procs, tmp_path, "ws_app.py:app", "--ws-max-size", "1000000")
    offer = [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]
    client = WSClient(served.port, headers=offer)
    assert client.headers["sec-websocket-extensions"] == "permessage-deflate"
    text = "compress me please " * 5000
    for _ in range(2):  # the second message relies on the context kept from the first
        client.send_compressed(0x1, text.encode())
        assert client.recv() == ("text", text)
    client.send_text("plain")  # an uncompressed message on a compressing connection
    assert client.recv() == ("text", "plain")
    # A zip bomb: ~1 kB on the wire, 10 MB inflated, past the 1 MB bound.
    client.send_compressed(0x2, b"\x00" * (10 << 20))
    assert client.recv() == ("close", 1009, "")
    assert client.closed_by_server()
    # Too big without compression: refused from the length, before the payload.
    client = WSClient(served.port)
    client.send_frame(0x2, b"x" * 1000001)
    assert client.recv() == ("close", 1009, "")
    off = Served(procs, tmp_path, "ws_app.py:app", "--ws-per-message-deflate", "off")
    client = WSClient(off.port, headers=offer)
    assert "sec-websocket-extensions" not in client.headers
    client.send_text(text)
    assert client.recv() == ("text", text)


def test_subprotocol_and_scope(served):
    client = WSClient(served.port, "/scope?x=1", headers=[("Sec-WebSocket-Protocol", "v1, chat")])
    assert client.headers["sec-websocket-protocol"] == "chat"
    kind, text = client.recv()
    scope = json.loads(text)
    assert scope["type"] == "websocket" and scope["scheme"] == "ws"
    assert (scope["path"], scope["query_string"]) == ("/scope", "x=1")
    assert scope["subprotocols"] == ["v1", "chat"]
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert "websocket.http.response" in scope["extensions"]


def test_denial_response_reject_and_bad_handshakes(served):
    denied = WSClient(served.port, "/deny")
    assert (denied.status, denied.body, denied.headers["x-denied"]) == (401, b"no entry\n", "yes")
    assert denied.closed_by_server()
    rejected = WSClient(served.port, "/reject")
    assert rejected.status == 403 and rejected.closed_by_server()
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
                 b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) +
                 b"\r\nSec-WebSocket-Version: 8\r\n\r\n")
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 426 ") and b"sec-websocket-version: 13\r\n" in response
    sock.close()
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
    sock.close()


def test_frames_sent_with_the_handshake_are_not_lost(served):
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    key = base64.b64encode(os.urandom(16))
    frame = b"\x81\x82\x00\x00\x00\x00hi"  # a zero mask: the payload is as written
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
                 b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n" + frame)
    data = b""
    while not data.endswith(b"\x81\x02hi"):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    sock.close()


def test_flow_control_both_ways_bounds_the_servers_memory(procs, tmp_path):
    trigger = tmp_path / "trigger"
    env = dict(os.environ, WS_APP_TRIGGER=str(trigger))
    served = Served(procs, tmp_path, "ws_app.py:app", "--ws-ping-interval", "0",
                    "--ws-max-size", str(2 << 20), "--log-level", "debug", env=env)
    client = WSClient(served.port, "/flow")
    rss_kb = json.loads(client.recv()[1])["rss_kb"]
    block = os.urandom(1 << 20)
    done = threading.Event()

    def push():  # 48 MB to an application that does not receive yet
        for _ in range(48):
            client.send_bytes(block)
        client.send_text("end")
        done.set()

    sender = threading.Thread(target=push, daemon=True)
    sender.start()
    served.wait(lambda: "reading paused" in served.log() or done.is_set(), 60,
                what="the server to stop reading")
    assert not done.is_set()  # the server stopped reading: the client cannot send it all
    trigger.write_text("go")
    sender.join(60)
    assert done.is_set()
    # Now the application sends 48 MB to a client that does not read yet.
    served.wait(lambda: "send waits" in served.log(), 60, what="the application's send to wait")
    for _ in range(48):
        assert client.recv() == ("bytes", b"\x01" * (1 << 20))
    report = json.loads(client.recv()[1])
    assert (report["count"], report["bytes"]) == (48, 48 << 20)
    # Neither direction buffered the 48 MB in the server.
    assert report["hwm_kb"] - rss_kb < 24 * 1024, report


# -- keepalive ----------------------------------------------------------------------------------


def test_a_peer_that_stops_answering_pings_is_closed(procs, tmp_path):
    env = dict(os.environ, WS_APP_EVENTS=str(tmp_path / "events"))
    served = Served(procs, tmp_path, "ws_app.py:app", "--ws-ping-interval", "0.2",
                    "--ws-ping-timeout", "1", env=env)
    alive = WSClient(served.port)
    done = threading.Event()
    round_trips = []

    def keep_talking():  # reads all the time, so its pongs go back at once
        while not done.is_set() and len(round_trips) < 100_000:
            alive.send_text("still here")
            round_trips.append(alive.recv())

    talker = threading.Thread(target=keep_talking, daemon=True)
    talker.start()
    silent = WSClient(served.port, answer_pings=False)
    assert silent.recv() == ("close", 1011, "ping timeout")
    assert silent.pings and silent.closed_by_server()
    served.wait(lambda: {"event": "disconnect", "code": 1006, "pid": served.proc.pid}
                in events(tmp_path / "events"), what="the app to see 1006")
    # The one that answers is still open after more pings than the silent one got.
    served.wait(lambda: len(alive.pings) > len(silent.pings) + 2 or not talker.is_alive(),
                what="more pings")
    done.set()
    talker.join(30)
    assert set(round_trips) == {("text", "still here")}
    alive.send_text("last")
    assert alive.recv() == ("text", "last")


# -- the drain ----------------------------------------------------------------------------------


class Chatter:
    """A client that keeps a few messages in flight until the server closes, then answers."""

    WINDOW = 8
    LIMIT = 100_000

    def __init__(self, port: int, name: str) -> None:
        self.client = WSClient(port)
        self.name = name
        self.sent: List[str] = []
        self.echoed: List[str] = []
        self.close: Optional[tuple] = None
        self.error: Optional[BaseException] = None
        self.cond = threading.Condition()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._read, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        try:
            for i in range(self.LIMIT):
                with self.cond:
                    while (self.close is None and
                           len(self.sent) - len(self.echoed) >= self.WINDOW):
                        self.cond.wait(30)
                    if self.close is not None:
                        return
                    message = f"{self.name}-{i}"
                    # Under the lock: a message is in ``sent`` iff it left before the close
                    # frame was seen.
                    self.client.send_text(message)
                    self.sent.append(message)
        except BaseException as exc:  # noqa: B902 - reported by the test
            self.error = exc

    def _read(self) -> None:
        try:
            while True:
                message = self.client.recv()
                with self.cond:
                    if message[0] == "close":
                        self.close = message
                        self.client.send_close(message[1])
                        self.cond.notify_all()
                        return
                    self.echoed.append(message[1])
                    self.cond.notify_all()
        except BaseException as exc:  # noqa: B902
            self.error = exc
            with self.cond:
                self.cond.notify_all()


def _gone(pid):
    reap_orphans()
    return process_state(pid) in (None, "Z")


def test_sighup_closes_websockets_with_1012_and_loses_no_message(procs, tmp_path):
    log_events = tmp_path / "events"
    env = dict(os.environ, WS_APP_EVENTS=str(log_events))
    served = Served(procs, tmp_path, "ws_app.py:app", "--ws-ping-interval", "0",
                    "--ws-drain-time", "1", "--graceful-timeout", "60", env=env)
    old = served.proc.pid
    chatters = [Chatter(served.port, f"c{i}") for i in range(5)]
    served.wait(lambda: all(len(c.echoed) >= 20 for c in chatters), what="traffic")
    os.kill(old, signal.SIGHUP)
    new = served.wait(lambda: [int(p) for p in re.findall(r"ready: pid (\d+) ", served.log())
                               if int(p) != old], what="a successor")[0]
    # New handshakes reach the successor, while the old WebSockets still work. The old
    # generation may accept a few more until it learns that the successor is ready (the two
    # share the accept queue); those it closes at once with 1012.
    for _ in range(100):
        fresh = WSClient(served.port)
        if fresh.headers["x-pid"] == str(new):
            break
        assert fresh.headers["x-pid"] == str(old) and fresh.recv() == ("close", 1012, "")
        fresh.close()
    assert fresh.headers["x-pid"] == str(new)
    for chatter in chatters:
        chatter.threads[1].join(60)
        assert chatter.error is None, chatter.error
        assert chatter.close == ("close", 1012, "")
    served.wait(lambda: _gone(old), what="the old generation to exit")
    seen = [e for e in events(log_events) if e["pid"] == old]
    for chatter in chatters:
        received = [e["data"] for e in seen if e["event"] == "received" and
                    e["data"].startswith(chatter.name + "-")]
        # Every message the client sent before it saw the close reached the application,
        # once and in order; every echo it got is one of them, once and in order.
        assert received == chatter.sent
        assert chatter.echoed == chatter.sent[:len(chatter.echoed)]
        unechoed = [e["data"] for e in seen if e["event"] == "unechoed" and
                    e["data"].startswith(chatter.name + "-")]
        assert chatter.echoed + unechoed == chatter.sent
    codes = [e["code"] for e in seen if e["event"] == "disconnect"]
    assert len(codes) >= len(chatters) and set(codes) == {1012}
    fresh.send_text("on the new generation")
    assert fresh.recv() == ("text", "on the new generation")


def test_a_final_stop_closes_with_1001_and_an_unanswered_close_is_bounded(procs, tmp_path):
    log_events = tmp_path / "events"
    env = dict(os.environ, WS_APP_EVENTS=str(log_events))
    served = Served(procs, tmp_path, "ws_app.py:app", "--ws-ping-interval", "0",
                    "--ws-drain-time", "0.5", "--graceful-timeout", "60", env=env)
    polite, mute = WSClient(served.port), WSClient(served.port)
    for client in (polite, mute):
        client.send_text("hi")
        assert client.recv() == ("text", "hi")
    served.proc.send_signal(signal.SIGTERM)
    assert polite.recv() == ("close", 1001, "")
    polite.send_close(1001)
    assert polite.closed_by_server()
    assert mute.recv() == ("close", 1001, "")  # ... and never answers: dropped after a while
    mute.closed_by_server()
    assert served.proc.wait(60) == 0
    codes = sorted(e["code"] for e in events(log_events) if e["event"] == "disconnect")
    assert codes == [1001, 1001]


@pytest.mark.parametrize("option, value", [("--ws-max-size", "0"),
                                           ("--ws-per-message-deflate", "maybe"),
                                           ("--ws-ping-interval", "-1"),
                                           ("--ws-drain-time", "soon")])
def test_bad_websocket_options_are_one_line_errors(option, value):
    import subprocess
    import sys

    from _support import ROOT

    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "graceful", "serve", "ws_app.py:app", option,
                             value], capture_output=True, text=True, timeout=60, env=env,
                            cwd=os.path.join(ROOT, "tests", "apps"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert option in result.stderr.splitlines()[-1]


def test_a_master_reload_closes_the_old_workers_websockets_with_1012(procs, tmp_path):
    log_events = tmp_path / "events"
    env = dict(os.environ, WS_APP_EVENTS=str(log_events))
    served = Served(procs, tmp_path, "ws_app.py:app", "--workers", "1", "--ws-drain-time", "0.5",
                    "--ws-ping-interval", "7", "--ws-max-size", "12345", env=env)
    chatter = Chatter(served.port, "m")
    served.wait(lambda: len(chatter.echoed) >= 20, what="traffic")
    old = int(chatter.client.headers["x-pid"])
    with open(f"/proc/{old}/environ", "rb") as f:  # the --ws-* options reach the workers
        environ = dict(item.split("=", 1) for item in f.read().decode().split("\0") if item)
    values = json.loads(environ["GRACEFUL_EFFECTIVE_CONFIG"])["values"]
    assert (values["ws_drain_time"], values["ws_ping_interval"], values["ws_max_size"]) == \
        (0.5, 7.0, 12345)
    os.kill(served.proc.pid, signal.SIGHUP)
    served.wait(lambda: "generation 2 is serving" in served.log(), what="generation 2")
    chatter.threads[1].join(60)
    assert chatter.error is None and chatter.close == ("close", 1012, "")
    for _ in range(100):
        fresh = WSClient(served.port)
        if fresh.headers["x-pid"] != str(old):
            break
        assert fresh.recv() == ("close", 1012, "")
        fresh.close()
    assert fresh.headers["x-pid"] != str(old)
    served.wait(lambda: _gone(old), what="the old worker to exit")
    received = [e["data"] for e in events(log_events)
                if e["pid"] == old and e["event"] == "received"]
    assert received == chatter.sent


def test_wsgi_answers_an_upgrade_request_with_a_plain_response(procs, tmp_path):
    from _serve import Client

    served = Served(procs, tmp_path, "wsgi_app.py:app")
    client = Client(served.connect())
    key = base64.b64encode(os.urandom(16)).decode()
    r = client.request("GET", "/hello", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                 ("Sec-WebSocket-Key", key),
                                                 ("Sec-WebSocket-Version", "13")])
    assert r.status == 200 and r.body == b"hello\n" and "upgrade" not in r.headers
    assert client.request("GET", "/hello").status == 200  # still plain HTTP/1.1
