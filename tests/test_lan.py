"""LAN policy (proto/lan.py) and its wire format (wire/lan.py), in memory with a hand-advanced clock.

Three tunnels (a, b, c) are wired together for the end-to-end cases: a and b
share the network "lan", b and c share "club", a and c share nothing.
"""

from __future__ import annotations

import ipaddress
import os

import pytest

from hamachi.crypto.keys import KeyPair
from hamachi.proto import drops as D
from hamachi.proto.lan import MAC_AGE, Buckets, Lan, NetworkPolicy, is_group_ip, member_mac
from hamachi.proto.tunnel import PeerConfig, Tunnel
from hamachi.wire import lan as L
from hamachi.wire.codec import DecodeError

IP = {"a": "100.64.0.2", "b": "100.64.0.3", "c": "100.64.0.4"}
EP = {"a": ("198.51.100.30", 1), "b": ("198.51.100.31", 1), "c": ("198.51.100.32", 1)}
DIRECTED = frozenset({ipaddress.ip_address("100.127.255.255").packed})


def udp4(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    hdr = bytes([0x45, 0, 0, 28 + len(payload)]) + bytes(4) + b"\x40\x11" + bytes(2)
    return (hdr + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
            + b"\x1f\x90\x1f\x90" + (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload)


def eth(dst: bytes, src: bytes, ethertype: bytes = b"\x81\x37", payload: bytes = b"\xff\xff" + bytes(28)) -> bytes:
    return dst + src + ethertype + payload


# -- wire ------------------------------------------------------------------------
VECTOR = bytes.fromhex("01 02 0001020304050607 ffffffffffff 020000000001 8137 ffff")


def test_lan_message_vector_both_ways():
    msg = L.LanMessage.decode(VECTOR + bytes(12))
    assert (msg.kind, msg.network, msg.body[:6]) == (L.KIND_FRAME, bytes(range(8)), b"\xff" * 6)
    assert msg.encode() == VECTOR + bytes(12)
    assert L.LanMessage(L.KIND_GROUP, bytes(8), udp4(IP["a"], "255.255.255.255")).encode()[:2] == b"\x01\x01"
    for n in range(len(VECTOR) - 2):
        with pytest.raises(DecodeError):
            L.LanMessage.decode(VECTOR[:n])
    with pytest.raises(DecodeError, match="unknown LAN message kind"):
        L.LanMessage.decode(b"\x01\x09" + bytes(40))


def test_network_id_is_stable_and_distinct():
    assert L.network_id("lan") == L.network_id("lan") != L.network_id("club")
    assert len(L.network_id("x")) == 8


def test_member_mac_is_stable_local_unicast():
    k = KeyPair.generate().public
    mac = member_mac(k)
    assert mac == member_mac(k) and len(mac) == 6
    assert mac[0] & 0x02 and not mac[0] & 0x01  # locally administered, unicast


@pytest.mark.parametrize("dst,group", [("255.255.255.255", True), ("100.127.255.255", True), ("224.0.0.251", True),
                                       ("224.0.2.60", True), ("239.255.255.250", True), ("100.64.0.3", False),
                                       ("240.0.0.1", False)])
def test_group_destinations_ipv4(dst, group):
    assert is_group_ip(udp4(IP["a"], dst), DIRECTED) is group


def test_group_destinations_ipv6():
    six = bytes([0x60]) + bytes(7) + bytes(16)
    assert is_group_ip(six + ipaddress.ip_address("ff02::1").packed)
    assert not is_group_ip(six + ipaddress.ip_address("fd00::1").packed)


# -- policy: rate limits -----------------------------------------------------------
def test_buckets_packets_and_bytes_refill_on_the_clock():
    b = Buckets(pps=10, bps=1000)
    assert sum(b.allow("s", 10, 0.0) for _ in range(20)) == 10  # one second of burst
    assert not b.allow("s", 10, 0.05)
    assert b.allow("s", 10, 0.1)  # 0.1 s refills one packet
    b = Buckets(pps=1000, bps=1000)
    assert sum(b.allow("s", 400, 5.0) for _ in range(5)) == 2  # bytes run out first
    assert b.allow("other", 400, 5.0)  # per key


def _keys(*names):
    return {n: KeyPair.generate().public for n in names}


def test_group_copies_go_to_co_members_of_broadcast_networks_once():
    k = _keys("a", "b", "c", "d")
    lan = Lan(k["a"])
    lan.set_networks([NetworkPolicy("lan", members=frozenset({k["a"], k["b"], k["c"]})),
                      NetworkPolicy("club", members=frozenset({k["a"], k["c"], k["d"]})),
                      NetworkPolicy("quiet", members=frozenset({k["a"], k["d"]}), broadcast=False),
                      NetworkPolicy("notmine", members=frozenset({k["b"], k["d"]}))])
    online = {k["b"], k["c"], k["d"]}
    copies, reason = lan.group_copies(udp4(IP["a"], "255.255.255.255"), online, 0.0)
    assert reason is None
    assert sorted(key for key, _ in copies) == sorted([k["b"], k["c"], k["d"]])  # c once, though in two networks
    by = {key: L.LanMessage.decode(m).network for key, m in copies}
    assert by[k["b"]] == L.network_id("lan") and by[k["d"]] == L.network_id("club")
    copies, reason = lan.group_copies(udp4(IP["a"], "255.255.255.255"), {k["b"]}, 0.0)
    assert [key for key, _ in copies] == [k["b"]]  # online members only


def test_sender_rate_limit_is_counted_and_recovers():
    k = _keys("a", "b")
    lan = Lan(k["a"])
    lan.set_networks([NetworkPolicy("lan", members=frozenset(k.values()), pps=100)])
    pkt = udp4(IP["a"], "224.0.2.60")
    sent = sum(bool(lan.group_copies(pkt, {k["b"]}, 10.0)[0]) for _ in range(250))
    assert sent == 100
    assert lan.stats()[0]["broadcast_rate"] == 150
    assert lan.group_copies(pkt, {k["b"]}, 10.5)[0]  # half a second later: 50 more
    assert lan.group_copies(pkt, {k["b"]}, 10.5)[1] is None


def test_broadcast_off_drops_with_reason():
    k = _keys("a", "b")
    lan = Lan(k["a"])
    lan.set_networks([NetworkPolicy("lan", members=frozenset(k.values()), broadcast=False)])
    assert lan.group_copies(udp4(IP["a"], "255.255.255.255"), {k["b"]}, 0.0) == ([], D.BROADCAST_OFF)


def test_receiver_accepts_only_co_members_group_packets_within_the_limit():
    k = _keys("a", "b", "x")
    lan = Lan(k["b"])
    lan.set_networks([NetworkPolicy("lan", members=frozenset({k["a"], k["b"]}), pps=10)])
    nid = L.network_id("lan")
    good = L.LanMessage(L.KIND_GROUP, nid, udp4(IP["a"], "255.255.255.255"))
    assert lan.accept_group(k["a"], good, 0.0) is None
    assert lan.accept_group(k["x"], good, 0.0) == D.LAN_NOT_MEMBER
    assert lan.accept_group(k["a"], L.LanMessage(L.KIND_GROUP, L.network_id("other"), good.body), 0.0) == \
        D.LAN_UNKNOWN_NETWORK
    assert lan.accept_group(k["a"], L.LanMessage(L.KIND_GROUP, nid, udp4(IP["a"], IP["b"])), 0.0) == D.LAN_NOT_GROUP
    results = [lan.accept_group(k["a"], good, 1.0) for _ in range(30)]
    assert results.count(None) == 20 and results.count(D.BROADCAST_RATE) == 10  # twice the burst (refilled)


def test_policy_from_server_settings():
    k = _keys("a", "b")
    p = NetworkPolicy.from_settings("lan", "tap", frozenset(k.values()),
                                    {"broadcast": "off", "broadcast_pps": "50", "broadcast_bps": "junk",
                                     "bridges": f"{k['b'].hex()},zz,{'00' * 32}"})
    assert (p.broadcast, p.pps, p.bridges) == (False, 50.0, frozenset({k["b"]}))
    assert p.bps == NetworkPolicy("x").bps  # a bad value falls back to the default


# -- policy: TAP switching ---------------------------------------------------------
def _tap(local="a", bridges=(), cap=None):
    k = _keys("a", "b", "c")
    lan = Lan(k[local])
    kw = {"bridge_macs": cap} if cap else {}
    lan.set_networks([NetworkPolicy("eth", "tap", frozenset(k.values()), bridges=frozenset(k[b] for b in bridges),
                                    **kw)])
    return lan, k, L.network_id("eth")


def test_known_unicast_goes_to_one_member_and_broadcast_floods():
    lan, k, nid = _tap()
    online = {k["b"], k["c"]}
    copies, _ = lan.frame_out(nid, eth(member_mac(k["b"]), lan.local_mac), online, 0.0)
    assert [key for key, _ in copies] == [k["b"]]
    copies, _ = lan.frame_out(nid, eth(b"\xff" * 6, lan.local_mac), online, 0.0)
    assert sorted(key for key, _ in copies) == sorted([k["b"], k["c"]])
    copies, _ = lan.frame_out(nid, eth(b"\x02\x99\x99\x99\x99\x99", lan.local_mac), online, 0.0)
    assert len(copies) == 2  # unknown unicast is flooded
    assert L.LanMessage.decode(copies[0][1]).body == eth(b"\x02\x99\x99\x99\x99\x99", lan.local_mac)


def test_spoofed_source_mac_is_dropped_and_counted():
    lan, k, nid = _tap()
    frame = eth(b"\xff" * 6, b"\x02\x11\x22\x33\x44\x55")
    assert lan.accept_frame(k["b"], L.LanMessage(L.KIND_FRAME, nid, frame), 0.0) == D.SPOOFED_MAC
    frame = eth(b"\xff" * 6, member_mac(k["c"]))  # another member's MAC
    assert lan.accept_frame(k["b"], L.LanMessage(L.KIND_FRAME, nid, frame), 0.0) == D.SPOOFED_MAC
    assert lan.stats()[0]["spoofed_mac"] == 2
    ok = eth(b"\xff" * 6, member_mac(k["b"]))
    assert lan.accept_frame(k["b"], L.LanMessage(L.KIND_FRAME, nid, ok), 0.0) is None


def test_bridge_macs_are_learned_capped_and_aged():
    lan, k, nid = _tap(bridges=("b",), cap=3)
    macs = [bytes([2, 0, 0, 0, 0, i]) for i in range(5)]
    got = [lan.accept_frame(k["b"], L.LanMessage(L.KIND_FRAME, nid, eth(b"\xff" * 6, m)), 0.0) for m in macs]
    assert got == [None, None, None, D.SPOOFED_MAC, D.SPOOFED_MAC]
    assert lan.stats()[0]["learned_macs"] == 3
    # a frame to a learned MAC now goes to the bridge only
    copies, _ = lan.frame_out(nid, eth(macs[1], lan.local_mac), {k["b"], k["c"]}, 1.0)
    assert [key for key, _ in copies] == [k["b"]]
    # c (not a bridge) may not claim a MAC the bridge holds
    assert lan.accept_frame(k["c"], L.LanMessage(L.KIND_FRAME, nid, eth(b"\xff" * 6, macs[0])), 1.0) == D.SPOOFED_MAC
    lan.expire(MAC_AGE + 1)
    assert lan.stats()[0]["learned_macs"] == 0
    assert lan.accept_frame(k["b"], L.LanMessage(L.KIND_FRAME, nid, eth(b"\xff" * 6, macs[4])), MAC_AGE + 2) is None


def test_flood_storm_is_held_to_the_limit():
    lan, k, nid = _tap()
    lan.set_networks([NetworkPolicy("eth", "tap", frozenset(k.values()), pps=500)])
    sent = 0
    now = 0.0
    for _ in range(10_000):  # 10k frames in one second
        now += 0.0001
        sent += bool(lan.frame_out(nid, eth(b"\xff" * 6, lan.local_mac), {k["b"]}, now)[0])
    assert 500 <= sent <= 1001  # one second of burst plus one second of rate
    assert lan.stats()[0]["broadcast_rate"] == 10_000 - sent


def test_tun_and_tap_networks_do_not_mix():
    k = _keys("a", "b")
    lan = Lan(k["b"])
    lan.set_networks([NetworkPolicy("ip", "tun", frozenset(k.values())),
                      NetworkPolicy("eth", "tap", frozenset(k.values()))])
    frame = L.LanMessage(L.KIND_FRAME, L.network_id("ip"), eth(b"\xff" * 6, member_mac(k["a"])))
    assert lan.accept_frame(k["a"], frame, 0.0) == D.LAN_UNKNOWN_NETWORK
    group = L.LanMessage(L.KIND_GROUP, L.network_id("eth"), udp4(IP["a"], "255.255.255.255"))
    assert lan.accept_group(k["a"], group, 0.0) == D.LAN_UNKNOWN_NETWORK


# -- end to end: three tunnels --------------------------------------------------------
class Mesh:
    """a-b share "lan", b-c share "club"; every datagram is delivered in order."""

    def __init__(self):
        self.keys = {n: KeyPair.generate() for n in "abc"}
        self.now = 100.0
        self.t = {n: Tunnel(self.keys[n], self.now, os.urandom) for n in "abc"}
        pub = {n: kp.public for n, kp in self.keys.items()}
        nets = [NetworkPolicy("lan", members=frozenset({pub["a"], pub["b"]})),
                NetworkPolicy("club", members=frozenset({pub["b"], pub["c"]}))]
        for me, others in (("a", "b"), ("b", "ac"), ("c", "b")):
            t = self.t[me]
            t.lan.set_networks(nets)
            t.lan.directed = DIRECTED
            for o in others:
                t.add_peer(PeerConfig(pub[o], (ipaddress.ip_interface(IP[o] + "/32"),), EP[o], 0.0, o))
        self.got = {n: [] for n in "abc"}
        self.wire: list[tuple[str, bytes, tuple]] = []

    def send(self, side: str, packets: list[bytes]):
        for datagrams, ep in self.t[side].send(packets, self.now):
            self.wire += [(side, d, ep) for d in datagrams]
        self.pump()

    def pump(self):
        for _ in range(20):
            for n, t in self.t.items():
                self.wire += [(n, d, ep) for d, ep in t.datagrams_to_send()]
            wire, self.wire = self.wire, []
            if not wire:
                return
            for side, d, ep in wire:
                dst = next(n for n, e in EP.items() if e == ep)
                self.got[dst] += self.t[dst].receive(d, EP[side], self.now)


def test_broadcast_reaches_co_members_only_and_is_never_forwarded():
    m = Mesh()
    m.send("a", [udp4(IP["a"], "255.255.255.255", b"who is there")])  # handshakes, then the copy
    assert [p[28:] for p in m.got["b"]] == [b"who is there"]
    assert m.got["c"] == []  # b shares "club" with c, but never forwards what it received
    m.send("b", [udp4(IP["b"], "100.127.255.255", b"directed"), udp4(IP["b"], "224.0.2.60", b"mc")])
    assert [p[28:] for p in m.got["a"]] == [b"directed", b"mc"]
    assert [p[28:] for p in m.got["c"]] == [b"directed", b"mc"]


def test_spoofed_inner_source_in_a_group_copy_is_dropped():
    m = Mesh()
    m.send("a", [udp4(IP["a"], IP["b"], b"hi")])  # a session first
    a, b = m.t["a"], m.t["b"]
    peer_b = a.peers[m.keys["b"].public]
    msg = L.LanMessage(L.KIND_GROUP, L.network_id("lan"), udp4(IP["c"], "255.255.255.255", b"forged")).encode()
    m.wire += [("a", d, EP["b"]) for d in a.seal_for(peer_b, [msg], m.now)]
    m.pump()
    assert all(b"forged" not in p for p in m.got["b"])
    assert b.drops[D.SPOOFED_SOURCE] == 1


def test_frames_reach_the_tap_queue_of_the_receiver():
    m = Mesh()
    pub = {n: kp.public for n, kp in m.keys.items()}
    for t in m.t.values():
        t.lan.set_networks([NetworkPolicy("eth", "tap", frozenset({pub["a"], pub["b"]}))])
    nid = L.network_id("eth")
    frame = eth(b"\xff" * 6, member_mac(pub["a"]), b"\x00\x20", b"\xff\xff" + bytes(30))  # raw 802.3 IPX
    for peer, msg in m.t["a"].frame_copies(nid, frame, m.now):
        m.wire += [("a", d, EP["b"]) for d in (m.t["a"].seal_for(peer, [msg], m.now) or [])]
    m.pump()
    assert m.t["b"].frames_in == [(nid, frame)]
    assert m.t["c"].frames_in == []
