"""``graceful serve APP``: load a WSGI or ASGI application and run it under the Upgrader.

APP is ``module:attribute``, ``path/to/file.py:attribute`` or ``module:factory()`` (called with
no arguments). The interface is detected from the callable: a coroutine function (or an object
whose ``__call__`` is one) taking three arguments is ASGI, anything else WSGI.
SIGHUP re-executes the same command, so the successor imports the code now on disk.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, TextIO, Tuple

from .errors import GracefulError

if TYPE_CHECKING:
    import socket

    from .config import Config

__all__ = ["load_app", "detect_interface", "AppLoadError", "AccessLog", "run"]

log = logging.getLogger("graceful")


class AppLoadError(GracefulError):
    """The application named on the command line cannot be loaded."""


def load_app(spec: str) -> Callable[..., Any]:
    """Import ``module:attr``, ``file.py:attr`` or ``module:factory()``."""
    module_text, colon, attr_text = spec.rpartition(":")
    if not colon or not module_text or not attr_text:
        raise AppLoadError(f"cannot load {spec!r}: write MODULE:APP, path/to/file.py:APP or "
                           f"MODULE:factory()")
    call = attr_text.endswith("()")
    if call:
        attr_text = attr_text[:-2]
    module = _import(module_text, spec)
    target: Any = module
    for part in attr_text.split("."):
        if not part.isidentifier():
            raise AppLoadError(f"cannot load {spec!r}: {attr_text!r} is not an attribute name")
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppLoadError(f"cannot load {spec!r}: {module_text} has no attribute "
                               f"{attr_text!r}") from None
    if call:
        target = target()
    if not callable(target):
        raise AppLoadError(f"cannot load {spec!r}: {attr_text} is a {type(target).__name__}, "
                           f"not an application callable")
    return target


def _import(module_text: str, spec: str) -> Any:
    if module_text.endswith(".py") or os.sep in module_text:
        path = os.path.abspath(module_text)
        if not os.path.isfile(path):
            raise AppLoadError(f"cannot load {spec!r}: no file {path}")
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)  # so the app's own sibling imports work
        name = os.path.splitext(os.path.basename(path))[0]
        file_spec = importlib.util.spec_from_file_location(name, path)
        assert file_spec is not None and file_spec.loader is not None
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[name] = module
        file_spec.loader.exec_module(module)
        return module
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like gunicorn and uvicorn: modules in the cwd load
    try:
        return importlib.import_module(module_text)
    except ModuleNotFoundError as exc:
        if exc.name and module_text.startswith(exc.name):
            raise AppLoadError(f"cannot load {spec!r}: no module named {exc.name!r} (run from "
                               f"the project directory, or set PYTHONPATH)") from None
        raise


def detect_interface(app: Any) -> str:
    """``"asgi"`` for an ASGI 3 callable, else ``"wsgi"``."""
    call = app if inspect.isroutine(app) else getattr(app, "__call__", None)
    if inspect.iscoroutinefunction(call):
        return "asgi"
    return "wsgi"


class AccessLog:
    """Common Log Format lines to stderr (``-``) or a file, reopened on SIGUSR1."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._file: TextIO = sys.stderr if target == "-" else self._open()

    def _open(self) -> TextIO:
        try:
            return open(self.target, "a", buffering=1, encoding="utf-8")
        except OSError as exc:
            raise GracefulError(f"cannot open access log {self.target}: {exc.strerror}") from None

    def __call__(self, line: str) -> None:
        with self._lock:
            self._file.write(line + "\n")

    def reopen(self) -> None:
        """After logrotate moved the file: write to a new one at the same path."""
        if self.target == "-":
            return
        with self._lock:
            old, self._file = self._file, self._open()
        old.close()


def run(config: "Config") -> int:
    """The body of ``graceful serve``: one process that serves and re-executes itself."""
    from ._options import ServerOptions
    from .http11 import Limits
    from .upgrader import Upgrader

    binds = _binds(config)
    _configure_logging(config)
    gate = _take_drain_gate()  # first: nothing we start may inherit it
    access_log = AccessLog(config.access_log) if config.access_log else None
    upgrader = Upgrader(pidfile=config.pidfile, ready_timeout=config.ready_timeout,
                        graceful_timeout=config.graceful_timeout,
                        shutdown_delay=config.shutdown_delay, **handoff_options(config))
    if access_log is not None:
        upgrader.on_signal(signal.SIGUSR1, lambda signum: access_log.reopen())
    try:
        app = load_app(config.app)
    except BaseException:
        upgrader.close()
        if gate is not None:
            gate.close()
        raise
    interface = detect_interface(app) if config.interface == "auto" else config.interface
    try:
        edge = _edge_options(config)  # a bad certificate fails here, before ready(): rollback
    except BaseException:
        upgrader.close()
        if gate is not None:
            gate.close()
        raise
    options = ServerOptions(header_timeout=config.header_timeout,
                            keepalive_timeout=config.keepalive_timeout,
                            body_timeout=config.body_timeout, ready_path=config.ready_path,
                            access_log=access_log,
                            ws_max_size=config.ws_max_size,
                            ws_per_message_deflate=config.ws_per_message_deflate,
                            ws_ping_interval=config.ws_ping_interval,
                            ws_ping_timeout=config.ws_ping_timeout,
                            ws_drain_time=config.ws_drain_time,
                            limits=Limits(max_request_line=config.max_request_line,
                                          max_header_bytes=config.max_header_bytes,
                                          max_headers=config.max_headers,
                                          max_body=config.max_body),
                            **edge)
    listen_options = {"reuse_port": True} if config.reuse_port else {}
    log.info("serving %s (%s) on %s", config.app, interface.upper(), ", ".join(binds))
    if interface == "asgi":
        from .asgi import ASGIServer

        server = ASGIServer(app, upgrader, binds, options=options, lifespan=config.lifespan,
                            **listen_options)
        if gate is not None:
            server.drain.gate_with(gate)
        return server.serve()
    from .wsgi import WSGIServer

    if gate is not None:
        gate.close()  # no WebSockets here: nothing for the master to wait for

    return WSGIServer(app, upgrader, binds, threads=config.threads, options=options,
                      **listen_options).serve()


def _take_drain_gate() -> Optional["socket.socket"]:
    """Our end of the master's drain gate (``serve --workers``), or None; the variable is
    consumed, and the fd made close-on-exec."""
    import socket

    from .master import ENV_DRAIN_GATE_FD

    text = os.environ.pop(ENV_DRAIN_GATE_FD, None)
    if text is None:
        return None
    try:
        gate = socket.socket(fileno=int(text))
    except (ValueError, OSError) as exc:
        log.warning("ignoring %s=%r (%s): WebSockets close without waiting for the other "
                    "workers", ENV_DRAIN_GATE_FD, text, exc)
        return None
    gate.set_inheritable(False)
    return gate


def _edge_options(config: "Config") -> Dict[str, Any]:
    """ServerOptions for proxies and TLS: trust lists, PROXY protocol, root path, SSL context."""
    from .http.forwarded import parse_root_path
    from .http.trust import allow_list_text, parse_trust
    from .tls import server_context

    context = None
    if config.certfile:
        context = server_context(config.certfile, config.keyfile, config.keyfile_password,
                                 config.ca_certs, config.cert_reqs, config.ciphers)
    elif config.keyfile or config.ca_certs or config.cert_reqs != "none":
        from .tls import TLSError

        raise TLSError("--keyfile, --ca-certs and --cert-reqs need --certfile FILE")
    proxy_allow = allow_list_text(config.proxy_allow_from, os.environ,
                                  "GRACEFUL_PROXY_ALLOW_FROM")
    return {"forwarded_trust": parse_trust(allow_list_text(config.forwarded_allow_ips,
                                                           os.environ)),
            "proxy_protocol": config.proxy_protocol,
            "proxy_trust": parse_trust(proxy_allow),
            "root_path": parse_root_path(config.root_path),
            "ssl_context": context}


def run_workers(config: "Config", reread: Optional[Callable[[], "Config"]] = None) -> int:
    """``graceful serve --workers N``: a master with a stable pid over N serving processes.

    Each worker is ``graceful serve`` given the effective Config whole. On SIGHUP the master
    reads the configuration again (``reread``), so a changed file reaches the new workers, and a
    bad one fails the reload while the old workers keep serving."""
    import sys

    from .config import secret_env_names
    from .master import Master, MasterError

    binds = _binds(config)
    _configure_logging(config)
    _edge_options(config)  # a bad certificate or trust list: one line at first start, not N
    worker_command = [sys.executable, "-m", "graceful", "serve"]

    def worker_env(cfg: "Config") -> Dict[str, str]:
        return cfg.replace(workers=None, pidfile=None, handoff_socket=None, takeover=None,
                           bind=binds).environ()

    def next_generation() -> Tuple[List[str], Dict[str, str]]:
        from .config import ConfigError

        if reread is None:
            return worker_command, worker_env(config)
        try:
            fresh = reread()
        except ConfigError as exc:
            raise MasterError(f"configuration: {exc}") from None
        _warn_master_changes(config, fresh)
        return worker_command, worker_env(fresh)

    # A password the master was given in its environment reaches the workers with their
    # Config (an inherited memfd), not in an environment that the application's programs inherit.
    secrets = secret_env_names()
    inherited = {k: v for k, v in os.environ.items() if k not in secrets}
    master = Master(worker_command, binds=binds, workers=config.workers, ready="fd",
                    stop_signal=signal.SIGQUIT, pidfile=config.pidfile,
                    ready_timeout=config.ready_timeout, graceful_timeout=config.graceful_timeout,
                    shutdown_delay=config.shutdown_delay,
                    max_failures=None if config.keep_trying else config.max_failures,
                    timeout=config.timeout, env=dict(inherited, **worker_env(config)),
                    reuse_port=config.reuse_port, lame_duck_signal=signal.SIGTERM,
                    next_generation=next_generation, drain_gate=True,
                    **handoff_options(config))
    return master.run()


# Options the master itself holds: a reload cannot change them, a master upgrade (SIGUSR2) can.
_MASTER_OPTIONS = ("bind", "workers", "pidfile", "reuse_port", "handoff_socket", "takeover",
                   "handoff_uid", "graceful_timeout", "ready_timeout", "shutdown_delay",
                   "max_failures", "keep_trying", "timeout", "log_level")


def _warn_master_changes(old: "Config", new: "Config") -> None:
    changed = [name for name in _MASTER_OPTIONS if getattr(old, name) != getattr(new, name)]
    if changed:
        log.warning("reload: %s changed; the master applies that on an upgrade of itself "
                    "(SIGUSR2); the workers get the rest now",
                    ", ".join(name.replace("_", "-") for name in changed))


def _binds(config: "Config") -> List[str]:
    from .addresses import parse_bind

    binds: List[str] = list(config.bind) or ["web=127.0.0.1:8000"]
    for bind in binds:
        parse_bind(bind)  # a typo in --bind is reported before anything starts
    return binds


def _configure_logging(config: "Config") -> None:
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s [%(process)d] %(levelname)s %(message)s")


def handoff_options(config: Any) -> dict:
    """Upgrader/Master keyword arguments from the handoff options."""
    return {"handoff_socket": config.handoff_socket, "takeover": config.takeover,
            "handoff_uids": config.handoff_uid or None, "takeover_fds": not config.reuse_port}
