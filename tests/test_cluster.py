"""Two real server nodes on one PostgreSQL (loopback), clients as in-process ControlClients.

    client A --> node1 --\\                         /-- node2 <-- client B
                          +-- PostgreSQL (ours) --+
                               LISTEN/NOTIFY

What a user of a cluster notices: a member on the other node comes online,
changes nickname and is evicted exactly as on one node; a client whose node
dies (kill -9) is on the other node within 10 s and its peers never see it
go offline; one that does not come back is announced offline, once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from hamachi.crypto.keys import KeyPair, decode_key
from hamachi.io.control import ControlClient
from tests.lab.cluster import Nodes

pytestmark = pytest.mark.slow


class Sim:
    """A client as the server sees it: real TCP, real Noise, presence events recorded."""

    def __init__(self, nodes: Nodes, name: str, order: list[int]):
        self.name = name
        self.key = KeyPair.generate()
        self.ups: dict[bytes, object] = {}
        self.downs: list[tuple[bytes, str, float]] = []

        async def nothing(*_a):
            return None

        async def up(msg):
            self.ups[msg.public_key] = msg

        async def down(msg):
            self.downs.append((msg.public_key, msg.reason, time.monotonic()))
            self.ups.pop(msg.public_key, None)

        self.client = ControlClient(self.key, [nodes.endpoint(i) for i in order], decode_key(nodes.public_key),
                                    name, lambda: 41641, on_welcome=nothing, on_peer_up=up, on_peer_down=down)
        self.task = asyncio.create_task(self.client.run())

    async def wait(self, cond, timeout=15.0, what="condition"):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: timed out waiting for {what}")
            await asyncio.sleep(0.02)

    def member(self, network: str, key: bytes):
        n = self.client.networks.get(network)
        return next((m for m in n.members if m.public_key == key), None) if n else None

    async def ok(self, verb, **args):
        r = await self.client.request(verb, **args)
        assert r.ok, r.error


@pytest.fixture
def cluster(postgres, tmp_path):
    nodes = Nodes(tmp_path, "postgresql", postgres.new_database("c"), count=2, debounce=5.0)
    nodes.start(0, wait=False)
    nodes.start(1, wait=False)
    try:
        nodes.wait_listening(0)
        nodes.wait_listening(1)
        yield nodes
    finally:
        nodes.stop()


def test_presence_and_netmap_cross_nodes_and_failover(cluster):
    async def scenario():
        a = Sim(cluster, "alice", [0, 1])  # on node 1
        b = Sim(cluster, "bob", [1, 0])  # on node 2
        c = Sim(cluster, "carol", [0, 1])  # on node 1: the one whose node dies
        for s in (a, b, c):
            await s.wait(lambda s=s: s.client.connected, what="login")
        assert a.client.server == cluster.endpoint(0) and b.client.server == cluster.endpoint(1)
        await a.ok("create", network="lan")
        await b.ok("join", network="lan")  # a member joining on node 2 ...
        await a.wait(lambda: b.key.public in a.ups, what="PeerUp for bob from the other node")  # ... on node 1
        await b.wait(lambda: a.key.public in b.ups, what="PeerUp for alice")
        assert a.ups[b.key.public].nickname == "bob" and a.ups[b.key.public].relays == ()
        await a.wait(lambda: (m := a.member("lan", b.key.public)) is not None and m.online, what="bob online")
        await b.ok("nick", nickname="robert")
        await a.wait(lambda: a.member("lan", b.key.public).nickname == "robert", what="nickname across nodes")
        await c.ok("join", network="lan")
        await b.wait(lambda: c.key.public in b.ups, what="PeerUp for carol on node 2")

        # kill -9 node 1: alice and carol are on node 2 within 10 s; bob never sees them go offline.
        t0 = time.monotonic()
        cluster.kill9(0)
        await a.wait(lambda: a.client.connected and a.client.server == cluster.endpoint(1), timeout=10,
                     what="alice on node 2 within 10 s")
        await c.wait(lambda: c.client.connected and c.client.server == cluster.endpoint(1), timeout=10,
                     what="carol on node 2 within 10 s")
        failover = time.monotonic() - t0
        await asyncio.sleep(1.0)
        assert [d for d in b.downs if d[0] in (a.key.public, c.key.public)] == [], "a peer saw a failover as offline"

        # Eviction across nodes (both on node 2 now, and an owner request from there).
        await a.ok("evict", network="lan", member="robert")
        await b.wait(lambda: "lan" not in b.client.networks, what="bob's netmap drops lan")
        await a.wait(lambda: b.key.public not in a.ups, what="PeerDown for bob")

        # A member that does not come back is announced offline once, after the debounce.
        node1 = cluster.start(0)
        assert node1.poll() is None
        d = Sim(cluster, "dave", [0])  # only knows node 1
        await d.wait(lambda: d.client.connected, what="dave on node 1")
        await d.ok("join", network="lan")
        await a.wait(lambda: d.key.public in a.ups, what="PeerUp for dave")
        t1 = time.monotonic()
        cluster.kill9(0)
        await a.wait(lambda: any(x[0] == d.key.public for x in a.downs), timeout=25, what="dave announced lost")
        lost = [x for x in a.downs if x[0] == d.key.public]
        assert [x[1] for x in lost] == ["lost"]
        assert lost[0][2] - t1 >= 4.5, "the debounce held PeerDown back"
        for s in (a, b, c, d):
            s.task.cancel()
        return failover

    failover = asyncio.run(scenario())
    print(f"failover after kill -9 of node 1: {failover:.1f} s")
