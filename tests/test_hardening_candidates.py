"""Issue 9, findings 1 and 2: candidates are typed, checked by the server, capped by the client,
and a bad destination never costs another datagram. Each test is an attack that must fail."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from hamachi.crypto.keys import KeyPair
from hamachi.io.dataplane import DataPlane
from hamachi.io.udp import UdpSocket
from hamachi.proto import candidates as cand
from hamachi.proto.stun_server import StunResponder
from hamachi.proto.tunnel import (
    DEST_HANDSHAKE_BURST,
    DEST_HANDSHAKE_RATE,
    SPRAY_ROUNDS,
    PeerConfig,
    Tunnel,
)
from hamachi.wire import control as M
from hamachi.wire import stun as S
from hamachi.wire.codec import DecodeError
from tests.test_control_proto import World

VICTIM = "198.51.100.99"
C = M.Candidate


# -- the wire record ------------------------------------------------------------------
def test_candidate_round_trip_and_every_prefix_is_a_decode_error():
    msg = M.PeerUp(b"k" * 32, "n", "a", "b", (C(C.PUBLIC, "203.0.113.7", 41641), C(C.LAN, "fd00::1", 9)))
    data = msg.encode()
    assert M.decode(data) == msg
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            M.decode(data[:n])


@pytest.mark.parametrize("bad, why", [
    (bytes([1, 5]) + bytes(4) + b"\x00\x01", "family 5"),  # neither IPv4 nor IPv6
    (bytes([1, 4, 10, 0, 0, 1, 0, 0]), "port 0"),
    (bytes([9, 4, 10, 0, 0, 1, 0, 1]), "unknown kind"),
    (bytes([1, 6]) + bytes(4) + b"\x00\x01", "truncated IPv6"),
])
def test_candidate_decoder_rejects_bad_records(bad, why):
    head = M.Discovery(1).encode()[:-2]  # a Discovery without its candidate list
    with pytest.raises(DecodeError):
        M.decode(head + b"\x00\x01" + bad)


def test_candidate_refuses_hostnames_and_bad_ports_at_the_edge():
    for args in ((C.LAN, "victim.example", 1), (C.LAN, "10.0.0.1", 70000), (C.LAN, "10.0.0.1", 0), (7, "10.0.0.1", 1)):
        with pytest.raises(ValueError):
            C(*args)
    too_many = tuple(C(C.LAN, f"10.0.0.{i}", 1) for i in range(1, M.MAX_CANDIDATES + 2))
    with pytest.raises(ValueError):
        M.Discovery(1, (), too_many).encode()
    w = M.Writer().u8(1).u8(M.Discovery.TYPE).u16(1).u16(0).u16(len(too_many))
    for c in too_many:
        c._write(w)
    with pytest.raises(DecodeError, match="more than the 10 allowed"):
        M.decode(w.getvalue())


# -- the server keeps only what it observed or can check -----------------------------------
def _pair(report_b=(), claimed_b=(), observed=None):
    w = World()
    w.core.stun_observed = observed
    w.login("alice")
    w.keys.setdefault("bob", KeyPair.generate())
    w.inbox["bob"] = []
    w.core.connect("bob", w.keys["bob"].public, ("203.0.113.50", 5555), w.now)
    w.core.receive("bob", M.Hello("test", "bob", ""), w.now)
    w.core.receive("bob", M.Discovery(41641, report_b, claimed_b), w.now)
    w.flush()
    w.ask("alice", "create", network="lan")
    w.ask("bob", "join", network="lan")
    (up,) = w.take("alice", M.PeerUp)  # what alice learns about bob
    return up


def test_reported_mapped_and_lan_victims_never_reach_other_members():
    # bob claims the victim as its STUN-mapped endpoint, as LAN and forwarded candidates, and a
    # symmetric NAT; none of it is forwarded: only where bob's connection really comes from.
    report = (("mapped", f"{VICTIM}:53"), ("lan", f"{VICTIM}:53"), ("mapping", cand.APDM),
              ("filtering", cand.APDM))
    claimed = (C(C.LAN, VICTIM, 53), C(C.FORWARDED, VICTIM, 53), C(C.LAN, "8.8.8.8", 53))
    up = _pair(report, claimed)
    assert [str(c) for c in up.candidates] == ["203.0.113.50:41641"]
    assert up.nat == ""  # no birthday probing on bob's word


def test_at_most_eight_private_or_link_local_lan_candidates():
    claimed = tuple(C(C.LAN, f"10.1.0.{i}", 41641) for i in range(1, 11))
    claimed = claimed[:7] + (C(C.LAN, "169.254.3.4", 1), C(C.LAN, "127.0.0.1", 1), C(C.LAN, "fe80::1", 2))
    up = _pair((), claimed)
    lan = [c for c in up.candidates if c.kind == C.LAN]
    assert len(lan) == 8 and all(cand.is_lan(c.ip) for c in lan)
    assert "127.0.0.1" not in {c.ip for c in lan}


def test_public_port_and_symmetric_mapping_come_from_the_server_s_own_stun_service():
    stun = StunResponder(["198.51.100.10", "198.51.100.11"], 3478)
    t1, m2, m3 = os.urandom(12), os.urandom(12), os.urandom(12)
    for txid, local, port in ((t1, ("198.51.100.10", 3478), 20001), (m2, ("198.51.100.11", 3478), 20002),
                              (m3, ("198.51.100.11", 3479), 20003)):
        assert stun.handle(local, ("203.0.113.50", port), S.binding_request(txid)) is not None
    report = (("txid:T1", t1.hex()), ("txid:M2", m2.hex()), ("txid:M3", m3.hex()), ("filtering", cand.APDM))
    up = _pair(report, (), stun.observed)
    assert [str(c) for c in up.candidates] == ["203.0.113.50:20001"]
    assert up.nat == f"{cand.APDM}/{cand.APDM}"
    # probes the STUN service saw from another address (spoofed, or someone else's) do not count
    spoof = StunResponder(["198.51.100.10", "198.51.100.11"], 3478)
    for txid in (t1, m2, m3):
        spoof.handle(("198.51.100.10", 3478), (VICTIM, 53), S.binding_request(txid))
    up = _pair(report, (), spoof.observed)
    assert [str(c) for c in up.candidates] == ["203.0.113.50:41641"] and up.nat == ""


# -- the client caps what it sends, whoever told it where ----------------------------------
def test_handshakes_to_one_destination_are_capped():
    # twenty "peers" (a hostile server, or members) all give the victim as their endpoint
    t = Tunnel(KeyPair.generate(), 0.0, os.urandom)
    victim = (VICTIM, 53)
    for i in range(20):
        t.add_peer(PeerConfig(KeyPair.generate().public, (ipaddress.ip_interface(f"100.64.0.{10 + i}/32"),),
                              victim, 0.0, "x", (victim,) * 9, spray=256 if i == 0 else 0))
    sent = []
    now = 0.0
    while now < 60.0:
        for i in range(20):
            t.send([bytes([0x45]) + bytes(15) + ipaddress.ip_address(f"100.64.0.{10 + i}").packed], now)
        t.handle_timer(now)
        sent += [a for _d, a in t.datagrams_to_send()]
        now += 0.1
    at_victim = sum(a == victim for a in sent)
    assert at_victim <= DEST_HANDSHAKE_BURST + DEST_HANDSHAKE_RATE * 60
    sprayed = sum(a[0] == VICTIM and a != victim for a in sent)
    assert sprayed <= 256 * SPRAY_ROUNDS  # birthday rounds end; they do not go on forever
    assert t.drops["handshake_capped"] > 0


def test_one_bad_destination_never_costs_the_other_datagrams():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2.0)
    good = rx.getsockname()

    class Core:
        def datagrams_to_send(self):
            return [(b"1", ("::1", 9)), (b"2", ("127.0.0.1", 70000)), (b"3", ("no such host", 9)),
                    (b"4", ["unhashable"]), (b"ok", good)]

    udp = UdpSocket("127.0.0.1", 0, offload=False)
    dp = DataPlane(None, udp, Core())
    try:
        dp._flush()
        assert rx.recvfrom(100)[0] == b"ok"
        assert udp.send_errors + dp.drops["send_error"] == 4
    finally:
        udp.close()
        rx.close()
        os.close(dp._wake_r)
        os.close(dp._wake_w)
