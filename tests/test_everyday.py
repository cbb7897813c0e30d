"""Everyday mistakes give one clear line and a documented exit code, never a traceback (issue 14).

Each test runs the real `hamachi` command (server and relay daemons need no root; the client
one runs in a throw-away network namespace) and asserts what the user sees.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hamachi.crypto.keys import KeyPair
from hamachi.exitcodes import ExitCode
from tests.test_control_proto import World

SERVER_KEY = "bxOhDkaYQ2YELx6ut2ZUsxBUwNrkmdgLbjHBU+lSbiQ="


def _cli(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hamachi", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def _one_line(r: subprocess.CompletedProcess) -> str:
    text = r.stderr.strip()
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in text.splitlines() if " INFO " not in ln]
    assert len(lines) == 1, text
    return lines[0]


def _free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _key(path: Path) -> str:
    kp = KeyPair.generate()
    path.write_text(kp.private_text() + "\n")
    os.chmod(path, 0o600)
    return kp.public_text()


def _server_cfg(d: Path, port: int, stun_port: int = 0, extra: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    _key(d / "server.key")
    cfg = d / "server.toml"
    cfg.write_text(textwrap.dedent(f"""
        [server]
        key_file = "server.key"
        listen = ["127.0.0.1:{port}"]
        public_addresses = ["127.0.0.1"]
        stun_port = {stun_port}
        https_port = 0
        api_socket = "{d}/server.sock"
        """) + extra)
    return cfg


def _relay_cfg(d: Path, udp: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    _key(d / "relay.key")
    cfg = d / "relay.toml"
    cfg.write_text(textwrap.dedent(f"""
        [relay]
        key_file = "relay.key"
        server_public_key = "{SERVER_KEY}"
        listen_udp = "127.0.0.1:{udp}"
        listen_tcp = ""
        api_socket = "{d}/relay.sock"
        """))
    return cfg


def test_server_control_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _cli("server", "run", "--config", str(_server_cfg(tmp_path, port)))
    assert r.returncode == ExitCode.IN_USE
    line = _one_line(r)
    assert f"port {port} is already in use" in line and "[server] listen" in line


def test_server_stun_port_in_use(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        stun = s.getsockname()[1]
        r = _cli("server", "run", "--config", str(_server_cfg(tmp_path, _free_port(), stun_port=stun)))
    assert r.returncode == ExitCode.IN_USE
    line = _one_line(r)
    assert f"STUN (UDP) port {stun}" in line and "[server] stun_port" in line


def test_relay_udp_port_in_use(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        r = _cli("relay", "run", "--config", str(_relay_cfg(tmp_path, port)))
    assert r.returncode == ExitCode.IN_USE
    line = _one_line(r)
    assert f"relay (UDP) port {port} is already in use" in line and "[relay] listen_udp" in line


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or not os.path.exists("/dev/net/tun"),
                    reason="needs root, unshare and /dev/net/tun (the client daemon makes a TUN device)")
def test_client_udp_port_in_use(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    _key(d / "client.key")
    cfg = d / "client.toml"
    cfg.write_text(textwrap.dedent(f"""
        [client]
        name = "alice"
        key_file = "client.key"
        api_socket = "{d}/client.sock"
        [tunnel]
        interface = "hamt0"
        address = "100.64.0.1/24"
        listen_port = 45999
        [[peer]]
        public_key = "{SERVER_KEY}"
        addresses = ["100.64.0.2/32"]
        """))
    # In a private network namespace (gone when the process ends): the port is taken there first.
    script = ("import socket, subprocess, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
              "s.bind(('0.0.0.0', 45999)); "
              "r = subprocess.run([sys.executable, '-m', 'hamachi', 'client', 'up', '--config', sys.argv[1]]); "
              "sys.exit(r.returncode)")
    r = subprocess.run(["unshare", "--net", sys.executable, "-c", script, str(cfg)], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())})
    assert r.returncode == ExitCode.IN_USE, r.stderr
    line = _one_line(r)
    assert "data (UDP) port 45999 is already in use" in line and "[tunnel] listen_port" in line


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "daemon exited"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_second_daemon_names_the_pid_holding_the_lock(tmp_path):
    cfg = _relay_cfg(tmp_path, _free_port(socket.SOCK_DGRAM))
    first = subprocess.Popen([sys.executable, "-m", "hamachi", "relay", "run", "--config", str(cfg)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "relay.sock", first)
        r = _cli("relay", "run", "--config", str(cfg))
        assert r.returncode == ExitCode.IN_USE
        line = _one_line(r)
        assert "already running with this config" in line and f"PID {first.pid}" in line
        # the first one's socket is untouched and it still answers
        st = _cli("relay", "status", "--config", str(cfg), "--json")
        assert st.returncode == 0 and "sessions" in json.loads(st.stdout)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)
    assert "Traceback" not in first.stderr.read()


def test_wrong_roles_config_says_so(tmp_path):
    cfg = _server_cfg(tmp_path, 7777)
    r = _cli("client", "status", "--config", str(cfg))
    assert r.returncode == ExitCode.BAD_CONFIG
    assert "this is a server config, not a client config" in _one_line(r)


def test_json_refusal_is_json(tmp_path):
    r = _cli("client", "init", "--dir", str(tmp_path), "--server", "198.51.100.10:7777", "--server-key",
             SERVER_KEY, "--name", "bob")
    assert r.returncode == 0
    r = _cli("client", "status", "--config", str(tmp_path / "client.toml"), "--json")
    assert r.returncode == ExitCode.NOT_RUNNING
    out = json.loads(r.stdout)
    assert out["code"] == ExitCode.NOT_RUNNING and "no daemon is listening" in out["error"]
    r = _cli("client", "status", "--config", str(tmp_path / "nope.toml"), "--json")
    assert r.returncode == ExitCode.BAD_CONFIG
    assert json.loads(r.stdout)["code"] == ExitCode.BAD_CONFIG


def test_relay_init_needs_the_server_key(tmp_path):
    r = _cli("relay", "init", "--dir", str(tmp_path))
    assert r.returncode == ExitCode.USAGE
    assert "--server-key is required" in _one_line(r)
    assert not (tmp_path / "relay.toml").exists()


def test_approval_join_is_pending_and_missing_password_says_so():
    w = World()
    for n in ("alice", "bob"):
        w.login(n)
    assert w.ask("alice", "create", network="club", approval="1").ok
    r = w.ask("bob", "join", network="club")
    assert r.ok == 2 and r.error == "asked to join club; waiting for the owner's approval"
    assert w.ask("alice", "create", network="lan", password="hunter2").ok
    r = w.ask("bob", "join", network="lan")
    assert not r.ok and r.error == "network 'lan' needs a password (give it with --password)"
    assert w.ask("bob", "join", network="lan", password="nope").error == "wrong password"
