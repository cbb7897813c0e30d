"""The data-plane core, two Tunnels wired together in memory with a hand-advanced clock."""

from __future__ import annotations

import ipaddress
import os

import pytest

from hamachi.crypto.keys import KeyPair
from hamachi.proto import drops as D
from hamachi.proto.tunnel import REKEY_AFTER, PeerConfig, Tunnel

A_IP, B_IP = "100.64.0.1", "100.64.0.2"
A_EP, B_EP = ("198.51.100.30", 51820), ("198.51.100.31", 51820)


def ip4(src: str, dst: str, payload: bytes = b"ping") -> bytes:
    hdr = bytes([0x45, 0, 0, 20 + len(payload)]) + bytes(5) + b"\x11" + bytes(2)
    return hdr + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + payload


class Net:
    """Two tunnels and the wire between them; `drop` decides which datagrams get lost."""

    def __init__(self):
        self.ka, self.kb = KeyPair.generate(), KeyPair.generate()
        self.now = 1000.0
        self.a = self._tunnel(self.ka, self.kb, B_IP, B_EP)
        self.b = self._tunnel(self.kb, self.ka, A_IP, A_EP)
        self.delivered = {"a": [], "b": []}
        self.wire: list[tuple[str, bytes]] = []
        self.drop = lambda side, d: False

    def _tunnel(self, me, peer, peer_ip, peer_ep):
        t = Tunnel(me, self.now, os.urandom)
        t.add_peer(PeerConfig(peer.public, (ipaddress.ip_interface(peer_ip + "/32"),), peer_ep, 0.0, "p"))
        return t

    def restart_b(self):
        self.b = self._tunnel(self.kb, self.ka, A_IP, A_EP)

    def send(self, side: str, payload: bytes = b"x"):
        t, src, dst = (self.a, A_IP, B_IP) if side == "a" else (self.b, B_IP, A_IP)
        for datagrams, _ep in t.send([ip4(src, dst, payload)], self.now):
            for d in datagrams:
                self.wire.append((side, d))
        self.collect()

    def collect(self):
        for side, t in (("a", self.a), ("b", self.b)):
            for d, _ep in t.datagrams_to_send():
                self.wire.append((side, d))

    def pump(self, rounds: int = 10):
        for _ in range(rounds):
            self.collect()
            wire, self.wire = self.wire, []
            if not wire:
                return
            for side, d in wire:
                if self.drop(side, d):
                    continue
                dst, src_ep = (self.b, A_EP) if side == "a" else (self.a, B_EP)
                got = dst.receive(d, src_ep, self.now)
                self.delivered["b" if side == "a" else "a"].extend(got)

    def tick(self, seconds: float, step: float = 1.0):
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self.pump()


def payloads(packets):
    return [p[20:] for p in packets]


def test_handshake_then_data_both_ways():
    n = Net()
    n.send("a", b"hello")
    n.pump()
    assert payloads(n.delivered["b"]) == [b"hello"]  # the queued first packet arrives after the handshake
    n.send("b", b"back")
    n.pump()
    assert payloads(n.delivered["a"]) == [b"back"]
    st = n.a.stats(n.now)["peers"][0]
    assert st["tx_packets"] == 1 and st["rx_packets"] == 1 and st["last_handshake_ago"] == 0
    assert st["path"] == "direct" and st["rtt_ms"] == 0.0  # the hand-advanced clock did not move


def test_rekey_under_traffic_loses_nothing():
    n = Net()
    sent = 0
    for _ in range(int(REKEY_AFTER * 2.5)):  # 300 s, one packet each way per second
        n.send("a", b"a%d" % sent)
        n.send("b", b"b%d" % sent)
        sent += 1
        n.tick(1.0)
    assert len(n.delivered["b"]) == sent
    assert len(n.delivered["a"]) == sent
    assert n.a.peers[n.kb.public].current.created > 1000 + REKEY_AFTER  # it did rekey (twice)
    assert sum(n.a.drops.values()) == 0 and sum(n.b.drops.values()) == 0


def test_rekey_by_message_count_loses_nothing():
    n = Net()
    n.a.rekey_after_messages = n.b.rekey_after_messages = 50
    for i in range(400):
        n.now += 0.01  # handshake timestamps must move forward
        n.send("a", b"a%d" % i)
        n.send("b", b"b%d" % i)
        n.pump()
    assert len(n.delivered["b"]) == 400 and len(n.delivered["a"]) == 400
    for t, k in ((n.a, n.kb), (n.b, n.ka)):
        assert t.peers[k.public].current.send_counter < 60  # fresh sessions, well before an hour of traffic
    assert sum(n.a.drops.values()) == 0 and sum(n.b.drops.values()) == 0


def test_lost_initiation_is_retransmitted():
    n = Net()
    lost = []
    n.drop = lambda side, d: d[0] == 1 and not lost and not lost.append(d)
    n.send("a", b"first")
    n.pump()
    assert n.delivered["b"] == []
    n.tick(6)
    assert payloads(n.delivered["b"]) == [b"first"]


def test_replayed_tampered_and_spoofed_packets_are_counted():
    n = Net()
    n.send("a", b"one")
    n.pump()
    n.send("a", b"two")
    (side, data), = n.wire
    n.pump()
    assert n.b.receive(data, A_EP, n.now) == []  # replay
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    n.b.peers[n.ka.public].current  # noqa: B018 (session exists)
    assert n.b.receive(tampered[:16] + tampered[16:], A_EP, n.now) == []
    peer_b_side = n.b.peers[n.ka.public]
    assert peer_b_side.drops[D.REPLAY] == 2  # same counter again: a replay, whatever the bytes
    # Tampering with a fresh counter gets past the replay check and fails authentication.
    fresh = bytearray(data)
    fresh[8:16] = (10**6).to_bytes(8, "little")
    assert n.b.receive(bytes(fresh), A_EP, n.now) == []
    assert peer_b_side.drops[D.DECRYPT_FAILED] == 1
    # Spoofed inner source: a validly sealed packet claiming another overlay address.
    sess = n.a.peers[n.kb.public].current
    spoof = sess.seal(ip4("100.64.0.99", B_IP, b"evil"))
    assert n.b.receive(spoof, A_EP, n.now) == []
    assert peer_b_side.drops[D.SPOOFED_SOURCE] == 1
    assert n.b.datagrams_to_send() == []  # nothing is ever answered


def test_open_batch_gives_what_open_gives_and_counts_the_same_drops():
    n = Net()
    n.send("a", b"hello")
    n.pump()
    sess = n.a.peers[n.kb.public].current
    good = [sess.seal(ip4(A_IP, B_IP, b"p%d" % i)) for i in range(4)]
    forged = bytearray(sess.seal(ip4(A_IP, B_IP, b"x")))
    forged[-1] ^= 1
    spoof = sess.seal(ip4("100.64.0.99", B_IP, b"evil"))
    unknown = bytearray(good[0])
    unknown[4:8] = b"\xff\xff\xff\xff"
    others = []
    batch = [good[0], good[1], good[1], bytes(forged), b"\x01junk", spoof, bytes(unknown), b"\x04", good[3],
             sess.seal(b""), good[2]]
    inner: list[bytes] = []
    n.b.open_batch(batch, A_EP, n.now, inner, lambda d, addr, now, out: others.append(d))
    assert payloads(inner) == [b"p0", b"p1", b"p3", b"p2"]  # in arrival order; p2 late but in the window
    peer = n.b.peers[n.ka.public]
    assert peer.drops[D.REPLAY] == 1 and peer.drops[D.DECRYPT_FAILED] == 1 and peer.drops[D.SPOOFED_SOURCE] == 1
    assert n.b.drops[D.UNKNOWN_INDEX] == 1 and n.b.drops[D.MALFORMED] == 1
    assert others == [b"\x01junk"]
    assert peer.endpoint == A_EP and peer.rx_packets == 1 + 4  # the first "hello", then four
    assert n.b.datagrams_to_send() == []


def test_unknown_peer_and_garbage_are_not_answered():
    n = Net()
    stranger = Tunnel(KeyPair.generate(), n.now, os.urandom)
    stranger.add_peer(PeerConfig(n.kb.public, (ipaddress.ip_interface(B_IP + "/32"),), B_EP))
    stranger.send([ip4(A_IP, B_IP)], n.now)
    (init, _), = stranger.datagrams_to_send()
    assert n.b.receive(init, ("203.0.113.9", 1), n.now) == []
    assert n.b.drops[D.UNKNOWN_PEER] == 1
    assert n.b.receive(b"\x01" + os.urandom(200), ("203.0.113.9", 1), n.now) == []
    assert n.b.drops[D.BAD_MAC1] == 1
    assert n.b.datagrams_to_send() == []


def test_initiation_replay_is_refused():
    n = Net()
    n.send("a", b"x")
    init = next(d for side, d in n.wire if d[0] == 1)
    n.pump()
    assert n.b.receive(init, A_EP, n.now) == []
    assert n.b.peers[n.ka.public].drops[D.STALE_TIMESTAMP] == 1


def test_flood_gets_cookies_then_cookie_holder_gets_through():
    n = Net()
    n.b._hs_limit.rate = n.b._hs_limit.burst = 1.0
    n.send("a", b"x")
    n.pump()  # first handshake is fine
    # Many initiations from one source in the same instant: answered with cookie replies only.
    for _ in range(3):
        n.a.peers[n.kb.public].pending = None
        n.a._initiate(n.a.peers[n.kb.public], n.now)
        n.pump()
    # One cookie reply; A's next initiations carry a valid mac2 and are processed.
    assert n.b.drops[D.COOKIE_SENT] == 1
    assert n.a.peers[n.kb.public].cookie is not None
    # With the cookie (mac2) the next initiation is processed even though the source is over its rate.
    before = n.b.peers[n.ka.public].last_handshake
    n.now += 0.001
    n.a.peers[n.kb.public].pending = None
    n.a._initiate(n.a.peers[n.kb.public], n.now)
    n.pump()
    assert n.b.peers[n.ka.public].last_handshake > before


def test_restart_of_one_side_recovers():
    n = Net()
    n.send("a", b"x")
    n.pump()
    n.restart_b()  # B lost all sessions; A still has its old one
    n.now += 1
    n.send("a", b"lost-1")
    n.pump()
    assert n.b.drops[D.UNKNOWN_INDEX] == 1
    # B has something to say: it handshakes, and both directions work again.
    n.send("b", b"hi-after-restart")
    n.pump()
    assert payloads(n.delivered["a"])[-1] == b"hi-after-restart"
    n.send("a", b"ok")
    n.pump()
    assert payloads(n.delivered["b"])[-1] == b"ok"


def test_one_way_traffic_to_a_restarted_peer_recovers_by_itself():
    n = Net()
    n.send("a", b"x")
    n.pump()
    n.restart_b()
    for i in range(30):
        n.send("a", b"p%d" % i)
        n.tick(1.0)
    assert payloads(n.delivered["b"])[-1] == b"p29"


def test_persistent_keepalive_and_no_route():
    n = Net()
    n.a.add_peer(PeerConfig(n.kb.public, (ipaddress.ip_interface(B_IP + "/32"),), B_EP, keepalive=25.0))
    n.tick(1)
    assert n.a.peers[n.kb.public].current is not None  # keepalive brought the session up
    n.a.send([ip4(A_IP, "100.64.0.77")], n.now)
    assert n.a.drops[D.NO_ROUTE] == 1


def test_prefix_routes_and_ipv6():
    t = Tunnel(KeyPair.generate(), 0, os.urandom)
    k = KeyPair.generate().public
    peer = t.add_peer(PeerConfig(k, (ipaddress.ip_interface("10.9.0.0/24"), ipaddress.ip_interface("fd00::2/128"))))
    assert t.route_peer(ipaddress.ip_address("10.9.0.77").packed) is peer
    assert t.route_peer(ipaddress.ip_address("fd00::2").packed) is peer
    assert t.route_peer(ipaddress.ip_address("10.9.1.1").packed) is None


@pytest.mark.parametrize(("a_allows", "b_allows", "agreed"), [
    ("chacha20poly1305", "chacha20poly1305", "chacha20poly1305"),
    ("aes256gcm", "aes256gcm", "aes256gcm"),
    (("aes256gcm", "chacha20poly1305"), ("chacha20poly1305", "aes256gcm"), "aes256gcm"),  # initiator's choice
    (("aes256gcm", "chacha20poly1305"), "chacha20poly1305", "chacha20poly1305"),
    ("chacha20poly1305", ("aes256gcm", "chacha20poly1305"), "chacha20poly1305"),
])
def test_aead_is_agreed_in_the_handshake(a_allows, b_allows, agreed):
    n = Net()
    n.a.aead, n.b.aead = a_allows, b_allows
    n.send("a", b"x")
    n.pump()
    assert payloads(n.delivered["b"]) == [b"x"]
    n.send("b", b"y")
    n.pump()
    assert payloads(n.delivered["a"]) == [b"y"]
    for t in (n.a, n.b):
        assert {p["cipher"] for p in t.stats(n.now)["peers"]} == {agreed}


def test_no_common_aead_no_session_and_counted():
    n = Net()
    n.a.aead, n.b.aead = "aes256gcm", "chacha20poly1305"
    n.send("a", b"x")
    n.pump()
    assert n.delivered["b"] == []
    assert n.b.peers[n.ka.public].drops[D.NO_COMMON_CIPHER] == 1
    with pytest.raises(ValueError):
        n.a.aead = "rot13"


def test_spray_probes_random_ports_of_a_symmetric_peer_until_a_session_exists():
    n = Net()
    n.a.add_peer(PeerConfig(n.kb.public, (ipaddress.ip_interface(B_IP + "/32"),), B_EP, 0.0, "p", (), spray=64))
    n.a.send([ip4(A_IP, B_IP)], n.now)
    out = n.a.datagrams_to_send()
    assert len(out) == 65 and all(d == out[0][0] and addr[0] == B_EP[0] for d, addr in out)
    assert len({addr[1] for _, addr in out}) > 50 and all(1024 <= addr[1] <= 65535 for _, addr in out)
    n.b.receive(out[0][0], A_EP, n.now)
    n.a.receive(n.b.datagrams_to_send()[0][0], B_EP, n.now)  # session up: no more spraying
    n.a.datagrams_to_send()  # the queued packet, now sealed
    n.a.peers[n.kb.public].pending = None
    n.a._initiate(n.a.peers[n.kb.public], n.now + 1)
    assert len(n.a.datagrams_to_send()) == 1


def test_router_longest_prefix_wins_and_route_is_a_tuple():
    from hamachi.proto.peer import Router

    t = Tunnel(KeyPair.generate(), 0, os.urandom)
    wide = t.add_peer(PeerConfig(KeyPair.generate().public, (ipaddress.ip_interface("10.0.0.0/8"),)))
    narrow = t.add_peer(PeerConfig(KeyPair.generate().public, (ipaddress.ip_interface("10.1.2.0/24"),)))
    host = t.add_peer(PeerConfig(KeyPair.generate().public, (ipaddress.ip_interface("10.1.2.3/32"),)))
    r: Router = t.router
    assert r.route(ip4(A_IP, "10.1.2.3")) == (host,)
    assert r.route(ip4(A_IP, "10.1.2.4")) == (narrow,)
    assert r.route(ip4(A_IP, "10.200.0.1")) == (wide,)
    assert r.route(ip4(A_IP, "192.0.2.1")) == ()
    assert r.route(b"") == () and r.route(b"\x45\x00") == () and r.route(b"\x60" + bytes(10)) == ()
    # Anti-spoofing: the inner source must route back to the sender.
    assert r.allowed_source(narrow, ip4("10.1.2.9", A_IP))
    assert not r.allowed_source(wide, ip4("10.1.2.9", A_IP))
    assert not r.allowed_source(host, b"")
    t.remove_peer(narrow.public_key)
    assert r.route(ip4(A_IP, "10.1.2.4")) == (wide,)


def test_rate_limiter_buckets_refill_and_stay_bounded():
    from hamachi.proto.ratelimit import RateLimiter

    rl = RateLimiter(rate=2.0, burst=3.0, max_keys=4)
    assert [rl.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert rl.allow("a", 0.5)  # one token back after half a second
    assert not rl.allow("a", 0.5)
    assert all(rl.allow(k, 0.5) for k in "bcd")
    assert not rl.allow("e", 0.5)  # table full of live buckets: newcomers refused, not stored
    assert len(rl._buckets) == 4
    assert rl.allow("e", 10.0)  # old buckets refilled and were forgotten
    assert len(rl._buckets) <= 4


def test_many_spoofed_sources_hit_the_global_budget_and_get_cookies():
    n = Net()
    n.b._hs_global.rate = n.b._hs_global.burst = 2.0
    n.send("a", b"x")
    n.collect()
    init = next(d for side, d in n.wire if d[0] == 1)
    n.wire.clear()
    # Replays of one initiation from many source addresses: after the global budget, no more DH.
    for i in range(6):
        assert n.b.receive(init, (f"203.0.113.{i + 1}", 1000), n.now) == []
    assert n.b.drops[D.COOKIE_SENT] == 4
    cookie_replies = [d for d, _ in n.b.datagrams_to_send() if d[0] == 3]
    assert len(cookie_replies) == 4


def test_cookie_holder_over_its_budget_is_rate_limited():
    n = Net()
    n.b._hs_limit.rate = n.b._hs_limit.burst = 1.0
    n.b._hs_cookie_limit.rate = n.b._hs_cookie_limit.burst = 1.0
    n.send("a", b"x")
    n.pump()
    peer = n.a.peers[n.kb.public]
    for _ in range(4):
        peer.pending = None
        n.a._initiate(peer, n.now)
        n.pump()
    assert n.b.drops[D.COOKIE_SENT] == 1
    assert n.b.drops[D.RATE_LIMITED] >= 1


def test_handshake_timestamp_is_coarsened():
    """Issue 9 item 13: the TAI64N in an initiation carries no more than ~16.8 ms of precision."""
    import struct as _struct

    from hamachi.proto.tunnel import tai64n

    stamps = {_struct.unpack(">QI", tai64n(1_700_000_000.0 + i * 0.001))[1] for i in range(16)}
    assert all(n % (1 << 24) == 0 for n in stamps)
    assert len(stamps) <= 2  # 16 ms of distinct clocks look the same
    assert tai64n(1_700_000_001.0) > tai64n(1_700_000_000.9)  # still monotonic across seconds
