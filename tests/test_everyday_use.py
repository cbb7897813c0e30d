"""Everyday use (issue 14, second part): what a user sees when keys, tokens and signals go wrong.

A real `hamachi server run` on loopback (no root needed) and real control clients
(io.control.ControlClient, the client daemon's own connection) in this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hamachi.crypto.keys import KeyPair, decode_key
from hamachi.exitcodes import ExitCode
from hamachi.io.control import WRONG_KEY, ControlClient
from tests.test_everyday import _cli, _free_port, _one_line, _server_cfg


class Server:
    def __init__(self, tmp: Path, extra: str = ""):
        self.port = _free_port()
        self.cfg = _server_cfg(tmp, self.port, extra=extra)
        self.key = decode_key(_cli("server", "run", "--config", str(self.cfg), "--check", "--json")
                              .stdout.split('"public": "')[1].split('"')[0])
        self.log = tmp / "server.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "hamachi", "server", "run", "--config", str(self.cfg)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        deadline = time.monotonic() + 30
        while not (tmp / "server.sock").exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    yield srv
    srv.stop()


def _client(srv: Server, key: KeyPair | None = None, server_key: bytes | None = None, token: str = "",
            name: str = "alice") -> ControlClient:
    async def nothing(*a):
        pass

    return ControlClient(key or KeyPair.generate(), ("127.0.0.1", srv.port), server_key or srv.key, name,
                         lambda: 1, on_welcome=nothing, on_peer_up=nothing, on_peer_down=nothing, token=token)


async def _until(cond, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_wrong_server_key_is_named(server):
    async def main():
        c = _client(server, server_key=KeyPair.generate().public)
        task = asyncio.create_task(c.run())
        await _until(lambda: c.last_error, what="the first attempt")
        task.cancel()
        return c

    c = _run(main())
    assert not c.connected
    assert c.last_error == WRONG_KEY
    assert "does not match the pinned [server] public_key" in c.last_error


def test_same_key_on_two_hosts_the_loser_is_told_and_stays_off(server):
    key = KeyPair.generate()

    async def main():
        first, second = _client(server, key, name="alice"), _client(server, key, name="alice")
        t1 = asyncio.create_task(first.run())
        await _until(lambda: first.connected, what="first login")
        t2 = asyncio.create_task(second.run())
        await _until(lambda: second.connected and not first.connected, what="the second to take over")
        # The loser does not come back to kick the winner off (no turn-taking every few seconds).
        await asyncio.sleep(3.0)
        out = (first.connected, second.connected, first.last_error)
        t1.cancel()
        t2.cancel()
        return out

    first_on, second_on, err = _run(main())
    assert (first_on, second_on) == (False, True)
    assert err.startswith("server closed the connection: replaced: this client's key logged in again from 127.0.0.1")
    assert "give each host its own" in err


def test_token_registration_refused_without_and_enrols_with(tmp_path):
    srv = Server(tmp_path, extra='registration = "token"\n')
    try:
        r = _cli("server", "token", "--config", str(srv.cfg), "--json")
        assert r.returncode == 0, r.stderr
        token = re.search(r'"token": "([^"]+)"', r.stdout).group(1)

        async def main():
            without = _client(srv)
            t = asyncio.create_task(without.run())
            await _until(lambda: without.last_error, what="refusal")
            t.cancel()
            with_token = _client(srv, token=token, name="bob")
            t = asyncio.create_task(with_token.run())
            await _until(lambda: with_token.connected or with_token.last_error, what="enrolment")
            enrolled = with_token.connected
            t.cancel()
            # one-time: a second new key with the same token is refused
            again = _client(srv, token=token, name="carol")
            t = asyncio.create_task(again.run())
            await _until(lambda: again.last_error, what="reuse refused")
            t.cancel()
            return without.last_error, enrolled, with_token.last_error, again.last_error

        refused, enrolled, err, reused = _run(main())
        assert "registration needs a valid one-time token" in refused
        assert enrolled, err
        assert "registration needs a valid one-time token" in reused
    finally:
        srv.stop()


def test_client_init_and_up_take_a_token(tmp_path):
    r = _cli("client", "init", "--dir", str(tmp_path), "--server", "127.0.0.1:7777", "--server-key",
             KeyPair.generate().public_text(), "--name", "bob", "--token", "tok-123")
    assert r.returncode == 0, r.stderr
    assert 'token = "tok-123"' in (tmp_path / "client.toml").read_text()
    from hamachi import config as C

    assert C.load_client(tmp_path / "client.toml").token == "tok-123"
    r = _cli("client", "up", "--config", str(tmp_path / "client.toml"), "--check", "--json", "--token", "other")
    assert r.returncode == 0, r.stderr
    assert '"token": "<redacted>"' in r.stdout and "tok-123" not in r.stdout and "other" not in r.stdout


def test_sigterm_tells_clients_and_logs_no_errors(server):
    async def main():
        c = _client(server)
        t = asyncio.create_task(c.run())
        await _until(lambda: c.connected, what="login")
        assert c.request  # a request in flight must not matter either
        code = await asyncio.to_thread(server.stop)
        await _until(lambda: not c.connected, what="the client to hear of it")
        t.cancel()
        return code, c.last_error

    code, err = _run(main())
    assert code == 0
    log = server.log.read_text()
    assert "Traceback" not in log and "CancelledError" not in log and " ERROR " not in log, log
    assert err == "server closed the connection: server shutting down"


def test_help_has_no_python_artefacts():
    from hamachi.cli.app import app

    runner = CliRunner()
    seen = []

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            seen.append([*path, name])
            walk(sub, [*path, name])

    import typer.main

    walk(typer.main.get_command(app), [])
    assert len(seen) > 30
    for args in seen:
        out = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "100"}).output
        assert not re.search(r"<(bool|str|int|float|path|list\[)", out), (args, out)
        usage = out.split("Usage:", 1)[1].splitlines()[0]
        assert "{" not in usage, (args, usage)
    out = runner.invoke(app, ["relay", "init", "--help"], env={"COLUMNS": "100"}).output
    assert "[[relay]]" in out
    assert ExitCode.OK == 0


def _render(renderable, width: int = 80) -> str:
    from rich.console import Console

    con = Console(width=width, record=True, file=open("/dev/null", "w"), color_system=None)
    con.print(renderable)
    return con.export_text()


STATUS = {
    "interface": "ham0", "mode": "tun", "listen": 41641, "fastpath": "c",
    "addresses": ["100.64.12.34/10", "fd3a:91c2:77e0:0:ffff:ffff:ffff:ffff/48"],
    "public_key": "bxOhDkaYQ2YELx6ut2ZUsxBUwNrkmdgLbjHBU+lSbiQ=",
    "offload": {"tun_tso": True, "tun_uso": False, "udp_gso": True, "udp_gro": True},
    "server": "control.example.net:7777", "server_connected": False, "server_port": None,
    "server_error": "the server closed the connection during the handshake: its key does not match",
    "nat_summary": "endpoint-independent mapping, address-dependent filtering",
    "peers": [
        {"name": "bob-the-longest-nickname", "public_key": "A" * 43 + "=",
         "addresses": ["100.64.200.201/32", "fd3a:91c2:77e0:0:1234:5678:9abc:def0/128"],
         "endpoint": "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:41641", "path": "direct", "relay": None,
         "rtt_ms": 12.345, "last_handshake_ago": 4.0, "rx_bytes": 123456789, "rx_packets": 98765,
         "tx_bytes": 1234567890, "tx_packets": 987654, "drops": {"replay": 3}},
        {"name": "", "public_key": "B" * 43 + "=", "addresses": ["100.64.0.3/32"],
         "endpoint": "relay:0011223344556677", "path": "relayed", "relay": "relay-frankfurt-1 (tcp)",
         "rtt_ms": None, "last_handshake_ago": None, "rx_bytes": 0, "rx_packets": 0, "tx_bytes": 0,
         "tx_packets": 0, "drops": {}},
    ],
    "drops": {"no_route": 3, "bad_mac": 0},
}


def test_status_and_peers_fit_80_columns_and_cut_nothing():
    from hamachi.cli import views

    peer_parts = ["relay-frankfurt-1 (tcp)", STATUS["peers"][0]["endpoint"]]
    for p in STATUS["peers"]:
        peer_parts += p["addresses"]
    for renderable, wanted in ((views.status(STATUS), STATUS["addresses"] + peer_parts),
                               (views.peers_table(STATUS["peers"]), peer_parts)):
        text = _render(renderable)
        lines = text.splitlines()
        assert max(map(len, lines)) <= 80, text
        # nothing a user copies is cut: every address and endpoint is whole on one line
        for w in wanted:
            assert any(w in ln for ln in lines), (w, text)
        assert "bob-the-longest-nickname" in text
        assert "None" not in text and "True" not in text and "{" not in text, text
    text = _render(views.status(STATUS))
    assert "bxOhDkaYQ2…" in text and STATUS["public_key"] not in text  # keys short
    assert "NOT connected: the server closed the" in " ".join(text.split())
    assert "offload" in text and "tun_tso, udp_gso, udp_gro" in text
    assert "harmless" in text  # a fresh interface's no_route drops are explained


def test_server_status_and_check_show_no_python_values(tmp_path, server):
    r = _cli("server", "status", "--config", str(server.cfg), env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert "stats" in r.stdout and "{" not in r.stdout and "None" not in r.stdout, r.stdout
    assert max(map(len, r.stdout.splitlines())) <= 80, r.stdout
    r = _cli("server", "run", "--config", str(server.cfg), "--check")
    assert r.returncode == 0, r.stderr
    assert "None" not in r.stdout and "{" not in r.stdout, r.stdout


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv")
                    or not os.path.exists("/dev/net/tun"),
                    reason="needs root, unshare, setpriv and /dev/net/tun (a real client daemon and another user)")
def test_status_without_root_through_the_sockets_group():
    import grp

    group = grp.getgrgid(65534).gr_name  # nogroup / nobody: exists on Debian and Fedora alike
    d = Path(tempfile.mkdtemp(prefix="hamachi-apigroup-"))
    try:
        os.chmod(d, 0o755)
        key = KeyPair.generate()
        (d / "client.key").write_text(key.private_text() + "\n")
        os.chmod(d / "client.key", 0o600)
        cfg = d / "client.toml"
        cfg.write_text(textwrap.dedent(f"""
            [client]
            name = "alice"
            key_file = "client.key"
            api_socket = "{d}/run/client.sock"
            api_group = "{group}"
            [tunnel]
            interface = "hamg0"
            address = "100.64.0.1/24"
            listen_port = 0
            [[peer]]
            public_key = "{KeyPair.generate().public_text()}"
            addresses = ["100.64.0.2/32"]
            """))
        os.chmod(cfg, 0o644)
        env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())}
        daemon = subprocess.Popen(["unshare", "--net", sys.executable, "-m", "hamachi", "client", "up", "--config",
                                   str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        try:
            sock = d / "run" / "client.sock"
            deadline = time.monotonic() + 30
            while not sock.exists():
                assert daemon.poll() is None, daemon.stderr.read()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            st = sock.stat()
            assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 65534

            def as_nobody(gid: int, *args: str) -> subprocess.CompletedProcess:
                return subprocess.run(["setpriv", "--reuid=65534", f"--regid={gid}", "--clear-groups",
                                       sys.executable, "-m", "hamachi", "client", *args, "--config", str(cfg)],
                                      capture_output=True, text=True, timeout=60, env=env, cwd="/")

            r = as_nobody(65534, "status", "--json")
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            assert out["interface"] == "hamg0" and len(out["peers"]) == 1  # read without the private key
            r = as_nobody(65534, "leave", "lan")
            assert r.returncode == ExitCode.NO_PRIVILEGE and "'leave' needs root" in _one_line(r)
            r = as_nobody(54321, "status")  # not in the group
            assert r.returncode == ExitCode.NO_PRIVILEGE and "permission denied" in _one_line(r)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=20)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_default_udp_port_is_our_own():
    from hamachi import config as C
    from hamachi.cli import templates

    assert C.DEFAULT_DATA_PORT not in (41641, 51820, 9993, 4242)  # Tailscale, WireGuard, ZeroTier, Nebula
    assert f"listen_port = {C.DEFAULT_DATA_PORT}" in templates.client_toml("a", "h:1", "k", "ham0")


def test_shell_completion_is_on():
    env = {**os.environ, "_HAMACHI_COMPLETE": "complete_bash", "COMP_WORDS": "hamachi client st", "COMP_CWORD": "2"}
    r = subprocess.run([sys.executable, "-m", "hamachi"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and r.stdout.split() == ["status"], (r.stdout, r.stderr)
    r = _cli("--show-completion", "bash")
    assert r.returncode == 0 and "_HAMACHI_COMPLETE" in r.stdout


def test_default_config_paths(monkeypatch, tmp_path):
    from hamachi import config as C

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert C.default_config_path("server") == Path("/etc/hamachi/server.toml")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert C.default_config_path("client") == tmp_path / "hamachi" / "client.toml"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv (runs as nobody)")
def test_init_writes_the_default_config_and_commands_find_it():
    d = Path(tempfile.mkdtemp(prefix="hamachi-xdg-"))
    try:
        os.chmod(d, 0o777)
        env = {**os.environ, "XDG_CONFIG_HOME": str(d), "HOME": str(d),
               "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())}
        env.pop("HAMACHI_CONFIG", None)

        def as_nobody(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                                   "-m", "hamachi", *args], capture_output=True, text=True, timeout=60, env=env, cwd="/")

        r = as_nobody("client", "up", "--check")
        assert r.returncode == ExitCode.BAD_CONFIG and f"no config at {d}/hamachi/client.toml" in _one_line(r)
        r = as_nobody("client", "init", "--server", "127.0.0.1:7777", "--server-key", KeyPair.generate().public_text(),
                      "--name", "nobody")
        assert r.returncode == 0, r.stderr
        assert (d / "hamachi" / "client.toml").exists() and (d / "hamachi" / "client.key").exists()
        r = as_nobody("client", "up", "--check", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["settings"]["config_path"] == f"{d}/hamachi/client.toml"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_nickname_change_reaches_peers():
    import ipaddress

    from hamachi.proto.tunnel import PeerConfig, Tunnel
    from hamachi.wire import control as M
    from tests.test_control_proto import World

    w = World()
    for n in ("alice", "bob"):
        w.login(n)
    assert w.ask("alice", "create", network="lan").ok and w.ask("bob", "join", network="lan").ok
    w.take("bob", M.Delta)
    assert w.ask("alice", "nick", nickname="alicia").ok
    deltas = w.take("bob", M.Delta)
    assert deltas and {m.nickname for m in deltas[-1].networks[0].members} == {"alicia", "bob"}
    # ... and the client's tunnel (status, logs) calls her by the new name
    t = Tunnel(KeyPair.generate(), 0.0, os.urandom)
    t.add_peer(PeerConfig(w.key("alice"), (ipaddress.ip_interface("100.64.0.2/32"),), None, 25.0, "alice"))
    assert t.rename_peer(w.key("alice"), "alicia") and not t.rename_peer(w.key("alice"), "alicia")
    assert [p["name"] for p in t.stats(0.0)["peers"]] == ["alicia"]
