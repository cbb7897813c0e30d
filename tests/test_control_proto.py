"""The control server's state machine with three clients, in memory, with a hand-advanced clock."""

from __future__ import annotations

import ipaddress

import pytest

from hamachi.crypto.keys import KeyPair
from hamachi.crypto.ticket import Ticket
from hamachi.proto.control_server import IDLE_TIMEOUT, ControlServer, RelayInfo
from hamachi.store.sqlite import SqliteStore
from hamachi.wire import control as M


class World:
    def __init__(self, registration="open", debounce=0.0, node=""):
        self.store = SqliteStore(":memory:", ipaddress.IPv4Network("100.64.0.0/10"),
                                 ipaddress.IPv6Network("fd00:1::/48"))
        self.now = 100.0
        self.core = ControlServer(self.store, self.now, registration=registration, default_max_members=3,
                                  presence_debounce=debounce, node=node)
        self.keys = {}
        self.inbox: dict[str, list[M.Message]] = {}
        self.req = 0

    def login(self, name: str, port: int = 41641, token: str = "", report: tuple = ()) -> M.Message:
        self.keys.setdefault(name, KeyPair.generate())
        self.inbox[name] = []
        self.core.connect(name, self.keys[name].public, (f"198.51.100.{30 + len(self.keys)}", 5555), self.now)
        self.core.receive(name, M.Hello("test", name, token), self.now)
        self.flush()
        if name in self.core.conns:
            self.core.receive(name, M.Discovery(port, report), self.now)
            self.flush()
        return self.inbox[name][0] if self.inbox[name] else None

    def flush(self):
        for conn, msg in self.core.outbox():
            self.inbox.setdefault(conn, []).append(msg)

    def ask(self, name: str, verb: str, **args) -> M.Reply:
        self.req += 1
        self.core.receive(name, M.Request(self.req, verb, tuple(args.items())), self.now)
        self.flush()
        return next(m for m in reversed(self.inbox[name]) if isinstance(m, M.Reply) and m.req_id == self.req)

    def take(self, name: str, kind) -> list:
        msgs = [m for m in self.inbox.get(name, []) if isinstance(m, kind)]
        self.inbox[name] = [m for m in self.inbox.get(name, []) if not isinstance(m, kind)]
        return msgs

    def key(self, name):
        return self.keys[name].public


def test_login_gives_stable_addresses():
    w = World()
    welcome = w.login("alice")
    assert isinstance(welcome, M.Welcome)
    assert ipaddress.ip_address(welcome.address4) in ipaddress.IPv4Network("100.64.0.0/10")
    w.core.disconnect("alice", w.now)
    again = w.login("alice")
    assert (again.address4, again.address6) == (welcome.address4, welcome.address6)
    assert w.login("bob").address4 != welcome.address4


def test_networks_passwords_presence():
    w = World()
    for n in ("alice", "bob", "carol"):
        w.login(n)
    assert w.ask("alice", "create", network="lan", password="s3cret").ok
    assert w.ask("bob", "create", network="lan").error == "network name 'lan' is taken"
    assert w.ask("bob", "join", network="lan", password="nope").error == "wrong password"
    assert w.take("alice", M.PeerUp) == []  # no shared network yet: nobody learns of anybody
    assert w.ask("bob", "join", network="lan", password="s3cret").ok
    (up_a,) = w.take("alice", M.PeerUp)
    (up_b,) = w.take("bob", M.PeerUp)
    assert up_a.public_key == w.key("bob") and up_b.public_key == w.key("alice")
    assert [str(c) for c in up_a.candidates] == [f"{w.core.conns['bob'].source[0]}:41641"]
    # carol shares nothing with them and hears nothing
    assert w.take("carol", M.PeerUp) == [] and w.take("carol", M.Delta) == []
    # bob leaves: both sides drop the tunnel
    assert w.ask("bob", "leave", network="lan").ok
    assert [d.reason for d in w.take("alice", M.PeerDown)] == ["left"]
    assert [d.public_key for d in w.take("bob", M.PeerDown)] == [w.key("alice")]


def test_owner_powers_and_refusals():
    w = World()
    for n in ("alice", "bob", "carol"):
        w.login(n)
    assert w.ask("alice", "create", network="club", approval="1").ok
    r = w.ask("bob", "join", network="club")
    assert r.ok == 2 and "waiting for the owner's approval" in r.error  # accepted, pending
    assert w.ask("carol", "approve", network="club", member="bob").error == "you are not the owner of 'club'"
    assert w.ask("alice", "approve", network="club", member="bob").ok
    assert len(w.take("alice", M.PeerUp)) == 1
    assert "approval" in w.ask("carol", "join", network="club").error
    assert w.ask("alice", "reject", network="club", member="carol").ok
    assert w.ask("alice", "lock", network="club").ok
    assert w.ask("carol", "join", network="club").error == "network 'club' is locked"
    assert w.ask("alice", "unlock", network="club").ok
    assert w.ask("alice", "evict", network="club", member="bob").ok
    assert [d.reason for d in w.take("alice", M.PeerDown)] == ["evicted"]
    assert w.ask("alice", "transfer", network="club", member="alice").ok
    assert w.ask("bob", "delete", network="club").error == "you are not the owner of 'club'"
    assert w.ask("alice", "delete", network="club").ok
    assert w.store.get_network("club") is None
    assert w.ask("alice", "leave", network="nowhere").error == "no network named 'nowhere'"


def test_network_full():
    w = World()
    for n in ("a", "b", "c", "d"):
        w.login(n)
    w.ask("a", "create", network="small")
    assert w.ask("b", "join", network="small").ok
    assert w.ask("c", "join", network="small").ok
    assert w.ask("d", "join", network="small").error == "network 'small' is full (3 members)"


def test_netmap_then_deltas_with_sequence_numbers():
    w = World()
    w.login("alice")
    (nm,) = w.take("alice", M.Netmap)
    assert nm.seq == 1 and nm.networks == ()
    w.ask("alice", "create", network="lan")
    deltas = w.take("alice", M.Delta)
    assert [d.seq for d in deltas] == [2] and deltas[0].networks[0].name == "lan"
    w.login("bob")
    w.ask("bob", "join", network="lan")
    d = w.take("alice", M.Delta)[-1]
    assert {m.nickname for m in d.networks[0].members} == {"alice", "bob"}
    assert all(m.online for m in d.networks[0].members)
    w.core.receive("alice", M.Resync(d.seq), w.now)
    w.flush()
    assert w.take("alice", M.Netmap)[-1].seq == d.seq + 1


def test_lost_client_peers_told_to_check_themselves():
    w = World()
    w.login("alice")
    w.login("bob")
    w.ask("alice", "create", network="lan")
    w.ask("bob", "join", network="lan")
    for _ in range(int(IDLE_TIMEOUT // 10)):
        w.now += 10
        w.core.receive("alice", M.Ping(1), w.now)  # alice keeps pinging, bob went silent
        w.core.handle_timer(w.now)
        w.flush()
    w.now += 10
    w.core.handle_timer(w.now)
    w.flush()
    assert [d.reason for d in w.take("alice", M.PeerDown)] == ["lost"]
    assert w.key("bob") not in w.core.online


def test_out_of_order_message_closes_with_reason():
    w = World()
    w.keys["eve"] = KeyPair.generate()
    w.core.connect("eve", w.keys["eve"].public, ("203.0.113.5", 1), w.now)
    w.core.receive("eve", M.Request(1, "create", (("network", "x"),)), w.now)
    w.flush()
    (close,) = w.inbox["eve"]
    assert isinstance(close, M.Close) and "protocol violation" in close.reason
    assert "eve" not in w.core.conns


def test_token_registration():
    w = World(registration="token")
    assert isinstance(w.login("mallory"), M.Close)
    from hamachi.crypto.password import hash_token

    w.store.add_token(hash_token("tok-1"), w.now + 100)
    assert isinstance(w.login("alice", token="tok-1"), M.Welcome)
    assert isinstance(w.login("bob", token="tok-1"), M.Close)  # one-time


def test_login_rate_limit_per_source():
    w = World()
    w.core._login_limit.rate = w.core._login_limit.burst = 2
    results = [w.core.connect(i, KeyPair.generate().public, ("203.0.113.9", i), w.now) for i in range(5)]
    assert results == [True, True, False, False, False]


@pytest.mark.parametrize("msg", [
    M.Hello("v", "n", ""), M.Discovery(1, (("a", "b"),)), M.Request(1, "join", (("network", "x"),)), M.Ping(7),
    M.Welcome("100.64.0.2", "fd00::2", 10, 48, "s"), M.PeerUp(b"k" * 32, "n", "a", "b", (M.Candidate(1, "203.0.113.7", 41641), M.Candidate(2, "fe80::1", 9))),
    M.Discovery(1, (), (M.Candidate(2, "10.0.0.2", 41641),)),
    M.PeerDown(b"k" * 32, "left"), M.Reply(1, 0, "no"), M.Close("bye"),
    M.Netmap(3, (M.NetworkInfo("n", b"o" * 32, "tun", 0, 1, 5,
                              (M.MemberInfo(b"m" * 32, "x", "a", "b", "member", 1, "e"),)),)),
])
def test_wire_round_trip_and_prefixes(msg):
    from hamachi.wire.codec import DecodeError

    data = msg.encode()
    assert M.decode(data) == msg
    assert M.decode(data + b"future-field") == msg
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            M.decode(data[:n])


def test_relays_ordered_by_the_pair_s_measured_rtt_with_a_ticket_for_each():
    w = World()
    keys = {n: bytes([i]) * 32 for i, n in enumerate(("near", "far", "dead"), 1)}
    w.core.relays = tuple(RelayInfo(n, f"203.0.113.{i}:3480", f"203.0.113.{i}:443", keys[n])
                          for i, n in enumerate(keys, 1))
    welcome = w.login("alice", report=(("rtt:near", "3.5"), ("rtt:far", "40"), ("rtt:dead", "nan")))
    assert dict(welcome.relays) == {n: f"203.0.113.{i}:3480" for i, n in enumerate(keys, 1)}
    w.login("bob", report=(("rtt:near", "1.0"), ("rtt:far", "nonsense"), ("rtt:dead", "-5")))
    w.ask("alice", "create", network="lan")
    w.ask("bob", "join", network="lan")
    (up_a,) = w.take("alice", M.PeerUp)
    (up_b,) = w.take("bob", M.PeerUp)
    # near: 3.5 + 1.0; far and dead are unmeasured for bob (bad values count as no answer), so last
    assert [r.name for r in up_a.relays][0] == "near"
    assert [r.name for r in up_a.relays] == [r.name for r in up_b.relays]  # both sides: the same order
    assert {up_a.side, up_b.side} == {0, 1}
    for offer_a, offer_b in zip(up_a.relays, up_b.relays, strict=True):
        assert offer_a.ticket == offer_b.ticket
        t = Ticket.decode(offer_a.ticket, keys[offer_a.name])  # each ticket is for its own relay only
        assert {t.peer_a, t.peer_b} == {w.key("alice"), w.key("bob")}
    sids = {Ticket.decode(o.ticket, keys[o.name]).session_id for o in up_a.relays}
    assert len(sids) == 3


def test_presence_is_debounced_when_a_client_comes_back_in_time():
    w = World(debounce=10.0)
    for n in ("alice", "bob"):
        w.login(n)
    w.ask("alice", "create", network="lan")
    w.ask("bob", "join", network="lan")
    w.take("alice", M.PeerUp)
    w.core.disconnect("bob", w.now)  # lost (not a logout)
    w.now += 9
    w.core.handle_timer(w.now)
    w.flush()
    assert w.take("alice", M.PeerDown) == [] and w.key("bob") in w.core.online
    w.login("bob")  # back within the debounce: alice never sees bob offline, only his new PeerUp
    w.now += 5
    w.core.handle_timer(w.now)
    w.flush()
    assert w.take("alice", M.PeerDown) == [] and [u.public_key for u in w.take("alice", M.PeerUp)] == [w.key("bob")]
    w.core.disconnect("bob", w.now)
    w.now += 10
    w.core.handle_timer(w.now)
    w.flush()
    assert [(d.public_key, d.reason) for d in w.take("alice", M.PeerDown)] == [(w.key("bob"), "lost")]
    w.ask("alice", "bye")  # a logout is never held back
    assert w.key("alice") not in w.core.online


def test_cluster_events_fan_out_once_and_deliver_remotely():
    """Node 1's core with a member online on node 2: what node 1 computes for it goes to the bus."""
    w = World(debounce=10.0, node="n1")
    w.login("alice")
    w.ask("alice", "create", network="lan")
    w.core.cluster_outbox()
    bob = KeyPair.generate()
    w.keys["bob"] = bob
    w.store.register_client(bob.public, "bob", w.now)
    w.store.set_member("lan", bob.public, "member")
    # Node 2 says bob came online there (it already sent alice's PeerUp through the bus).
    w.core.cluster_event(("up", bob.public, "n2", {"nickname": "bob", "endpoint": "203.0.113.5:41641",
                                                   "report": {}}), w.now)
    assert w.core.online[bob.public].node == "n2"
    w.ask("alice", "nick", nickname="alicia")  # computed here once; bob's Delta leaves through the bus
    out = w.core.cluster_outbox()
    assert [(e[0], e[1], e[2], type(e[3]).__name__) for e in out] == [("msg", "n2", bob.public, "Delta")]
    # Something node 2 computed for alice arrives as a message: a Delta takes alice's own sequence.
    seq = max(m.seq for m in w.inbox["alice"] if isinstance(m, (M.Netmap, M.Delta)))
    w.core.cluster_event(("msg", w.key("alice"), M.Delta(999, ())), w.now)
    w.flush()
    assert [d.seq for d in w.take("alice", M.Delta)][-1] == seq + 1
    # Node 2 dies; we adopt bob: he lingers, and only after the debounce alice hears he is lost.
    w.core.cluster_event(("node_dead", "n2", "n1"), w.now)
    w.now += 9
    w.core.handle_timer(w.now)
    w.flush()
    assert w.take("alice", M.PeerDown) == []
    w.now += 2
    w.core.handle_timer(w.now)
    w.flush()
    assert [d.reason for d in w.take("alice", M.PeerDown)] == ["lost"]
    assert ("down", bob.public, "lost") in w.core.cluster_outbox()


def test_owner_sets_broadcast_and_bridges_and_members_see_them():
    w = World()
    for n in ("alice", "bob"):
        w.login(n)
    assert w.ask("alice", "create", network="lan").ok
    assert w.ask("bob", "join", network="lan").ok
    assert w.ask("bob", "broadcast", network="lan", state="off").error == "you are not the owner of 'lan'"
    assert "pps must be a whole number" in w.ask("alice", "broadcast", network="lan", pps="-3").error
    assert w.ask("alice", "broadcast", network="lan", state="off", pps="50").ok
    deltas = [m for m in w.take("bob", M.Delta) if m.networks]
    assert dict(deltas[-1].networks[0].settings) == {"broadcast": "off", "broadcast_pps": "50"}
    assert "bridging needs a TAP network" in w.ask("alice", "bridge", network="lan", member="bob", state="on").error
    assert w.ask("alice", "create", network="eth", mode="tap").ok
    assert w.ask("bob", "join", network="eth").ok
    assert w.ask("alice", "bridge", network="eth", member="bob", state="on").ok
    info = [m for m in w.take("bob", M.Delta) if m.networks and m.networks[0].name == "eth"][-1].networks[0]
    assert info.setting("bridges") == w.key("bob").hex()
    assert w.ask("alice", "bridge", network="eth", member="bob", state="off").ok
    assert w.store.network_settings("eth") == {}
