"""The relay table in memory: tickets, binding, forwarding only between the two named peers, drops."""

from __future__ import annotations

import os

import pytest

from hamachi.crypto.keys import KeyPair
from hamachi.crypto.ticket import Ticket, shared_key
from hamachi.proto.relay import RelayTable
from hamachi.wire import relay as R
from hamachi.wire.codec import DecodeError

SERVER, RELAY, OTHER_RELAY = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
A, B = KeyPair.generate().public, KeyPair.generate().public
A_END, B_END, EVE = ("udp", "203.0.113.1", 1000), ("tcp", 7), ("udp", "203.0.113.66", 6666)


def ticket(expires=10_000, rate=0, account="", sid=b"S" * 8, key=None):
    return Ticket(sid, A, B, expires, rate, account).encode(key or shared_key(SERVER, RELAY.public))


def table(**kw):
    return RelayTable(shared_key(RELAY, SERVER.public), **kw)


def bind_both(t, tk=None):
    tk = tk or ticket()
    assert t.handle(A_END, R.Bind(0, tk).encode(), 1.0, 100.0) == [(A_END, R.Bound(b"S" * 8).encode())]
    assert t.handle(B_END, R.Bind(1, tk).encode(), 1.0, 100.0) == [(B_END, R.Bound(b"S" * 8).encode())]


def test_both_sides_derive_the_same_key():
    assert shared_key(SERVER, RELAY.public) == shared_key(RELAY, SERVER.public)
    assert shared_key(SERVER, RELAY.public) != shared_key(SERVER, OTHER_RELAY.public)


def test_forwarding_between_udp_and_tcp_peers_only():
    t = table()
    bind_both(t)
    msg = R.data_header(b"S" * 8) + b"ciphertext"
    assert t.handle(A_END, msg, 2.0, 100.0) == [(B_END, msg)]
    assert t.handle(B_END, msg, 2.0, 100.0) == [(A_END, msg)]
    assert t.handle(EVE, msg, 2.0, 100.0) == []  # a stranger cannot inject into the session
    assert t.drops["not_bound"] == 1


@pytest.mark.parametrize("tk,reason", [
    (ticket(key=shared_key(SERVER, OTHER_RELAY.public)), "forged_ticket"),  # for another relay
    (ticket()[:-1] + bytes([ticket()[-1] ^ 1]), "forged_ticket"),
    (ticket(expires=50), "expired_ticket"),
    (b"\x01\x02", "malformed"),
])
def test_bad_tickets_are_dropped_and_never_answered(tk, reason):
    t = table()
    assert t.handle(EVE, R.Bind(0, tk).encode(), 1.0, 100.0) == []
    assert t.drops[reason] == 1 and not t.sessions


def test_a_ticket_cannot_take_over_another_session():
    t = table()
    bind_both(t)
    other = Ticket(b"S" * 8, A, KeyPair.generate().public, 10_000).encode(shared_key(SERVER, RELAY.public))
    assert t.handle(EVE, R.Bind(1, other).encode(), 1.0, 100.0) == []
    assert t.sessions[b"S" * 8].ends[1] == B_END


def test_peer_not_bound_oversized_rate_and_flood():
    t = table(binds_per_second=3)
    t.handle(A_END, R.Bind(0, ticket(rate=1000)).encode(), 1.0, 100.0)
    msg = R.data_header(b"S" * 8) + b"x" * 100
    assert t.handle(A_END, msg, 1.0, 100.0) == [] and t.drops["peer_not_bound"] == 1
    t.handle(B_END, R.Bind(1, ticket(rate=1000)).encode(), 1.0, 100.0)
    sent = sum(bool(t.handle(A_END, msg, 1.0, 100.0)) for _ in range(20))
    assert sent < 20 and t.drops["rate_limited"] > 0  # 1000 B/s: only ~9 of 20 fit
    assert t.handle(A_END, R.data_header(b"S" * 8) + b"x" * 70000, 1.0, 100.0) == []
    assert t.drops["oversized"] == 1
    for _ in range(5):
        t.handle(EVE, R.Bind(0, os.urandom(120)).encode(), 1.0, 100.0)
    assert t.drops["flood"] == 2  # a burst of 3 binds per source, then nothing is even looked at


def test_ping_only_for_bound_and_idle_expiry():
    t = table(idle_timeout=30)
    bind_both(t)
    assert t.handle(A_END, R.Ping(0, b"n" * 8).encode(), 2.0, 100.0) == [(A_END, R.Ping(1, b"n" * 8).encode())]
    assert t.handle(EVE, R.Ping(0, b"n" * 8).encode(), 2.0, 100.0) == []
    assert t.expire(20.0) == 0 and t.expire(40.0) == 1
    assert t.handle(A_END, R.data_header(b"S" * 8) + b"x", 41.0, 100.0) == []


def test_ticket_and_message_decoders_raise_only_decode_error():
    tk = ticket()
    key = shared_key(RELAY, SERVER.public)
    for n in range(len(tk)):
        with pytest.raises(DecodeError):
            Ticket.decode(tk[:n], key)
    for raw in (b"", b"\x06", b"\x07\x00", b"\x08" * 5, b"\x09\x05" + bytes(8)):
        for dec in (R.Bind.decode, R.Bound.decode, R.split_data, R.Ping.decode):
            try:
                dec(raw)
            except DecodeError:
                pass
