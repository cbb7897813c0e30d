"""The control plane in the lab: a real server on `srv`, real clients on a, b, c, tunnels that follow presence.

    srv 198.51.100.10:7777 (control, TCP)
    a .30   b .31   c .32   each: hamachi client up (TUN ham0, UDP 51820)
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.lab import Topology, nodes
from tests.lab.nodes import Deployment

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, request):
    from tests.conftest import require_lab

    require_lab()
    from tests.lab import Lab

    lab = Lab(Topology(public=["a", "b", "c"]))
    lab.__enter__()
    dep = Deployment(lab, tmp_path_factory.mktemp("control"))
    try:
        dep.start_server()
        for host, name in (("a", "alice"), ("b", "bob"), ("c", "carol")):
            dep.add_client(host, name)
        yield dep
    finally:
        dep.stop()
        lab.teardown()


def test_networks_presence_and_tunnels(deployment):
    d = deployment
    lab = d.lab
    ip = {n: d.address(h, n) for h, n in (("a", "alice"), ("b", "bob"), ("c", "carol"))}
    assert len(set(ip.values())) == 3
    d.ask("a", "alice", "create", "lan", "--password", "hunter2")
    r = d.ask("b", "bob", "join", "lan", "--password", "wrong", check=False)
    assert r.returncode == 1 and r.stderr.strip().endswith("wrong password") and len(r.stderr.strip().splitlines()) == 1
    d.ask("b", "bob", "join", "lan", "--password", "hunter2")
    lab.wait_for(lambda: d.can_ping("a", ip["bob"]), timeout=20, what="alice -> bob over the overlay")
    assert d.can_ping("b", ip["alice"])
    # a and b share one segment here: `client ping` calls that path direct, LAN
    r = d.ask("a", "alice", "ping", "bob", "-n", "2", "--interval", "0.2")
    assert r.stdout.count(f"pong from bob ({ip['bob']}) via {lab.public_ip('b')}:") == 2, r.stdout
    assert "(direct, LAN) in" in r.stdout
    r = d.ask("a", "alice", "ping", "nobody", "-n", "1", check=False)
    assert r.returncode == 1 and "no peer 'nobody'" in r.stderr
    # carol shares no network with them: no tunnel, and she does not even learn that they exist
    assert not d.can_ping("c", ip["alice"])
    nets = json.loads(d.ask("c", "carol", "networks", "--json").stdout)
    assert nets["networks"] == []
    # approval flow
    d.ask("c", "carol", "create", "club", "--approval")
    r = d.ask("a", "alice", "join", "club", check=False)
    assert r.returncode == 0 and "waiting for the owner's approval" in r.stdout
    nets = json.loads(d.ask("a", "alice", "networks", "--json").stdout)
    assert any(n["name"] == "club" and n["pending"] for n in nets["networks"])
    assert not d.can_ping("a", ip["carol"])
    d.ask("c", "carol", "approve", "club", "alice")
    lab.wait_for(lambda: d.can_ping("a", ip["carol"]), timeout=20, what="alice -> carol after approval")
    r = d.ask("a", "alice", "evict", "club", "carol", check=False)
    assert r.returncode == 1 and "not the owner" in r.stderr
    # leaving and eviction take tunnels down
    d.ask("b", "bob", "leave", "lan")
    lab.wait_for(lambda: not d.can_ping("a", ip["bob"]), timeout=20, what="tunnel alice-bob to go down")
    d.ask("c", "carol", "evict", "club", "alice")
    lab.wait_for(lambda: not d.can_ping("c", ip["alice"]), timeout=20, what="tunnel carol-alice to go down")
    nets = json.loads(d.ask("a", "alice", "networks", "--json").stdout)
    assert [n["name"] for n in nets["networks"]] == ["lan"]


def test_server_restart_keeps_state_and_clients_come_back(deployment):
    d = deployment
    d.ask("a", "alice", "create", "persist", "--password", "pw")
    d.ask("b", "bob", "join", "persist", "--password", "pw")
    before = {n: d.address(h, n) for h, n in (("a", "alice"), ("b", "bob"))}
    nodes.stop(d.server)
    d.start_server()
    d.lab.wait_for(lambda: nodes.status(d.lab.host("a"), d.clients["alice"])["server_connected"]
                   and nodes.status(d.lab.host("b"), d.clients["bob"])["server_connected"], timeout=40,
                   what="clients to reconnect")
    nets = json.loads(d.ask("a", "alice", "networks", "--json").stdout)
    persist = next(n for n in nets["networks"] if n["name"] == "persist")
    assert {m["nickname"] for m in persist["members"]} == {"alice", "bob"}
    assert {n: d.address(h, n) for h, n in (("a", "alice"), ("b", "bob"))} == before
    d.lab.wait_for(lambda: d.can_ping("a", before["bob"]), timeout=20, what="tunnel after server restart")


BURST = textwrap.dedent("""
    import asyncio, sys
    from hamachi.crypto.keys import KeyPair, decode_key
    from hamachi.io.control import ControlClient
    async def nothing(*a): pass
    async def main():
        # A plan caps networks per client (free: 16), so a fresh identity every 8 networks.
        for j in range(1000):
            c = ControlClient(KeyPair.generate(), ("198.51.100.10", 7777), decode_key(sys.argv[1]), f"burst{j}",
                              lambda: 1, on_welcome=nothing, on_peer_up=nothing, on_peer_down=nothing)
            task = asyncio.create_task(c.run())
            while not c.connected:
                await asyncio.sleep(0.05)
            for i in range(8):
                r = await c.request("create", network=f"burst-{j}-{i}")
                if r.ok:
                    print(f"burst-{j}-{i}", flush=True)
                else:
                    print(r.error, file=sys.stderr, flush=True)
            task.cancel()
    asyncio.run(main())
    """)


def test_kill_9_during_a_burst_loses_nothing_acknowledged(deployment):
    d = deployment
    a = d.lab.host("a")
    burst = a.popen([sys.executable, "-c", BURST, d.server_key], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    text=True, cwd=str(ROOT))
    acked = []
    while len(acked) < 40:
        line = burst.stdout.readline()
        assert line, "the burst client stopped early"
        acked.append(line.strip())
    d.server.send_signal(signal.SIGKILL)
    d.server.wait(timeout=10)
    burst.kill()
    rest, _ = burst.communicate(timeout=10)
    acked += rest.split()
    db = sqlite3.connect(d.tmp / "srv" / "state.db")
    stored = {r[0] for r in db.execute("SELECT name FROM networks WHERE name LIKE 'burst-%'")}
    db.close()
    assert set(acked) <= stored, f"acknowledged but lost: {sorted(set(acked) - stored)[:5]}"
    d.start_server()
