"""Real nginx and HAProxy, started by the tests with configurations in tmp_path on free
loopback ports, in front of a Flask app and a FastAPI app under ``graceful serve``: they
terminate TLS (certificates made by openssl now) and tell graceful who the client is, by
X-Forwarded-* headers (nginx, HAProxy ``option forwardfor``) or by a PROXY v2 header (HAProxy
``send-proxy-v2-ssl``). The client connects from 127.0.0.2, so its address differs from the
proxy's (127.0.0.1). Each setup goes through a SIGHUP upgrade under HTTPS load: 0 failures (the
proxies are told not to retry, so a failure would show)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import urllib.request

import pytest

if os.environ.get("GRACEFUL_INTEGRATION") != "1":
    pytest.skip("integration suite: set GRACEFUL_INTEGRATION=1 (tests/integration/README.md)",
                allow_module_level=True)

from _serve import Served  # noqa: E402
from _support import free_port, wait_for  # noqa: E402
from _tls import make_certificates  # noqa: E402
from test_tls_serve import _HttpsLoad, _successor, _gone  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = {"flask": os.path.join(HERE, "apps", "proxy_flask_app.py:app"),
        "fastapi": os.path.join(HERE, "apps", "proxy_fastapi_app.py:app")}
CLIENT = "127.0.0.2"  # loopback too, but not the proxy's address


def _have(program: str, package: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", package], capture_output=True, timeout=600)
        path = shutil.which(program, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        pytest.skip(f"{program} is not installed and apt-get install {package} failed")
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    paths = make_certificates(str(tmp_path_factory.mktemp("certs")))
    combined = os.path.join(os.path.dirname(paths["ca.pem"]), "server-combined.pem")
    with open(combined, "w") as out:  # HAProxy wants the certificate and key in one file
        for name in ("server.pem", "server.key"):
            with open(paths[name]) as f:
                out.write(f.read())
    return dict(paths, combined=combined)


def _nginx(procs, tmp_path, certs, backend: int) -> int:
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
daemon off; master_process on; worker_processes 1; user root;
pid {tmp_path}/nginx.pid; error_log {tmp_path}/nginx-error.log info;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {tmp_path}/n-body; proxy_temp_path {tmp_path}/n-proxy;
  fastcgi_temp_path {tmp_path}/n-fcgi; uwsgi_temp_path {tmp_path}/n-uwsgi;
  scgi_temp_path {tmp_path}/n-scgi;
  upstream app {{ server 127.0.0.1:{backend}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {certs["server.pem"]}; ssl_certificate_key {certs["server.key"]};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_next_upstream off;
    }}
  }}
}}
""")
    procs.spawn([_have("nginx", "nginx-light"), "-c", str(conf), "-p", str(tmp_path)],
                stderr=subprocess.DEVNULL)
    _wait_listening(port)
    return port


def _haproxy(procs, tmp_path, certs, backend: int, mode: str) -> int:
    port = free_port()
    if mode == "proxy-v2":
        server = f"server s1 127.0.0.1:{backend} send-proxy-v2-ssl"
        extra = ""
    else:
        server = f"server s1 127.0.0.1:{backend}"
        extra = "option forwardfor\n  http-request set-header X-Forwarded-Proto https"
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(f"""
defaults
  mode http
  retries 0
  timeout connect 10s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:{port} ssl crt {certs["combined"]}
  {extra}
  default_backend be
backend be
  {server}
""")
    procs.spawn([_have("haproxy", "haproxy"), "-f", str(conf), "-db"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_listening(port)
    return port


def _wait_listening(port: int) -> None:
    import socket

    def accepts() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return True
        except OSError:
            return False

    wait_for(accepts, 60, what=f"the proxy on port {port}")


def _context(certs) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certs["ca.pem"])


def _info_via(port: int, certs) -> dict:
    """GET /info through the proxy with curl, from 127.0.0.2."""
    result = subprocess.run(["curl", "-sS", "--fail", "--interface", CLIENT, "--cacert",
                             certs["ca.pem"], f"https://127.0.0.1:{port}/info"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


SETUPS = ["nginx", "haproxy-forwardfor", "haproxy-proxy-v2"]


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_behind_a_real_proxy_the_app_sees_the_client_and_https_across_upgrades(
        procs, tmp_path, certs, framework, setup):
    extra = ("--proxy-protocol",) if setup == "haproxy-proxy-v2" else ()
    served = Served(procs, tmp_path, APPS[framework], *extra)
    if setup == "nginx":
        port = _nginx(procs, tmp_path, certs, served.port)
    else:
        port = _haproxy(procs, tmp_path, certs, served.port, setup.split("-", 1)[1])
    info = _info_via(port, certs)
    assert info["remote_addr"] == CLIENT
    assert info["scheme"] == "https"
    assert info["url"] == f"https://127.0.0.1:{port}/info"
    load = _HttpsLoad(port, _context(certs))
    pids = [served.proc.pid]
    try:
        load.wait_requests(100)
        for _ in range(2):
            os.kill(pids[-1], signal.SIGHUP)
            pids.append(_successor(served, pids))
            served.wait(lambda: _gone(pids[-2]), 60, what=f"generation {pids[-2]} to exit")
            load.wait_requests(load.ok + len(load.failures) + 100)
    finally:
        load.stop()
    assert load.failures == []
    assert set(pids) <= set(load.pids)
    assert _info_via(port, certs)["remote_addr"] == CLIENT


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_an_untrusted_peers_forwarded_headers_change_nothing(procs, tmp_path, certs, framework):
    served = Served(procs, tmp_path, APPS[framework], "--forwarded-allow-ips", "10.0.0.1")
    port = _nginx(procs, tmp_path, certs, served.port)
    info = _info_via(port, certs)
    assert info["remote_addr"] == "127.0.0.1"  # nginx itself: its headers were not believed
    assert info["scheme"] == "http"
    request = urllib.request.Request(f"http://127.0.0.1:{served.port}/info",
                                     headers={"X-Forwarded-For": "203.0.113.1",
                                              "X-Forwarded-Proto": "https"})
    with urllib.request.urlopen(request, timeout=30) as response:  # straight, not via nginx
        direct = json.loads(response.read())
    assert (direct["remote_addr"], direct["scheme"]) == ("127.0.0.1", "http")
