"""Path management in the tunnel core: direct when it works, a relay when it does not, the next
relay when one dies, and back to direct when the path opens. Two Tunnels in memory, a
hand-advanced clock, and a wire that knows which path each datagram takes."""

from __future__ import annotations

import ipaddress
import os

from hamachi.crypto.keys import KeyPair
from hamachi.proto.tunnel import (
    DIRECT_PROBE_INTERVAL,
    DIRECT_PROBE_MAX,
    KEEPALIVE_TIMEOUT,
    REKEY_TIMEOUT,
    PeerConfig,
    Tunnel,
)
from tests.test_tunnel_core import ip4

A_IP, B_IP = "100.64.0.1", "100.64.0.2"
A_EP, B_EP = ("198.51.100.30", 51820), ("203.0.113.31", 51820)
R1, R2 = ("relay:00000000000000r1", 0), ("relay:00000000000000r2", 0)


class PathNet:
    """a and b; each datagram goes direct or through relay r1 or r2, unless that path is blocked."""

    def __init__(self, blocked=()):
        self.ka, self.kb = KeyPair.generate(), KeyPair.generate()
        self.now = 1000.0
        self.blocked = set(blocked)
        self.a = self._tunnel(self.ka, self.kb, B_IP, B_EP)
        self.b = self._tunnel(self.kb, self.ka, A_IP, A_EP)
        self.got = {"a": [], "b": []}
        self.via: dict[str, set] = {"direct": set(), "r1": set(), "r2": set()}  # path -> payloads carried
        self.wire: list = []

    def _tunnel(self, me, peer, peer_ip, peer_ep):
        t = Tunnel(me, self.now, os.urandom)
        # As the client builds it: the direct candidate first, then the server's relays, best first.
        t.add_peer(PeerConfig(peer.public, (ipaddress.ip_interface(peer_ip + "/32"),), peer_ep, 0.0, "p", (R1, R2)))
        return t

    @staticmethod
    def path(addr) -> str:
        return {R1: "r1", R2: "r2"}.get(addr, "direct")

    def send(self, side: str, payload: bytes):
        t, src, dst = (self.a, A_IP, B_IP) if side == "a" else (self.b, B_IP, A_IP)
        for datagrams, ep in t.send([ip4(src, dst, payload)], self.now):
            self.wire += [(side, d, ep, payload) for d in datagrams]
        self.pump()

    def pump(self, rounds: int = 10):
        for _ in range(rounds):
            for side, t in (("a", self.a), ("b", self.b)):
                self.wire += [(side, d, ep, None) for d, ep in t.datagrams_to_send()]
            wire, self.wire = self.wire, []
            if not wire:
                return
            for side, d, ep, payload in wire:
                path = self.path(ep)
                if path in self.blocked:
                    continue
                dst = self.b if side == "a" else self.a
                seen_from = ep if path != "direct" else (A_EP if side == "a" else B_EP)
                got = dst.receive(d, seen_from, self.now)
                self.got["b" if side == "a" else "a"].extend(got)
                if payload is not None and got:
                    self.via[path].add(payload)

    def tick(self, seconds: float, traffic: bool = True):
        """Advance time a second at a time; with `traffic`, a packet each way every second."""
        for _ in range(int(seconds)):
            self.now += 1.0
            if traffic:
                self.send("a", b"a%d" % self.now)
                self.send("b", b"b%d" % self.now)
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self.pump()

    def paths(self) -> tuple[str, str]:
        sa = self.a.stats(self.now)["peers"][0]
        sb = self.b.stats(self.now)["peers"][0]
        return sa["path"], sb["path"]

    def endpoints(self):
        return self.a.peers[self.kb.public].endpoint, self.b.peers[self.ka.public].endpoint


def test_blocked_direct_path_starts_on_the_first_relay_within_seconds():
    n = PathNet(blocked={"direct"})
    n.tick(3)
    assert n.paths() == ("relayed", "relayed")
    assert n.endpoints() == (R1, R1)  # both sides use the relay the server listed first
    assert n.via["r1"] and not n.via["direct"] and not n.via["r2"]


def test_dead_first_relay_from_the_start_connects_through_the_second():
    n = PathNet(blocked={"direct", "r1"})
    n.tick(15)
    assert n.paths() == ("relayed", "relayed")
    assert n.endpoints() == (R2, R2)
    assert n.via["r2"]


def test_relay_dies_and_the_pair_moves_to_the_next_relay_without_a_restart():
    n = PathNet(blocked={"direct"})
    n.tick(5)
    assert n.endpoints() == (R1, R1)
    n.blocked.add("r1")  # the relay process is killed
    before = len(n.got["b"])
    n.tick(KEEPALIVE_TIMEOUT + 3 * REKEY_TIMEOUT + 5)
    assert n.endpoints() == (R2, R2)
    assert n.paths() == ("relayed", "relayed")
    recent = [b"a%d" % (n.now - i) for i in range(3)]
    assert set(recent) <= n.via["r2"]  # traffic flows again, through r2
    assert len(n.got["b"]) > before


def test_opening_the_blocked_path_upgrades_the_pair_to_direct():
    n = PathNet(blocked={"direct"})
    n.tick(5)
    assert n.paths() == ("relayed", "relayed")
    n.blocked.discard("direct")  # e.g. the user forwarded a port, or a firewall rule was lifted
    n.tick(DIRECT_PROBE_INTERVAL + 3)
    assert n.paths() == ("direct", "direct")
    assert n.endpoints() == (B_EP, A_EP)
    assert b"a%d" % n.now in n.via["direct"]


def test_direct_path_that_stops_answering_falls_back_to_the_relay():
    n = PathNet()
    n.tick(3)
    assert n.paths() == ("direct", "direct")
    n.blocked.add("direct")
    n.tick(KEEPALIVE_TIMEOUT + 2 * REKEY_TIMEOUT + 5)
    assert n.paths() == ("relayed", "relayed")
    assert b"a%d" % n.now in n.via["r1"]


def test_direct_probes_back_off_while_the_path_stays_blocked_then_still_upgrade():
    n = PathNet(blocked={"direct"})
    n.tick(3)
    probes = []
    real = n.a.datagrams_to_send

    def spy():
        out = real()
        probes.extend(n.now for d, ep in out if d[0] == 1 and ep == B_EP)
        return out

    n.a.datagrams_to_send = spy
    n.tick(110)  # (before the first rekey, which also tries direct)
    gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
    assert gaps[0] < gaps[-1] and max(gaps) <= DIRECT_PROBE_MAX + 1  # backed off, capped
    assert len(probes) < 110 / DIRECT_PROBE_INTERVAL  # fewer than one every 10 s
    n.blocked.discard("direct")
    n.tick(DIRECT_PROBE_MAX + 5)
    assert n.paths() == ("direct", "direct")
    assert n.a.peers[n.kb.public].probe_interval == DIRECT_PROBE_INTERVAL  # reset once direct works


def test_a_relay_session_that_gets_bound_late_carries_the_waiting_handshake_at_once():
    """One side reaches the relay only over TCP, bound a moment after the handshake went there (and
    was dropped): relay_ready sends it again at once instead of at the next retransmit (5 s)."""
    from hamachi.proto.tunnel import RELAY_AFTER

    net = PathNet(blocked={"direct", "r1"})
    net.send("a", b"first")
    net.now += RELAY_AFTER + 0.1
    net.a.handle_timer(net.now)
    net.pump()
    assert not net.got["b"]
    net.blocked.discard("r1")  # the TCP side is bound now
    net.a.relay_ready(R1, net.now)
    net.pump()
    assert any(pkt.endswith(b"first") for pkt in net.got["b"]), "the handshake waited for its retransmit"
