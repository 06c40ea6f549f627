"""One Config: every option of ``graceful serve`` and ``graceful run``, and where it came from.

Each option is declared once, in ``OPTIONS``. The command-line parser, the environment
(``GRACEFUL_<OPTION>``), the config file and ``--print-config`` are all built from that table, so
an option added here exists everywhere at once and is never re-listed by hand.

Precedence, lowest first: the default, the config file (``--config FILE`` or
``GRACEFUL_CONFIG``), the environment, the command line.

The file format is INI, read by the standard library's ``configparser``: it is the one format
with comments that every supported Python (3.9-3.13) can read without a third-party package
(``tomllib`` arrived in 3.11, and JSON has no comments). Keys go in a ``[graceful]`` section
and are the long option names, with ``-`` or ``_``. Repeatable options (``bind``) take a comma
or newline separated list, in the file and in the environment alike. A comment after a value
needs a space before its ``;`` or ``#``::

    [graceful]
    app = myproject.wsgi:application
    bind = web=0.0.0.0:8000, admin=unix:/run/app-admin.sock
    workers = 4
    graceful-timeout = 60   ; seconds

A worker or successor started by graceful receives the effective Config as a whole (JSON in
``GRACEFUL_EFFECTIVE_CONFIG``), so nothing is lost or re-spelled on the way. A self re-exec
runs the original command again and so re-reads the file: a changed file deploys by SIGHUP, and
a bad one is a rollback.

Secret values (``--keyfile-password``) are never put in that variable: an environment is
readable in ``/proc/PID/environ`` and inherited by every program the application starts. They
travel in an anonymous, sealed in-memory file (``memfd``) that the worker inherits, named by
``GRACEFUL_SECRETS_FD``; the worker reads it once as it loads its Config and closes it.
"""

from __future__ import annotations

import argparse
import configparser
import difflib
import fcntl
import functools
import json
import os
import shlex
import signal
import sys
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from .errors import GracefulError

__all__ = ["Config", "ConfigError", "OPTIONS", "Option"]

ENV_PREFIX = "GRACEFUL_"
ENV_CONFIG_FILE = "GRACEFUL_CONFIG"
ENV_EFFECTIVE = "GRACEFUL_EFFECTIVE_CONFIG"
ENV_SECRETS_FD = "GRACEFUL_SECRETS_FD"
SECTION = "graceful"
# The test suite's switch for tests/integration/ (tests/integration/conftest.py): set in the
# environment of every server those tests start, and no option of graceful.
_ENV_TEST_INTEGRATION = "GRACEFUL_INTEGRATION"

SERVE, RUN = "serve", "run"
BOTH = frozenset({SERVE, RUN})


class ConfigError(GracefulError):
    """An option has a bad value, or a key names no option."""


# -- value kinds: text -> value (ValueError with a reason), value -> text -------------------------

class Kind:
    """How an option's value is read from text and written back."""

    def __init__(self, parse: Callable[[str], Any], show: Callable[[Any], str] = str,
                 metavar: Optional[str] = None) -> None:
        self.parse = parse
        self.show = show
        self.metavar = metavar


def _text(text: str) -> str:
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _positive_int(text: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a positive whole number")
    return int(text)


def _count(text: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _flag(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a yes/no value (use true or false)")


def _signal(text: str) -> int:
    name = text.strip().upper()
    if name.isdigit():
        try:
            return int(signal.Signals(int(name)))
        except ValueError:
            pass
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"{text!r} is not a signal name (e.g. TERM, QUIT)") from None


def _uid(text: str) -> int:
    import pwd

    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise ValueError(f"{text!r} is neither a uid number nor a user name on this "
                         f"machine") from None


def _choice(*choices: str) -> Kind:
    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return word
    return Kind(parse, metavar="|".join(choices))


def _optional(kind: Kind) -> Kind:
    """Empty text means 'not set' (None)."""
    return Kind(lambda text: kind.parse(text) if text.strip() else None,
                lambda value: "" if value is None else kind.show(value), kind.metavar)


def _show_seconds(value: float) -> str:
    return f"{value:g}"


def _show_signal(value: int) -> str:
    return signal.Signals(value).name[3:]


TEXT = Kind(_text)
SECONDS = Kind(_seconds, _show_seconds, "SECONDS")
POSITIVE = Kind(_positive_int, metavar="N")
COUNT = Kind(_count, metavar="N")
FLAG = Kind(_flag, lambda value: "true" if value else "false")
ON_OFF = Kind(_flag, lambda value: "on" if value else "off", "on|off")  # takes a value
SIGNAL = Kind(_signal, _show_signal, "SIGNAL")
UID = Kind(_uid, metavar="UID")


class PerCommand:
    """A default that differs between ``serve`` and ``run``."""

    def __init__(self, serve: Any, run: Any) -> None:
        self.by_command = {SERVE: serve, RUN: run}


def _default(option: "Option", command: str) -> Any:
    value = option.default
    if isinstance(value, PerCommand):
        value = value.by_command[command]
    return list(value) if isinstance(value, list) else value


class Option:
    """One option: its name (``graceful-timeout``), kind, default, help and commands."""

    def __init__(self, name: str, kind: Kind, default: Any, help: str, *,
                 commands: FrozenSet[str] = BOTH, short: Optional[str] = None,
                 repeat: bool = False, positional: bool = False,
                 metavar: Optional[str] = None, secret: bool = False) -> None:
        self.name = name
        self.kind = kind
        self.default = default
        self.help = help
        self.commands = commands
        self.short = short
        self.repeat = repeat
        self.positional = positional
        self.metavar = metavar or kind.metavar
        self.secret = secret  # never printed (--print-config shows that it is set)

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.attr.upper()

    def parse(self, text: str) -> Any:
        """A value from the text of a file or an environment variable."""
        if self.name == "command":
            return shlex.split(text)
        if self.repeat:
            return [self.kind.parse(item.strip()) for item in _split_list(text)]
        return self.kind.parse(text)

    def show(self, value: Any) -> str:
        if self.name == "command":
            return shlex.join(value)
        if self.repeat:
            return ", ".join(self.kind.show(item) for item in value)
        return self.kind.show(value)


def _split_list(text: str) -> List[str]:
    return [item for item in text.replace("\n", ",").split(",") if item.strip()]


S, R = frozenset({SERVE}), frozenset({RUN})
OPTIONS: Tuple[Option, ...] = (
    # what to run
    Option("app", TEXT, None, "MODULE:APP, path/to/file.py:APP or MODULE:factory()",
           commands=S, positional=True, metavar="APP"),
    Option("command", TEXT, [], "the server command; {fd:NAME} is replaced by listener NAME's fd",
           commands=R, positional=True, metavar="-- COMMAND ..."),
    Option("bind", TEXT, PerCommand(["web=127.0.0.1:8000"], []), "listen here (repeatable); e.g. web=:8000, [::1]:8000, "
           "unix:/run/app.sock, fd://3",
           short="-b", repeat=True, metavar="[NAME=]ADDRESS"),
    Option("interface", _choice("auto", "wsgi", "asgi"), "auto",
           "the application's interface (auto: detected)", commands=S),
    Option("workers", _optional(POSITIVE), PerCommand(None, 1),
           "worker processes; for serve: N processes behind a master with a stable pid "
           "(default: one process, no master)"),
    Option("threads", POSITIVE, 8, "WSGI worker threads", commands=S),
    Option("lifespan", _choice("auto", "on", "off"), "auto", "ASGI lifespan protocol",
           commands=S),
    # master mode (graceful run)
    Option("ready", TEXT, "delay:1", "when a worker counts as ready: fd, notify or "
           "delay:SECONDS", commands=R, metavar="fd|notify|delay:SECONDS"),
    Option("stop-signal", SIGNAL, int(signal.SIGTERM),
           "signal that stops a worker gracefully", commands=R),
    Option("max-failures", POSITIVE, 5, "crashes in a row before a worker slot that never "
           "served is given up; a slot that served is restarted forever, backing off up to 30 s"),
    Option("keep-trying", FLAG, False,
           "never give a slot up (the first generation must still start)"),
    Option("timeout", _optional(SECONDS), None, "replace a worker whose serving loop sent no "
           "heartbeat for this long (hung, stopped); graceful's own servers beat by themselves "
           "(default: off)"),
    Option("watchdog", _optional(SECONDS), None, "replace a worker that sent no systemd "
           "WATCHDOG=1 for this long: workers get NOTIFY_SOCKET, WATCHDOG_USEC and "
           "WATCHDOG_PID (default: off)", commands=R),
    Option("init", FLAG, False, "a minimal init for containers: run COMMAND once, forward "
           "signals, reap zombies, exit with its status", commands=R),
    # lifecycle
    Option("pidfile", _optional(TEXT), None, "write the serving process's pid here",
           metavar="PATH"),
    Option("graceful-timeout", SECONDS, 30.0,
           "seconds a drain may take before connections are closed"),
    Option("shutdown-delay", SECONDS, 0.0, "on SIGTERM, keep serving this long before draining"),
    Option("ready-timeout", SECONDS, 30.0, "seconds a successor has to become ready"),
    Option("ready-path", _optional(TEXT), None,
           "answer this path with 200 while serving, 503 otherwise", commands=S, metavar="PATH"),
    Option("reuse-port", FLAG, False, "bind with SO_REUSEPORT"),
    # HTTP limits and timeouts
    Option("header-timeout", SECONDS, 10.0, "seconds a client has to send a request head",
           commands=S),
    Option("keepalive-timeout", SECONDS, 5.0, "seconds an idle keep-alive connection stays open",
           commands=S),
    Option("body-timeout", SECONDS, 30.0,
           "seconds without progress while reading a request body or sending a response",
           commands=S),
    Option("max-request-line", POSITIVE, 8190, "longest request line in bytes, else 414",
           commands=S),
    Option("max-header-bytes", POSITIVE, 65536, "most header bytes in a request, else 431",
           commands=S),
    Option("max-headers", POSITIVE, 100, "most header fields in a request, else 431",
           commands=S),
    Option("max-body", _optional(POSITIVE), None,
           "largest request body in bytes, else 413 (no limit)", commands=S),
    # WebSocket (ASGI)
    Option("ws-max-size", POSITIVE, 16 << 20, "largest WebSocket message in bytes, after "
           "inflating; a bigger one is closed with 1009", commands=S),
    Option("ws-per-message-deflate", ON_OFF, True,
           "accept the permessage-deflate compression clients offer", commands=S),
    Option("ws-ping-interval", SECONDS, 20.0, "seconds between keepalive pings, 0 for none",
           commands=S),
    Option("ws-ping-timeout", SECONDS, 20.0, "seconds a ping may stay unanswered before the "
           "WebSocket is closed, 0 for never", commands=S),
    Option("ws-drain-time", SECONDS, 3.0, "on an upgrade or stop, close WebSockets (1012 / "
           "1001) spread over this many seconds", commands=S),
    # behind a proxy
    Option("forwarded-allow-ips", _optional(TEXT), None,
           "peers whose X-Forwarded-* / Forwarded headers are believed: addresses, networks, "
           "unix, * (default: FORWARDED_ALLOW_IPS, else 127.0.0.1,::1,unix)", commands=S,
           metavar="LIST"),
    Option("proxy-protocol", FLAG, False,
           "every connection starts with a PROXY protocol v1/v2 header (HAProxy send-proxy, "
           "AWS NLB)", commands=S),
    Option("proxy-allow-from", _optional(TEXT), None,
           "peers allowed to send a PROXY header; others are closed (default: "
           "127.0.0.1,::1,unix)", commands=S, metavar="LIST"),
    Option("root-path", TEXT, "", "the URL path the application is mounted under (WSGI "
           "SCRIPT_NAME, ASGI root_path)", commands=S, metavar="PATH"),
    # TLS
    Option("certfile", _optional(TEXT), None, "serve HTTPS with this PEM certificate (chain)",
           commands=S, metavar="FILE"),
    Option("keyfile", _optional(TEXT), None, "the PEM private key (default: in --certfile)",
           commands=S, metavar="FILE"),
    Option("keyfile-password", _optional(TEXT), None,
           "the password of an encrypted --keyfile (better: GRACEFUL_KEYFILE_PASSWORD)",
           commands=S, metavar="PASSWORD", secret=True),
    Option("ca-certs", _optional(TEXT), None, "PEM CAs that sign client certificates",
           commands=S, metavar="FILE"),
    Option("cert-reqs", _choice("none", "optional", "required"), "none",
           "ask for a client certificate (mTLS); needs --ca-certs", commands=S),
    Option("ciphers", _optional(TEXT), None, "OpenSSL cipher list for TLS 1.2",
           commands=S, metavar="LIST"),
    # handoff to an unrelated process
    Option("handoff-socket", _optional(TEXT), None,
           "serve a Unix socket (0600, or @abstract) from which an unrelated new process can "
           "take the listeners over", metavar="PATH"),
    Option("takeover", _optional(TEXT), None,
           "take the listeners over from the process serving this handoff socket, instead of "
           "binding (with --reuse-port: bind beside its listeners, and take the traffic once "
           "ready)", metavar="PATH"),
    Option("handoff-uid", UID, [], "a user (number or name) allowed to take the listeners over "
           "(repeatable; default: only our own effective uid)", repeat=True),
    # logging
    Option("access-log", _optional(TEXT), None,
           "Common Log Format to FILE, or - for stderr; reopened on SIGUSR1", commands=S,
           metavar="FILE"),
    Option("log-level", _choice("debug", "info", "warning", "error", "critical"), "info",
           "how much graceful logs"),
)
_BY_NAME: Dict[str, Option] = {option.name: option for option in OPTIONS}
_SECRETS = frozenset(option.attr for option in OPTIONS if option.secret)


def options_for(command: str) -> List[Option]:
    return [option for option in OPTIONS if command in option.commands]


# -- the command line -------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add ``command``'s options to ``parser``. Nothing given keeps its attribute unset, so
    ``Config.load`` can tell the command line from the defaults."""
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"read options from this INI file ([{SECTION}] section; env "
                             f"{ENV_CONFIG_FILE})")
    parser.add_argument("--print-config", action="store_true", default=argparse.SUPPRESS,
                        help="print every effective option and where it came from, then exit")
    for option in options_for(command):
        _add_argument(parser, option, command)


def _add_argument(parser: argparse.ArgumentParser, option: Option, command: str) -> None:
    text = option.help
    default = _default(option, command)
    if not option.positional and default not in (None, [], False):
        text += f" ({option.show(default)})"
    text += f" [env {option.env}]"
    if option.name == "command":
        parser.add_argument(option.attr, nargs=argparse.REMAINDER, metavar=option.metavar,
                            help=text, default=argparse.SUPPRESS)
        return
    if option.positional:
        parser.add_argument(option.attr, nargs="?", metavar=option.metavar, help=text,
                            default=argparse.SUPPRESS, type=_argparse_type(option))
        return
    flags = ["--" + option.name] + ([option.short] if option.short else [])
    if option.kind is FLAG:
        parser.add_argument(*flags, dest=option.attr, action=argparse.BooleanOptionalAction,
                            help=text, default=argparse.SUPPRESS)
        return
    parser.add_argument(*flags, dest=option.attr, metavar=option.metavar, help=text,
                        default=argparse.SUPPRESS, type=_argparse_type(option),
                        action="append" if option.repeat else "store")


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option.kind.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = option.name  # argparse names the type in some messages
    return parse


# -- the Config ----------------------------------------------------------------------------------

class Config:
    """The effective options of one command, with the source of each value.

    Read values as attributes (``config.graceful_timeout``); ``source(name)`` says where a value
    came from: ``default``, ``file PATH``, ``env NAME``, ``command line`` or ``inherited``.
    """

    def __init__(self, command: str, values: Mapping[str, Any],
                 sources: Optional[Mapping[str, str]] = None,
                 config_file: Optional[str] = None) -> None:
        self.subcommand = command
        self.config_file = config_file
        self._values: Dict[str, Any] = {}
        self._sources: Dict[str, str] = {}
        for option in options_for(command):
            self._values[option.attr] = values.get(option.attr, _default(option, command))
            self._sources[option.attr] = (sources or {}).get(option.attr, "default")

    def __getattr__(self, attr: str) -> Any:
        try:
            return self.__dict__["_values"][attr]
        except KeyError:
            raise AttributeError(f"no option {attr!r} for graceful {self.subcommand}") from None

    def source(self, name: str) -> str:
        return self._sources[name.replace("-", "_")]

    def replace(self, **values: Any) -> "Config":
        """A copy with some values changed (their source is ``graceful``)."""
        merged = dict(self._values, **values)
        sources = dict(self._sources, **{key: "graceful" for key in values})
        return Config(self.subcommand, merged, sources, self.config_file)

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, command: str, args: Optional[argparse.Namespace] = None,
             environ: Optional[Mapping[str, str]] = None) -> "Config":
        """The effective Config: defaults < config file < environment < command line.

        When graceful started this process with its effective Config (a worker or successor),
        that Config is used as it is, and the variable is removed from ``os.environ`` so that
        programs this one starts do not mistake it for theirs."""
        env = os.environ if environ is None else environ
        inherited = env.get(ENV_EFFECTIVE)
        if inherited is not None:
            secrets_fd = env.get(ENV_SECRETS_FD)
            if environ is None:
                os.environ.pop(ENV_EFFECTIVE, None)
                os.environ.pop(ENV_SECRETS_FD, None)
            config = cls.from_json(inherited)
            if secrets_fd is not None:
                # Closed only in the process it was handed to (os.environ), where nothing
                # else may inherit it; a caller's own mapping names a descriptor it keeps.
                config._values.update(_read_secrets(secrets_fd, close=environ is None))
            return config
        given = vars(args) if args is not None else {}
        values: Dict[str, Any] = {}
        sources: Dict[str, str] = {}
        path = given.get("config") or env.get(ENV_CONFIG_FILE) or None
        if path:
            for attr, value in _read_file(path, command).items():
                values[attr], sources[attr] = value, f"file {path}"
        for attr, (value, name) in _read_environ(env, command).items():
            values[attr], sources[attr] = value, f"env {name}"
        for option in options_for(command):
            if option.attr in given:
                value = given[option.attr]
                if option.name == "command":
                    value = _strip_dashes(value)
                    if not value:
                        continue
                values[option.attr], sources[option.attr] = value, "command line"
        return cls(command, values, sources, path)

    # -- passing it on ---------------------------------------------------------------------------

    def to_json(self) -> str:
        """The Config without its secret values (``environ`` hands those over apart)."""
        return json.dumps({"command": self.subcommand, "config_file": self.config_file,
                           "values": self._public_values(), "sources": self._sources})

    def _public_values(self) -> Dict[str, Any]:
        return {attr: value for attr, value in self._values.items() if attr not in _SECRETS}

    def _secret_values(self) -> Dict[str, Any]:
        return {attr: value for attr, value in self._values.items()
                if attr in _SECRETS and value is not None}

    @classmethod
    def from_json(cls, text: str) -> "Config":
        try:
            data = json.loads(text)
            command = data["command"]
            if command not in BOTH:
                raise ValueError(command)
            sources = {key: f"inherited ({value})" if not value.startswith("inherited")
                       else value for key, value in data["sources"].items()}
            return cls(command, data["values"], sources, data.get("config_file"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{ENV_EFFECTIVE} is not a configuration graceful wrote; unset "
                              f"it") from None

    def environ(self) -> Dict[str, str]:
        """The variables that hand this Config to a child process as a whole: the JSON, and
        the number of an inherited descriptor that holds the secret values, if any are set."""
        env = {ENV_EFFECTIVE: self.to_json()}
        secrets = self._secret_values()
        if secrets:
            env[ENV_SECRETS_FD] = str(_secrets_fd(json.dumps(secrets, sort_keys=True),
                                                  len(self._values.get("bind") or ())))
        return env

    # -- showing it ------------------------------------------------------------------------------

    def format(self) -> str:
        """Every effective value as an INI file, each with its source as a comment."""
        lines = [f"[{SECTION}]"]
        rows = [(option.name, _shown(option, self._values[option.attr]),
                 self._sources[option.attr]) for option in options_for(self.subcommand)]
        width = max(len(f"{name} = {value}") for name, value, _ in rows)
        for name, value, source in rows:
            entry = f"{name} = {value}".rstrip()
            lines.append(f"{entry.ljust(width)}  ; {source}")
        return "\n".join(lines)


def secret_env_names() -> FrozenSet[str]:
    """The environment variables that carry secret options (``GRACEFUL_KEYFILE_PASSWORD``): a
    process that hands its Config on should not copy them into its children's environment."""
    return frozenset(option.env for option in OPTIONS if option.secret)


# -- secrets: an inherited, sealed memfd rather than the environment ------------------------------

_SECRETS_MAX = 1 << 16
# The descriptor sits this far above the listeners: a master's posix_spawn places listeners and
# its own pipes at fds 3, 4, ... by dup2, and would overwrite anything inherited down there.
_SECRETS_FD_MARGIN = 64
_secrets_fds: Dict[str, int] = {}  # the secrets' JSON -> its inheritable descriptor


def _secrets_fd(text: str, listeners: int) -> int:
    """One inheritable, read-only descriptor per distinct set of secrets, kept open for the
    life of the process: every worker of every generation with those secrets reads it, and a
    respawn may come at any time. Reloads with the same password reuse it."""
    fd = _secrets_fds.get(text)
    if fd is None:
        fd = _secrets_fds[text] = _sealed_file(text.encode(), _SECRETS_FD_MARGIN + listeners)
    return fd


def _sealed_file(data: bytes, at_least: int) -> int:
    try:
        memfd = os.memfd_create("graceful-secrets", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError) as exc:
        raise ConfigError(f"--keyfile-password: cannot hand it to the workers without the "
                          f"environment (memfd_create: {exc}); run without --workers") from None
    try:
        os.write(memfd, data)
        seals = (fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                 | fcntl.F_SEAL_WRITE)  # a worker cannot change what its siblings read
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, seals)
        return fcntl.fcntl(memfd, fcntl.F_DUPFD, at_least)  # F_DUPFD: inheritable
    except OSError as exc:
        raise ConfigError(f"--keyfile-password: cannot hand it to the workers ({exc})") from None
    finally:
        os.close(memfd)


def _read_secrets(text: str, close: bool) -> Dict[str, Any]:
    try:
        fd = int(text)
        data = os.pread(fd, _SECRETS_MAX, 0)
        if close:
            os.close(fd)
        secrets = json.loads(data)
        if not isinstance(secrets, dict) or not set(secrets) <= _SECRETS:
            raise ValueError(secrets)
        return secrets
    except (ValueError, OSError, TypeError):
        raise ConfigError(f"{ENV_SECRETS_FD}={text!r} names no secrets graceful wrote; unset "
                          f"it") from None


def _shown(option: Option, value: Any) -> str:
    if option.secret and value:
        return "(set, not shown)"
    return option.show(value)


def _strip_dashes(command: List[str]) -> List[str]:
    return command[1:] if command[:1] == ["--"] else list(command)


def _read_file(path: str, command: str) -> Dict[str, Any]:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"),
                                       default_section="graceful:defaults")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"--config {path}: not an INI file ({first})") from None
    sections = parser.sections()
    if SECTION not in sections:
        raise ConfigError(f"--config {path}: no [{SECTION}] section (found: "
                          f"{', '.join(sections) or 'none'})")
    extra = [name for name in sections if name != SECTION]
    if extra:
        raise ConfigError(f"--config {path}: unknown section [{extra[0]}]; put every option in "
                          f"[{SECTION}]")
    values = {}
    for key, text in parser.items(SECTION):
        option = _option_for_key(key, command, f"--config {path}: key {key!r}")
        values[option.attr] = _parse(option, text, f"--config {path}: {key}")
    return values


@functools.lru_cache(maxsize=None)
def _internal_env() -> FrozenSet[str]:
    """The ``GRACEFUL_*`` variables that are not options: what graceful sets for its own children
    (or reads as a switch), so they are never an "unknown option".

    Collected from the ``ENV_*`` constants of the modules that own them, so a new variable is
    known here the moment it is declared. The modules are imported on first use, not with this
    one: reuseport loads ctypes, which only ``--reuse-port`` otherwise needs.
    """
    from . import fdenv, heartbeat, master, reuseport, upgrader

    modules = (fdenv, heartbeat, master, reuseport, upgrader, sys.modules[__name__])
    return frozenset(value for module in modules for name, value in vars(module).items()
                     if name.startswith(("ENV_", "_ENV_")) and isinstance(value, str)
                     and value.startswith(ENV_PREFIX) and value != ENV_PREFIX)


def _read_environ(env: Mapping[str, str], command: str) -> Dict[str, Tuple[Any, str]]:
    values = {}
    internal = _internal_env()
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in internal:
            continue
        key = name[len(ENV_PREFIX):].lower()
        option = _option_for_key(key, None, f"environment variable {name}", env_name=True)
        if command not in option.commands:
            continue  # an environment shared by serve and run: this one is the other's
        values[option.attr] = (_parse(option, env[name], name), name)
    return values


def _option_for_key(key: str, command: Optional[str], where: str,
                    env_name: bool = False) -> Option:
    name = key.strip().lower().replace("_", "-")
    option = _BY_NAME.get(name)
    if option is None:
        known = [o.env if env_name else o.name for o in OPTIONS]
        spelled = (ENV_PREFIX + name.replace("-", "_").upper()) if env_name else name
        close = difflib.get_close_matches(spelled, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see graceful serve --help"
        raise ConfigError(f"{where}: no such option{hint}")
    if command is not None and command not in option.commands:
        other = " and ".join(f"graceful {c}" for c in sorted(option.commands))
        raise ConfigError(f"{where}: an option of {other}, not of graceful {command}")
    return option


def _parse(option: Option, text: str, where: str) -> Any:
    try:
        return option.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def describe(options: Iterable[Option]) -> List[Tuple[str, str, str]]:
    """(option, environment variable, default) rows, for documentation."""
    return [(o.name, o.env, o.show(_default(o, SERVE if SERVE in o.commands else RUN)))
            for o in options]
