"""The one Config: file < environment < command line, the same values from each source, and
one clear error for a bad key or value."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _support import PYTHON, ROOT
from graceful import config
from graceful.config import OPTIONS, Config, ConfigError


def _args(command: str, argv):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, command)
    return parser.parse_args(argv)


def _values(text: str) -> list:
    """The ``--print-config`` lines without their source comments."""
    return [line.split("  ;")[0].rstrip() for line in text.splitlines()]


DEPLOYMENT = {"app": "tests.apps.wsgi_app:app", "bind": "web=127.0.0.1:8123, admin=unix:/tmp/a.sock",
              "workers": "3", "graceful-timeout": "12.5", "max-body": "1000",
              "reuse-port": "true", "handoff-uid": "0, 65534", "log-level": "warning"}


def test_file_environment_and_command_line_give_the_same_config(tmp_path):
    ini = tmp_path / "graceful.ini"
    ini.write_text("[graceful]\n" + "".join(f"{k} = {v}\n" for k, v in DEPLOYMENT.items()))
    by_file = Config.load("serve", _args("serve", ["--config", str(ini)]), {})
    env = {"GRACEFUL_" + k.upper().replace("-", "_"): v for k, v in DEPLOYMENT.items()}
    by_env = Config.load("serve", _args("serve", []), env)
    argv = [DEPLOYMENT["app"], "--bind", "web=127.0.0.1:8123", "--bind", "admin=unix:/tmp/a.sock",
            "--workers", "3", "--graceful-timeout", "12.5", "--max-body", "1000", "--reuse-port",
            "--handoff-uid", "0", "--handoff-uid", "65534", "--log-level", "warning"]
    by_argv = Config.load("serve", _args("serve", argv), {})
    assert _values(by_file.format()) == _values(by_env.format()) == _values(by_argv.format())
    assert by_file.source("workers") == f"file {ini}"
    assert by_env.source("workers") == "env GRACEFUL_WORKERS"
    assert by_argv.source("workers") == "command line"
    assert by_argv.bind == ["web=127.0.0.1:8123", "admin=unix:/tmp/a.sock"]
    assert by_argv.handoff_uid == [0, 65534] and by_argv.reuse_port is True


def test_precedence_file_then_environment_then_command_line(tmp_path):
    ini = tmp_path / "graceful.ini"
    ini.write_text("[graceful]\nthreads = 2\nheader-timeout = 3\nbody_timeout = 4\n")
    env = {"GRACEFUL_CONFIG": str(ini), "GRACEFUL_HEADER_TIMEOUT": "5", "GRACEFUL_BODY_TIMEOUT": "6"}
    cfg = Config.load("serve", _args("serve", ["x:app", "--body-timeout", "7"]), env)
    assert (cfg.threads, cfg.header_timeout, cfg.body_timeout) == (2, 5.0, 7.0)
    assert cfg.source("threads") == f"file {ini}"
    assert cfg.source("header-timeout") == "env GRACEFUL_HEADER_TIMEOUT"
    assert cfg.source("body-timeout") == "command line"
    assert cfg.source("keepalive-timeout") == "default"


def test_print_config_is_a_config_file_that_reads_back(tmp_path):
    cfg = Config.load("run", _args("run", ["--bind", "web=:8000", "--stop-signal", "QUIT", "--",
                                           "gunicorn", "--bind", "fd://{fd:web}", "app:app"]), {})
    ini = tmp_path / "again.ini"
    ini.write_text(cfg.format())
    again = Config.load("run", _args("run", ["--config", str(ini)]), {})
    assert _values(again.format()) == _values(cfg.format())
    assert again.command == ["gunicorn", "--bind", "fd://{fd:web}", "app:app"]
    assert again.stop_signal == 3


def test_a_child_gets_the_effective_config_whole():
    cfg = Config.load("serve", _args("serve", ["x:app", "--threads", "3"]),
                      {"GRACEFUL_MAX_BODY": "99"})
    child = Config.load("serve", _args("serve", []), cfg.environ())
    assert _values(child.format()) == _values(cfg.format())
    assert child.source("max-body") == "inherited (env GRACEFUL_MAX_BODY)"


@pytest.mark.parametrize("env, message", [
    ({"GRACEFUL_WOKRERS": "2"}, "GRACEFUL_WOKRERS: no such option; did you mean GRACEFUL_WORKERS?"),
    ({"GRACEFUL_THREADS": "many"}, "GRACEFUL_THREADS: 'many' is not a positive whole number"),
    ({"GRACEFUL_GRACEFUL_TIMEOUT": "-1"}, "'-1' is not a number of seconds"),
    ({"GRACEFUL_REUSE_PORT": "perhaps"}, "'perhaps' is not a yes/no value"),
    ({"GRACEFUL_HANDOFF_UID": "0, no-such-user-here"}, "'no-such-user-here' is neither a uid"),
    ({"GRACEFUL_EFFECTIVE_CONFIG": "{"}, "GRACEFUL_EFFECTIVE_CONFIG is not a configuration"),
])
def test_a_bad_environment_value_is_one_line_naming_it(env, message):
    with pytest.raises(ConfigError) as info:
        Config.load("serve", _args("serve", []), env)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("[graceful]\nthread = 3\n", "key 'thread': no such option; did you mean threads?"),
    ("[graceful]\nready = fd\n", "key 'ready': an option of graceful run, not of graceful serve"),
    ("[server]\nthreads = 3\n", "no [graceful] section (found: server)"),
    ("[graceful]\nthreads = 3\n[extra]\n", "unknown section [extra]"),
    ("threads = 3\n", "not an INI file"),
    ("[graceful]\nmax-body = lots\n", "max-body: 'lots' is not a positive whole number"),
])
def test_a_bad_config_file_is_one_line_naming_the_key(tmp_path, text, message):
    ini = tmp_path / "bad.ini"
    ini.write_text(text)
    with pytest.raises(ConfigError) as info:
        Config.load("serve", _args("serve", ["--config", str(ini)]), {})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_missing_config_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        Config.load("serve", _args("serve", ["--config", str(tmp_path / "none.ini")]), {})


def test_environment_options_of_the_other_command_are_left_alone():
    cfg = Config.load("serve", _args("serve", []), {"GRACEFUL_STOP_SIGNAL": "QUIT"})
    assert not hasattr(cfg, "stop_signal")


def _graceful_variables_in_the_code():
    """Every ``"GRACEFUL_..."`` string literal in graceful/'s source."""
    found = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "graceful")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    for variable in re.findall(r"[\"'](GRACEFUL_[A-Z0-9_]+)[\"']", f.read()):
                        found.setdefault(variable, os.path.relpath(path, ROOT))
    return found


def test_every_graceful_variable_of_the_code_is_an_option_or_internal():
    # A variable graceful sets for its children but config does not know would make the child's
    # Config.load fail with "no such option": the internal set is built from the ENV_*
    # constants, so a variable the code spells out but no constant declares fails here.
    known = {o.env for o in OPTIONS} | config._internal_env()
    unknown = {v: where for v, where in _graceful_variables_in_the_code().items()
               if v not in known}
    assert unknown == {}, "declare these as ENV_* constants of their module: %r" % unknown


def test_the_internal_variables_are_never_an_unknown_option():
    own = {config.ENV_CONFIG_FILE, config.ENV_EFFECTIVE}  # these two config reads itself
    env = {name: "1" for name in config._internal_env() - own}
    assert {"GRACEFUL_FDS", "GRACEFUL_READY_FD", "GRACEFUL_HEARTBEAT_FD"} <= set(env)
    cfg = Config.load("serve", _args("serve", []), env)
    assert cfg.format()


_names = st.sampled_from([o.name for o in OPTIONS] + ["nope", "thread", "x"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_names, st.text(max_size=30)))
def test_garbage_in_a_config_file_only_ever_gives_a_config_error(tmp_path_factory, entries):
    ini = tmp_path_factory.mktemp("cfg") / "g.ini"
    body = "".join(f"{k} = {v.replace(chr(10), ' ').replace(chr(13), ' ')}\n"
                   for k, v in entries.items())
    ini.write_text("[graceful]\n" + body, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = Config.load("serve", _args("serve", ["--config", str(ini)]), {})
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        cfg.format()


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([o.env for o in OPTIONS]),
                       st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)))
def test_garbage_in_the_environment_only_ever_gives_a_config_error(env):
    env = {k: v.replace("\x00", "") for k, v in env.items()}
    try:
        Config.load("run", _args("run", []), env)
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_print_config_never_shows_the_key_password():
    cfg = Config.load("serve", _args("serve", ["x:app"]), {"GRACEFUL_KEYFILE_PASSWORD": "hunter2"})
    assert cfg.keyfile_password == "hunter2"
    text = cfg.format()
    assert "hunter2" not in text and "keyfile-password = (set, not shown)" in text
