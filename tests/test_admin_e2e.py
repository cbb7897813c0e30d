"""`hamachi server admin ...` end to end: a real server process on loopback, real control clients
(Noise over TCP) logged in from this process, every admin verb with --json through the server's
local socket, the audit log with the caller's uid, one log line per login/logout/refusal, and a
deny-list reloaded with SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hamachi.cli.app import app
from hamachi.crypto.keys import KeyPair, encode_key
from hamachi.io.control import ControlClient

SERVER_TOML = """\
[server]
key_file = "server.key"
listen = ["127.0.0.1:{port}"]
stun_port = 0
database = "state.db"
api_socket = "server.sock"
{extra}
"""


def _wait(pred, timeout=15.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Clients:
    """Control clients on one asyncio loop in a thread."""

    def __init__(self, port: int, server_key: bytes):
        self.port, self.server_key = port, server_key
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.c: dict[str, ControlClient] = {}
        self.downs: dict[str, list] = {}

    def start(self, name: str) -> ControlClient:
        self.downs[name] = []

        async def noop(_):
            return None

        async def down(p):
            self.downs[name].append(p)

        cc = ControlClient(KeyPair.generate(), ("127.0.0.1", self.port), self.server_key, name, lambda: 41641,
                           on_welcome=noop, on_peer_up=noop, on_peer_down=down)
        self.c[name] = cc
        cc.task = asyncio.run_coroutine_threadsafe(cc.run(), self.loop)
        return cc

    def request(self, name: str, verb: str, **args):
        return asyncio.run_coroutine_threadsafe(self.c[name].request(verb, **args), self.loop).result(20)

    def close(self):
        async def stop():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kp = KeyPair.generate()
    fd = os.open(tmp_path / "server.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (kp.private_text() + "\n").encode())
    os.close(fd)
    cfg = tmp_path / "server.toml"
    cfg.write_text(SERVER_TOML.format(port=port, extra=""))
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hamachi", "server", "run", "--config", str(cfg), "-v"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    clients = Clients(port, kp.public)
    try:
        _wait(lambda: (tmp_path / "server.sock").exists(), what="the server's local socket")
        yield {"cfg": cfg, "port": port, "proc": proc, "clients": clients, "log": tmp_path / "server.log"}
    finally:
        clients.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def admin(cfg: Path, *args: str, code: int = 0) -> dict:
    r = CliRunner().invoke(app, ["server", "admin", *args, "--config", str(cfg), "--json"])
    assert r.exit_code == code, (args, r.exit_code, r.output)
    return json.loads(r.stdout) if code == 0 else {}


def test_admin_verbs_end_to_end(server):
    cfg, cl = server["cfg"], server["clients"]
    alice, bob = cl.start("alice"), cl.start("bob")
    _wait(lambda: alice.connected and bob.connected, what="two logins")
    assert cl.request("alice", "create", network="lan").ok
    assert cl.request("bob", "join", network="lan").ok
    bob_key = encode_key(bob.local.public)

    online = admin(cfg, "online")
    assert online["schema_version"] == 1
    assert sorted(o["nickname"] for o in online["online"]) == ["alice", "bob"]
    assert {c["nickname"]: c["plan"] for c in admin(cfg, "clients")["clients"]} == {"alice": "free", "bob": "free"}
    (net,) = admin(cfg, "networks")["networks"]
    assert (net["name"], net["members"], net["limit"], net["owner_nickname"]) == ("lan", 2, 5, "alice")
    assert [m["nickname"] for m in admin(cfg, "show", "lan")["network"]["member_list"]] == ["alice", "bob"]
    assert admin(cfg, "show", bob_key[:10])["client"]["networks"] == ["lan"]

    assert admin(cfg, "account", "create", "club")["plan"] == "free"
    assert admin(cfg, "account", "attach", "club", "alice")["account"] == "club"
    assert admin(cfg, "plan", "set", "club", "premium")["plan"] == "premium"
    assert admin(cfg, "show", "lan")["network"]["limit"] == 256  # at once, no restart
    assert [p["name"] for p in admin(cfg, "plan", "list")["plans"]] == ["free", "standard", "premium"]
    (acct,) = admin(cfg, "account", "list")["accounts"]
    assert (acct["plan"], [c["nickname"] for c in acct["clients"]]) == ("premium", ["alice"])
    assert admin(cfg, "account", "detach", "alice")["detached"] == encode_key(alice.local.public)

    assert admin(cfg, "ban", "192.0.2.0/24", "--reason", "test range")["banned"] == "192.0.2.0/24"
    assert admin(cfg, "bans")["bans"][0]["reason"] == "test range"
    assert admin(cfg, "unban", "192.0.2.0/24")["unbanned"] == "192.0.2.0/24"
    admin(cfg, "ban", "nonsense", "--reason", "x", code=2)
    admin(cfg, "suspend", "bob", code=2)  # --reason is required

    # Suspension: bob is disconnected now, alice is told to drop the tunnel, bob's logins are refused.
    res = admin(cfg, "suspend", "bob", "--reason", "cheating")
    assert res["disconnected"] == [bob_key]
    _wait(lambda: any(d.reason == "suspended" for d in cl.downs["alice"]), what="alice's PeerDown")
    _wait(lambda: "cheating" in bob.last_error, what="bob's refused re-login")
    assert "suspended by the server operator: cheating" in bob.last_error
    admin(cfg, "resume", "bob")
    _wait(lambda: bob.connected, timeout=40, what="bob back after resume")
    assert admin(cfg, "evict", "lan", "bob")["evicted"] == bob_key
    _wait(lambda: any(d.reason == "evicted" for d in cl.downs["alice"]), what="alice's PeerDown after evict")
    admin(cfg, "show", "nobody", code=1)

    audit = admin(cfg, "audit", "--limit", "100")["audit"]
    actions = [a["action"] for a in audit]
    for want in ("admin:account-create", "admin:plan-set", "admin:ban", "admin:unban", "admin:suspend",
                 "admin:resume", "admin:evict", "refused:suspended"):
        assert want in actions, want
    me = f"uid {os.getuid()} pid "
    assert all(a["actor"].startswith(me) for a in audit if a["action"].startswith("admin:"))

    # The human view is a table on stdout.
    r = subprocess.run([sys.executable, "-m", "hamachi", "server", "admin", "online", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "alice" in r.stdout

    log = server["log"].read_text()
    assert "login alice" in log and "login bob" in log
    assert "logout bob" in log and "suspended" in log
    assert "refused" in log and "cheating" in log
    assert "admin uid" in log


def test_deny_list_reloads_on_sighup(server):
    cfg, cl = server["cfg"], server["clients"]
    cfg.write_text(SERVER_TOML.format(port=server["port"], extra='[[deny]]\ncidr = "127.0.0.0/8"\n'
                                      'scopes = ["login"]\nreason = "maintenance, back at noon"\n'))
    server["proc"].send_signal(signal.SIGHUP)
    _wait(lambda: "reloaded" in server["log"].read_text(), what="the reload")
    carol = cl.start("carol")
    _wait(lambda: "maintenance" in carol.last_error, what="carol refused")
    assert carol.last_error.endswith("login refused for your address (127.0.0.0/8): maintenance, back at noon")
    assert admin(cfg, "bans")["config"][0]["reason"] == "maintenance, back at noon"
    cfg.write_text(SERVER_TOML.format(port=server["port"], extra=""))
    server["proc"].send_signal(signal.SIGHUP)
    _wait(lambda: carol.connected, timeout=40, what="carol logs in after the entry is gone")
