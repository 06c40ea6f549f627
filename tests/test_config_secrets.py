"""A Config handed to a child keeps its secret values (--keyfile-password) out of the
environment: they come in an inherited, sealed memfd that the child reads once and closes."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess

import pytest

from graceful import config
from graceful.config import Config, ConfigError


def _with_password(password: str, binds=("web=127.0.0.1:8000",)) -> Config:
    return Config("serve", {"app": "x:app", "keyfile_password": password, "bind": list(binds)},
                  {"keyfile_password": "command line"})


def test_the_environment_carries_no_password_and_the_child_gets_it_back():
    env = _with_password("pw-not-in-env").environ()
    assert "pw-not-in-env" not in json.dumps(env)
    assert json.loads(env[config.ENV_EFFECTIVE])["values"].get("keyfile_password") is None
    fd = int(env[config.ENV_SECRETS_FD])
    assert os.get_inheritable(fd) and "memfd:graceful-secrets" in os.readlink(f"/proc/self/fd/{fd}")
    assert fd >= 64 + 1  # above the fds a master's posix_spawn places by dup2
    with pytest.raises(PermissionError):  # sealed: no worker changes what its siblings read
        os.pwrite(fd, b"x", 0)
    assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
    child = Config.load("serve", None, env)
    assert child.keyfile_password == "pw-not-in-env"
    assert child.source("keyfile-password") == "inherited (command line)"
    assert os.get_inheritable(fd)  # a mapping the caller gave: its descriptor stays open


def test_one_descriptor_per_password_reused_by_reloads():
    one = _with_password("pw-one").environ()[config.ENV_SECRETS_FD]
    assert _with_password("pw-one").environ()[config.ENV_SECRETS_FD] == one
    assert _with_password("pw-two").environ()[config.ENV_SECRETS_FD] != one
    assert config.ENV_SECRETS_FD not in Config("serve", {"app": "x:app"}).environ()


def test_a_child_process_reads_it_once_and_closes_it(procs):
    env = _with_password("pw-child").environ()
    fd = env[config.ENV_SECRETS_FD]
    code = ("import os\n"
            "from graceful.config import Config\n"
            "cfg = Config.load('serve')\n"
            f"print(cfg.keyfile_password, os.path.exists('/proc/self/fd/{fd}'),\n"
            "      'GRACEFUL_SECRETS_FD' in os.environ, flush=True)\n")
    proc = procs.python("-c", code, env={**os.environ, **env}, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, close_fds=False)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["pw-child", "False", "False"]


@pytest.mark.parametrize("value", ["", "x", "999999", "0"])
def test_a_bad_secrets_descriptor_is_one_clear_error(value):
    env = {config.ENV_EFFECTIVE: Config("serve", {"app": "x:app"}).to_json(),
           config.ENV_SECRETS_FD: value}
    with pytest.raises(ConfigError) as info:
        Config.load("serve", None, env)
    assert "GRACEFUL_SECRETS_FD" in str(info.value) and "\n" not in str(info.value)


def test_the_variables_of_secret_options():
    assert config.secret_env_names() == {"GRACEFUL_KEYFILE_PASSWORD"}
