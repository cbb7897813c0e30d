"""Discovery against the real responder through simulated NATs, in memory, with a hand-advanced clock."""

from __future__ import annotations

import itertools
import os

import pytest

from hamachi.proto.discovery import ADM, APDM, EIM, Discovery, NatReport
from hamachi.proto.stun_server import StunResponder

A1, A2, P1 = "198.51.100.10", "198.51.100.11", 3478
INNER = ("10.0.0.2", 5000)
WAN = "203.0.113.9"


class Nat:
    """A model NAT: mapping and filtering behaviour, hairpin on or off."""

    def __init__(self, mapping, filtering, hairpin=False):
        self.mapping, self.filtering, self.hairpin = mapping, filtering, hairpin
        self.maps: dict = {}
        self.sent: set = set()
        self.ports = itertools.count(40000)

    def out(self, dst):
        key = {EIM: (), ADM: (dst[0],), APDM: dst}[self.mapping]
        if key not in self.maps:
            self.maps[key] = (WAN, next(self.ports))
        self.sent.add(dst)
        return self.maps[key]

    def inbound_ok(self, src):
        if self.filtering == EIM:
            return True
        if self.filtering == ADM:
            return any(d[0] == src[0] for d in self.sent)
        return src in self.sent


def run(nat: Nat | None, server_addrs=(A1, A2), udp=True):
    server = StunResponder(list(server_addrs), P1)
    local = INNER if nat else ("198.51.100.30", 5000)
    now = 0.0
    d = Discovery((A1, P1), local, os.urandom, now)
    while not d.done and now < 30:
        for data, dst in d.datagrams_to_send():
            if not udp:
                continue
            src = nat.out(dst) if nat else local
            if dst[0] == WAN or dst == local:  # to our own mapping: hairpin
                if nat is None or nat.hairpin:
                    d.receive(data, src, now)
                continue
            out = server.handle(dst, src, data)
            if out is not None:
                origin, to, resp = out
                if nat is None or nat.inbound_ok(origin):
                    d.receive(resp, origin, now)
        now += 0.05
        d.handle_timer(now)
    return d.report


@pytest.mark.parametrize("mapping", [EIM, ADM, APDM])
@pytest.mark.parametrize("filtering", [EIM, ADM, APDM])
def test_every_combination_is_told_apart(mapping, filtering):
    r = run(Nat(mapping, filtering))
    assert (r.udp, r.nat, r.mapping, r.filtering) == (True, True, mapping, filtering)


def test_hairpin_and_public_and_blocked():
    assert run(Nat(EIM, APDM, hairpin=True)).hairpin is True
    assert run(Nat(EIM, APDM, hairpin=False)).hairpin is False
    pub = run(None)
    assert pub.nat is False and pub.mapping == EIM and pub.filtering == EIM
    blocked = run(None, udp=False)
    assert blocked.udp is False and "blocked" in blocked.summary


def test_one_address_server_gives_mapped_address_only():
    r = run(Nat(EIM, APDM), server_addrs=(A1,))
    assert r.mapped is not None and r.mapping is None and r.filtering is None
    assert any("one address" in n for n in r.notes)


def test_summary_says_unknown_in_words():
    assert NatReport(udp=True, nat=True).summary == \
        "NAT: mapping and filtering unknown (the server could not test them), hairpin unknown"
    assert "?" not in NatReport(udp=True, nat=True, mapping="endpoint-independent").summary
