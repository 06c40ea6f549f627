"""Each example runs by the command in its header: start, one request, one upgrade, stop."""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, List, Tuple

import pytest

import _yaml
from _support import (PYTHON, ROOT, children_of, free_port, http_get, process_state,
                      reap_orphans, wait_for)
from graceful.pidfile import read_pid


def _pid(pidfile):
    try:
        return read_pid(pidfile)
    except Exception:
        return None


def _get_or_none(port):
    try:
        return http_get(port)
    except ConnectionRefusedError:
        return None


@pytest.mark.parametrize("example", ["http_server.py", "asyncio_server.py"])
def test_example_serves_upgrades_and_stops(procs, tmp_path, example):
    port = free_port()
    pidfile = str(tmp_path / "example.pid")
    proc = procs.python(os.path.join(ROOT, "examples", example), f"web=127.0.0.1:{port}", pidfile)
    reply = wait_for(lambda: _get_or_none(port), 30, what="the example to answer")
    assert reply.endswith(f"hello from pid {proc.pid}\n".encode())
    assert _pid(pidfile) == proc.pid
    os.kill(proc.pid, signal.SIGHUP)
    new = wait_for(lambda: _pid(pidfile) not in (None, proc.pid) and _pid(pidfile), 30)
    assert proc.wait(timeout=30) == 0
    assert http_get(port).endswith(f"hello from pid {new}\n".encode())
    os.kill(new, signal.SIGQUIT)
    wait_for(lambda: process_state(new) in (None, "Z"), 30, what="the upgraded example to exit")
    reap_orphans()
    assert not os.path.exists(pidfile)


# -- the examples added for issue 7 --------------------------------------------------------------
#
# Each test reads the command out of the example itself (its header comment, the unit's
# ExecStart, the supervisor program's command=, the Dockerfile's exec-form ENTRYPOINT/CMD, the
# manifest's args), replaces only paths, the port and the pidfile, and runs it for real: one
# request, one upgrade by the signal or command the example declares, then a stop by its declared
# stop signal, which must end in exit status 0.

EXAMPLES = os.path.join(ROOT, "examples")
_LABEL = re.compile(r"^\s*[#;]?\s*(Run it|Try it|Upgrade|Reload|Stop|Build|Install):\s+(\S.*?)\s*$")
_ADDRESS = re.compile(r"\b(?:127\.0\.0\.1|0\.0\.0\.0):80\d\d\b")
_SIGNAL = re.compile(r"(?:\bkill\s+-|--signal\s+|\bsignal\s+)(?:SIG)?([A-Z][A-Z0-9]+)\b")


def _header(name: str) -> Dict[str, List[str]]:
    """The ``Label: text`` lines of an example's header comment (a label may repeat)."""
    found: Dict[str, List[str]] = {}
    with open(os.path.join(EXAMPLES, name)) as f:
        for line in f:
            match = _LABEL.match(line)
            if match:
                text = re.split(r"\s{2,}[#(]", match.group(2))[0]  # drop a trailing remark
                found.setdefault(match.group(1), []).append(text)
    return found


def _signal_in(text: str) -> signal.Signals:
    """The signal a command line sends: kill -HUP, docker kill --signal HUP, supervisorctl
    signal HUP, or a bare name such as SIGTERM."""
    match = _SIGNAL.search(text) or re.fullmatch(r"(?:SIG)?([A-Z][A-Z0-9]+)", text.strip())
    assert match, f"no signal in {text!r}"
    return signal.Signals["SIG" + match.group(1)]


def _substitute(args, port: int, pidfile: str) -> List[str]:
    """An example's command, runnable here: this Python, this checkout, a free port on
    127.0.0.1 and a pidfile under tmp_path."""
    out: List[str] = []
    for i, arg in enumerate(args):
        if i == 0 and arg == "graceful":
            out += [PYTHON, "-m", "graceful"]
            continue
        if arg in ("python", "python3", "/usr/bin/python3"):
            out.append(PYTHON)
            continue
        arg = _ADDRESS.sub(f"127.0.0.1:{port}", arg.replace("/srv/graceful", ROOT))
        out.append(pidfile if re.fullmatch(r"/\S+\.pid", arg) else arg)
    return out


def _env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "GRACEFUL_FDS"):
        env.pop(var, None)
    env.update(extra)
    return env


def _served_by(reply: bytes) -> int:
    match = re.search(rb"hello from pid (\d+)", reply)
    assert match and re.match(rb"HTTP/1\.[01] 200 ", reply), reply
    return int(match.group(1))


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def _workers(pid: int) -> List[int]:
    return sorted(c for c in children_of(pid) if process_state(c) not in (None, "Z"))


def _new_workers(master: int, old, count: int) -> List[int]:
    """Wait until ``master`` runs ``count`` workers and none of ``old`` is left."""
    def done():
        now = _workers(master)
        return now if len(now) == count and not set(now) & set(old) else None
    return wait_for(done, 30, what="the new generation of workers to replace the old one")


def _pid_changed(pidfile: str, old: int) -> int:
    return wait_for(lambda: _pid(pidfile) not in (None, old) and _pid(pidfile), 30,
                    what="the successor to take the pidfile over")


def _master_smoke(proc, port: int, upgrade: signal.Signals, stop: signal.Signals,
                  workers: int, during_stop=None) -> None:
    """A master (stable pid): one request, an upgrade that replaces every worker, a stop."""
    first = _served_by(wait_for(lambda: _get_or_none(port), 30, what="the first response"))
    old = _workers(proc.pid)
    assert first in old
    os.kill(proc.pid, upgrade)
    new = _new_workers(proc.pid, old, workers)
    assert _served_by(http_get(port)) in new
    assert process_state(proc.pid) not in (None, "Z")  # the same pid all along
    os.kill(proc.pid, stop)
    if during_stop is not None:
        during_stop()
    assert proc.wait(timeout=30) == 0


def test_echo_server(procs, tmp_path):
    port, pidfile = free_port(), str(tmp_path / "echo.pid")
    header = _header("echo_server.py")
    argv = _substitute(shlex.split(header["Run it"][0]), port, pidfile)
    proc = procs.spawn(argv, cwd=ROOT, env=_env())

    def echo(line: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(line)
            return s.makefile("rb").readline()

    def echo_or_none():
        try:
            return echo(b"hello\n")
        except ConnectionRefusedError:
            return None

    assert wait_for(echo_or_none, 30, what="the echo server") == b"hello\n"
    idle = socket.create_connection(("127.0.0.1", port), timeout=30)
    with idle:
        idle.sendall(b"one\n")
        assert idle.makefile("rb").readline() == b"one\n"
        os.kill(proc.pid, _signal_in(header["Upgrade"][0]))
        new = _pid_changed(pidfile, proc.pid)
        assert proc.wait(timeout=30) == 0  # although a client is still connected (idle)
        assert idle.recv(1) == b""  # its connection was ended cleanly
    assert echo(b"again\n") == b"again\n"
    os.kill(new, _signal_in(header["Stop"][0]))
    wait_for(lambda: process_state(new) in (None, "Z"), 30, what="the echo server to exit")
    reap_orphans()
    assert not os.path.exists(pidfile)


@pytest.mark.parametrize("example", ["wsgi_app.py", "asgi_app.py"])
def test_graceful_serve_app(procs, tmp_path, example):
    port, pidfile = free_port(), str(tmp_path / "app.pid")
    header = _header(example)
    argv = _substitute(shlex.split(header["Run it"][0]), port, pidfile)
    assert argv[1:4] == ["-m", "graceful", "serve"]
    proc = procs.spawn(argv, cwd=ROOT, env=_env())
    assert _served_by(wait_for(lambda: _get_or_none(port), 30)) == proc.pid
    ready_path = argv[argv.index("--ready-path") + 1]
    assert _status(http_get(port, ready_path)) == 200
    os.kill(proc.pid, _signal_in(header["Upgrade"][0]))
    new = _pid_changed(pidfile, proc.pid)
    assert proc.wait(timeout=30) == 0
    assert _served_by(http_get(port)) == new
    os.kill(new, _signal_in(header["Stop"][0]))
    wait_for(lambda: process_state(new) in (None, "Z"), 30, what="the server to exit")
    reap_orphans()
    assert not os.path.exists(pidfile)


@pytest.mark.parametrize("script, module", [("gunicorn.sh", "gunicorn"), ("uvicorn.sh", "uvicorn")])
def test_graceful_run_wraps(procs, tmp_path, script, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (the example wraps it unmodified)")
    port, pidfile = free_port(), str(tmp_path / "master.pid")
    header = _header(script)
    argv = shlex.split(header["Run it"][0])
    assert argv == ["sh", f"examples/{script}"]
    proc = procs.spawn(argv, cwd=ROOT, env=_env(PORT=str(port), PIDFILE=pidfile, PYTHON=PYTHON))
    first = _served_by(wait_for(lambda: _get_or_none(port), 30, what=f"{module} to answer"))
    assert read_pid(pidfile) == proc.pid  # sh exec'd the master
    old = _workers(proc.pid)
    os.kill(proc.pid, _signal_in(header["Upgrade"][0]))
    _new_workers(proc.pid, old, 1)
    assert _served_by(http_get(port)) != first
    os.kill(proc.pid, _signal_in(header["Stop"][0]))
    assert proc.wait(timeout=30) == 0
    assert not os.path.exists(pidfile)


# -- systemd -------------------------------------------------------------------------------------

def _unit(name: str) -> Dict[str, Dict[str, str]]:
    """A unit file: section -> key -> value (the last one of a repeated key)."""
    sections: Dict[str, Dict[str, str]] = {}
    current = None
    with open(os.path.join(EXAMPLES, "systemd", name)) as f:
        text = f.read().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None and _, f"{name}: bad line {line!r}"
        current[key.strip()] = value.strip()
    return sections


def _seconds_after(argv: List[str], option: str, default: float) -> float:
    return float(argv[argv.index(option) + 1]) if option in argv else default


def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    paths = []
    for name in ("graceful-example.socket", "graceful-example.service"):
        with open(os.path.join(EXAMPLES, "systemd", name)) as f:
            text = f.read()
        # ExecStart= must name an existing executable for verify: this Python, this checkout.
        text = text.replace("/usr/bin/python3", PYTHON).replace("/srv/graceful", ROOT)
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    result = subprocess.run([tool, "verify", *paths], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=120, cwd=str(tmp_path))
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output
    assert "graceful-example" not in output, output  # no warning about our units either


def _notifications(sock: socket.socket, until: str, timeout: float = 30.0) -> List[str]:
    """sd_notify fields received on ``sock`` up to and including the message that has ``until``."""
    fields: List[str] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {until} within {timeout}s (got {fields})"
        if select.select([sock], [], [], left)[0]:
            message = sock.recv(4096).decode().split("\n")
            fields += message
            if until in message:
                return fields


# Socket activation as systemd does it: the listener at fd 3, LISTEN_FDS/LISTEN_FDNAMES, and
# LISTEN_PID set to the pid that then exec()s the service's command.
_ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES=sys.argv[2], LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[3], sys.argv[3:])
"""


def test_systemd_service_with_socket_activation_notify_and_reload(procs, tmp_path):
    socket_unit = _unit("graceful-example.socket")
    service = _unit("graceful-example.service")["Service"]
    assert socket_unit["Socket"]["Service"] == "graceful-example.service"
    assert service["Type"] == "notify"
    port, pidfile = free_port(), str(tmp_path / "master.pid")
    host, _, unit_port = socket_unit["Socket"]["ListenStream"].rpartition(":")
    assert (host, unit_port) == ("127.0.0.1", "8000")
    argv = _substitute(shlex.split(service["ExecStart"]), port, pidfile)
    name = socket_unit["Socket"]["FileDescriptorName"]
    assert f"{name}=127.0.0.1:{port}" in argv  # the service adopts the socket by its name
    assert float(service["TimeoutStopSec"]) > _seconds_after(argv, "--graceful-timeout", 30)
    cwd = service["WorkingDirectory"].replace("/srv/graceful", ROOT)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener = socket.socket()
    with notify, listener:
        address = f"@graceful-test-{os.getpid()}-{os.urandom(4).hex()}"
        notify.bind("\0" + address[1:])
        listener.bind((host, port))
        listener.listen(int(socket_unit["Socket"].get("Backlog", "128")))
        fd = listener.fileno()
        proc = procs.spawn([PYTHON, "-c", _ACTIVATE, str(fd), name, *argv], pass_fds=(fd,),
                           cwd=cwd, env=_env(NOTIFY_SOCKET=address))
        _notifications(notify, "READY=1")
        master = proc.pid
        first = _served_by(http_get(port))
        old = _workers(master)
        assert first in old
        reload = _substitute(shlex.split(service["ExecReload"]), port, pidfile)
        result = subprocess.run(reload, cwd=cwd, env=_env(MAINPID=str(master)), timeout=90,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert result.returncode == 0, result.stdout
        fields = _notifications(notify, "READY=1")
        assert "RELOADING=1" in fields and not any(f.startswith("STATUS=reload failed")
                                                   for f in fields)
        new = _new_workers(master, old, len(old))
        assert _served_by(http_get(port)) in new
        os.kill(master, _signal_in(service["KillSignal"]))
        assert "STOPPING=1" in _notifications(notify, "STOPPING=1")
        assert proc.wait(timeout=float(service["TimeoutStopSec"])) == 0


# -- supervisor ----------------------------------------------------------------------------------

def _supervisor_programs():
    path = os.path.join(EXAMPLES, "supervisor", "graceful-example.conf")
    config = configparser.RawConfigParser()
    with open(path) as f:
        config.read_file(f)
    return path, {section.split(":", 1)[1]: dict(config.items(section))
                  for section in config.sections() if section.startswith("program:")}


def test_supervisor_config_has_both_variants():
    path, programs = _supervisor_programs()
    assert set(programs) == {"graceful-master", "graceful-pidproxy"}
    assert "--workers" in shlex.split(programs["graceful-master"]["command"])
    assert shlex.split(programs["graceful-pidproxy"]["command"])[1:4] == ["-m", "graceful",
                                                                           "pidproxy"]
    reloads = _header(os.path.join("supervisor", os.path.basename(path)))["Reload"]
    assert {r.split()[-1] for r in reloads} == set(programs)


@pytest.mark.parametrize("program", ["graceful-master", "graceful-pidproxy"])
def test_supervisor_program(procs, tmp_path, program):
    path, programs = _supervisor_programs()
    settings = programs[program]
    port, pidfile = free_port(), str(tmp_path / "server.pid")
    argv = _substitute(shlex.split(settings["command"]), port, pidfile)
    # supervisord's "exit 0 is expected" and its stop deadline outlasts graceful's drain
    assert settings.get("exitcodes", "0") == "0"
    assert float(settings["stopwaitsecs"]) > _seconds_after(argv, "--graceful-timeout", 30)
    reload = [r for r in _header(os.path.join("supervisor", os.path.basename(path)))["Reload"]
              if r.split()[-1] == program]
    upgrade, stop = _signal_in(reload[0]), _signal_in(settings["stopsignal"])
    cwd = settings["directory"].replace("/srv/graceful", ROOT)
    proc = procs.spawn(argv, cwd=cwd, env=_env())
    if program == "graceful-master":
        _master_smoke(proc, port, upgrade, stop, workers=int(argv[argv.index("--workers") + 1]))
        return
    # pidproxy: supervisord's pid stays while the server re-executes itself under it
    served = _served_by(wait_for(lambda: _get_or_none(port), 30, what="the served app"))
    assert _pid(pidfile) == served != proc.pid
    os.kill(proc.pid, upgrade)
    new = _pid_changed(pidfile, served)
    wait_for(lambda: process_state(served) in (None, "Z"), 30, what="the old generation to exit")
    assert _served_by(http_get(port)) == new
    os.kill(proc.pid, stop)
    assert proc.wait(timeout=float(settings["stopwaitsecs"])) == 0
    assert not os.path.exists(pidfile)


# -- Docker and Kubernetes -----------------------------------------------------------------------

def _dockerfile() -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments left out."""
    with open(os.path.join(EXAMPLES, "docker", "Dockerfile")) as f:
        lines = [line for line in f.read().splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip()]


def _image() -> Dict[str, object]:
    instructions = _dockerfile()
    last = {name: value for name, value in instructions}
    for name in ("ENTRYPOINT", "CMD"):
        assert last[name].startswith("["), f"{name} must be in exec form (a JSON array)"
    for name, value in instructions:
        if name == "COPY":  # the build context is the repository
            assert not value.startswith("--"), value
            for source in shlex.split(value)[:-1]:
                assert os.path.exists(os.path.join(ROOT, source)), f"COPY {source}: missing"
    build = _header(os.path.join("docker", "Dockerfile"))["Build"][0].split()
    return {"entrypoint": json.loads(last["ENTRYPOINT"]), "cmd": json.loads(last["CMD"]),
            "stopsignal": _signal_in(last["STOPSIGNAL"]), "workdir": last["WORKDIR"],
            "expose": last["EXPOSE"], "tag": build[build.index("-t") + 1]}


def test_dockerfile_command_runs_as_the_image_would(procs, tmp_path):
    image = _image()
    argv = image["entrypoint"] + image["cmd"]
    assert argv[:4] == ["python", "-m", "graceful", "serve"] and "--workers" in argv
    assert f"web=0.0.0.0:{image['expose']}" in argv
    # docker stop waits 10 s before SIGKILL: the drain must end before that
    assert _seconds_after(argv, "--graceful-timeout", 30) < 10
    port = free_port()
    argv = _substitute(argv, port, str(tmp_path / "unused.pid"))
    proc = procs.spawn(argv, cwd=image["workdir"].replace("/srv/graceful", ROOT), env=_env())
    upgrade = _signal_in(_header(os.path.join("docker", "Dockerfile"))["Upgrade"][0])
    _master_smoke(proc, port, upgrade, image["stopsignal"],
                  workers=int(argv[argv.index("--workers") + 1]))


def test_kubernetes_deployment(procs, tmp_path):
    with open(os.path.join(EXAMPLES, "kubernetes", "deployment.yaml")) as f:
        deployment = _yaml.load(f.read())
    assert (deployment["apiVersion"], deployment["kind"]) == ("apps/v1", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["selector"]["matchLabels"] == \
        deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = pod["containers"]
    image = _image()
    assert container["image"].split(":")[0] == image["tag"]
    # command would replace the image's ENTRYPOINT, args its CMD
    argv = container.get("command", image["entrypoint"]) + container["args"]
    assert all(isinstance(arg, str) for arg in argv), argv
    delay = _seconds_after(argv, "--shutdown-delay", 0)
    timeout = _seconds_after(argv, "--graceful-timeout", 30)
    assert delay > 0
    assert pod["terminationGracePeriodSeconds"] > delay + timeout
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == argv[argv.index("--ready-path") + 1]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    probe_port = ports[probe["port"]] if isinstance(probe["port"], str) else probe["port"]
    assert f"web=0.0.0.0:{probe_port}" in argv

    port = free_port()
    argv = _substitute(argv, port, str(tmp_path / "unused.pid"))
    # the same command, with a shorter lame duck so the test stays quick; the request during
    # it must start within that window after SIGTERM, so not so short that a loaded machine
    # can delay this process past it (1 s could)
    argv[argv.index("--shutdown-delay") + 1] = "3"
    proc = procs.spawn(argv, cwd=image["workdir"].replace("/srv/graceful", ROOT), env=_env())
    wait_for(lambda: _get_or_none(port), 30, what="the pod to serve")
    assert _status(http_get(port, probe["path"])) == 200

    def lame_duck():
        _served_by(http_get(port))  # SIGTERM: still serving while endpoints are updated

    upgrades = _header(os.path.join("kubernetes", "deployment.yaml"))["Upgrade"]
    upgrade = _signal_in(next(u for u in upgrades if "kill" in u))  # the in-place one
    _master_smoke(proc, port, upgrade, image["stopsignal"],
                  workers=int(argv[argv.index("--workers") + 1]), during_stop=lame_duck)


def test_yaml_subset_parser():
    assert _yaml.load("a: 1\nb:\n  - x\n  - 'y z'\n  - k: v  # comment\n    j: \"2\"\n"
                      "c:\n- true\n- ~\nd: {}\n") == \
        {"a": 1, "b": ["x", "y z", {"k": "v", "j": "2"}], "c": [True, None], "d": {}}
    assert _yaml.load_all("a: 1\n---\n- - 1\n  - 2\n") == [{"a": 1}, [[1, 2]]]
    for bad in ("a: [1, 2]", "a: 1\n  b: 2", "a: |\n  x", "a: 1\na: 2", "- a\nb: 1", "a: 'x"):
        with pytest.raises(_yaml.YAMLError):
            _yaml.load(bad)


# -- nginx ---------------------------------------------------------------------------------------

def _nginx_structure(text: str) -> Dict[str, object]:
    """Balanced braces, every directive ended by ';', and the upstream's servers."""
    depth, statement, upstreams, proxy_pass = 0, "", {}, []
    current = None
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        for token in re.findall(r'"[^"]*"|[{};]|[^\s{};"]+', line):
            if token == "{":
                words = statement.split()
                if words[:1] == ["upstream"]:
                    current = upstreams.setdefault(words[1], [])
                depth, statement = depth + 1, ""
            elif token == "}":
                assert statement == "" and depth > 0, "unbalanced '}' or a directive without ';'"
                depth -= 1
                current = None if depth == 0 else current
            elif token == ";":
                words = statement.split()
                if current is not None and words[:1] == ["server"]:
                    current.append(words[1])
                if words[:1] == ["proxy_pass"]:
                    proxy_pass.append(words[1])
                statement = ""
            else:
                statement += " " + token
    assert depth == 0 and statement.strip() == "", "unbalanced '{' or a directive without ';'"
    return {"upstreams": upstreams, "proxy_pass": proxy_pass}


def test_nginx_upstream(procs, tmp_path):
    with open(os.path.join(EXAMPLES, "nginx", "upstream.conf")) as f:
        snippet = f.read()
    found = _nginx_structure(snippet)
    (name, servers), = found["upstreams"].items()
    assert found["proxy_pass"] == [f"http://{name}"]
    # it points at the port the other examples serve on
    assert servers == _ADDRESS.findall(_header("wsgi_app.py")["Run it"][0]) == ["127.0.0.1:8000"]
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        pytest.skip("nginx is not installed: checked the structure only")
    # Run it for real in front of the WSGI example: one request through nginx, an upgrade of
    # the app behind it, then one more request.
    app_port, proxy_port, pidfile = free_port(), free_port(), str(tmp_path / "app.pid")
    snippet = snippet.replace("127.0.0.1:8000", f"127.0.0.1:{app_port}")
    snippet = re.sub(r"listen\s+\d+;", f"listen 127.0.0.1:{proxy_port};", snippet)
    (tmp_path / "upstream.conf").write_text(snippet)
    temp = "".join(f"    {kind}_temp_path {tmp_path / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\nmaster_process on;\nworker_processes 1;\npid {tmp_path / 'nginx.pid'};\n"
        f"error_log {tmp_path / 'error.log'};\nevents {{ worker_connections 64; }}\n"
        f"http {{\n{temp}    access_log off;\n    include {tmp_path / 'upstream.conf'};\n}}\n")
    base = [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    check = subprocess.run(base + ["-t"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=60)
    assert check.returncode == 0, check.stdout.decode(errors="replace")
    header = _header("wsgi_app.py")
    app = procs.spawn(_substitute(shlex.split(header["Run it"][0]), app_port, pidfile), cwd=ROOT,
                      env=_env())
    wait_for(lambda: _get_or_none(app_port), 30, what="the app")
    proxy = procs.spawn(base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reply = wait_for(lambda: _get_or_none(proxy_port), 30, what="nginx")
    assert _served_by(reply) == app.pid
    os.kill(app.pid, _signal_in(header["Upgrade"][0]))
    new = _pid_changed(pidfile, app.pid)
    assert app.wait(timeout=30) == 0
    assert _served_by(http_get(proxy_port)) == new
    proxy.send_signal(signal.SIGQUIT)
    assert proxy.wait(timeout=30) == 0
    os.kill(new, _signal_in(header["Stop"][0]))
    wait_for(lambda: process_state(new) in (None, "Z"), 30, what="the app to exit")
    reap_orphans()
