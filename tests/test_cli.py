"""The CLI: every command has help, init writes what the other side needs, --check and --json work."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from typer.main import get_command

from hamachi.cli.app import app


def _walk(cmd, path=()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _walk(sub, (*path, name))


COMMANDS = [p for p, _ in _walk(get_command(app))]


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hamachi", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def test_expected_commands_exist():
    names = {" ".join(p) for p in COMMANDS}
    for want in ("server run", "server init", "relay run", "relay init", "client up", "client init",
                 "client status"):
        assert want in names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "hamachi")
def test_every_command_has_help(path):
    cmd = get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    assert (cmd.help or "").strip(), f"`hamachi {' '.join(path)}` has no help text"
    for param in cmd.params:
        if param.name not in ("help",) and getattr(param, "help", None) is not None:
            assert param.help.strip()


def test_help_runs_and_version():
    r = _cli("--help")
    assert r.returncode == 0
    for role in ("server", "relay", "client"):
        assert role in r.stdout
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("hamachi ")


def test_usage_error_exits_2():
    r = _cli("client", "frobnicate")
    assert r.returncode == 2


def test_init_all_roles_then_check(tmp_path):
    r = _cli("server", "init", "--dir", str(tmp_path / "srv"), "--public-address", "198.51.100.10",
             "--public-address", "198.51.100.11", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["schema_version"] == 1
    key = out["public_key"]
    assert "--server-key " + key in out["connect"]
    assert stat.S_IMODE(os.stat(tmp_path / "srv" / "server.key").st_mode) == 0o600

    r = _cli("client", "init", "--dir", str(tmp_path / "cli"), "--server", "198.51.100.10:7777",
             "--server-key", key, "--name", "alice")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "cli" / "client.key").st_mode) == 0o600

    r = _cli("relay", "init", "--dir", str(tmp_path / "rly"), "--server-key", key, "--json")
    assert r.returncode == 0, r.stderr
    assert "[[relay]]" in json.loads(r.stdout)["server_entry"]

    for role, verb, path in (("server", "run", "srv/server.toml"), ("client", "up", "cli/client.toml"),
                             ("relay", "run", "rly/relay.toml")):
        r = _cli(role, verb, "--config", str(tmp_path / path), "--check", "--json")
        assert r.returncode == 0, (role, r.stderr)
        data = json.loads(r.stdout)
        assert data["valid"] is True and data["role"] == role
        private = (tmp_path / path).with_name(f"{role}.key").read_text().strip()
        assert private not in r.stdout


def test_init_refuses_to_overwrite(tmp_path):
    args = ("relay", "init", "--dir", str(tmp_path), "--server-key", "bxOhDkaYQ2YELx6ut2ZUsxBUwNrkmdgLbjHBU+lSbiQ=")
    assert _cli(*args).returncode == 0
    r = _cli(*args)
    assert r.returncode == 1 and "already exists" in r.stderr


def test_init_rejects_bad_arguments(tmp_path):
    r = _cli("client", "init", "--dir", str(tmp_path), "--server", "x:99999", "--server-key", "nope",
             "--name", "a")
    assert r.returncode == 2
    assert "--server:" in r.stderr and "--server-key:" in r.stderr


def test_status_without_daemon_exits_4(tmp_path):
    r = _cli("client", "init", "--dir", str(tmp_path), "--server", "198.51.100.10:7777", "--server-key",
             "bxOhDkaYQ2YELx6ut2ZUsxBUwNrkmdgLbjHBU+lSbiQ=", "--name", "bob")
    assert r.returncode == 0
    cfg = tmp_path / "client.toml"
    cfg.write_text(cfg.read_text().replace("/run/hamachi/client-ham0.sock", str(tmp_path / "api.sock")))
    r = _cli("client", "status", "--config", str(cfg))
    assert r.returncode == 4
    assert "no daemon" in r.stderr
