"""Transport sessions: seal/open round trips for both AEADs, replay and forgery, batch sealing."""

from __future__ import annotations

import os

import pytest

from hamachi.crypto.session import AEADS, Session
from hamachi.wire.transport import DATA_HEADER_LEN, TAG_LEN, DataHeader


def pair(aead: str = "chacha20poly1305") -> tuple[Session, Session]:
    k1, k2 = os.urandom(32), os.urandom(32)
    a = Session(k1, k2, local_index=11, remote_index=22, created=0.0, initiator=True, aead=aead)
    b = Session(k2, k1, local_index=22, remote_index=11, created=0.0, initiator=False, aead=aead)
    return a, b


def deliver(rx: Session, datagram: bytes) -> bytes | None:
    return rx.open(datagram)


@pytest.mark.parametrize("aead", sorted(AEADS))
def test_round_trip_both_aeads(aead):
    a, b = pair(aead)
    for size in (0, 1, 20, 1400, 65000):
        pt = os.urandom(size)
        d = a.seal(pt)
        assert len(d) == DATA_HEADER_LEN + size + TAG_LEN
        hdr = DataHeader.decode(d)
        assert hdr.receiver == 22  # addressed by the peer's index
        assert deliver(b, d) == pt
    assert a.send_counter == 5


def test_seal_many_is_one_aead_message_per_packet():
    a, b = pair()
    packets = [os.urandom(n) for n in (0, 40, 1400, 7)]
    sealed = a.seal_many(packets)
    assert [DataHeader.decode(d).counter for d in sealed] == [0, 1, 2, 3]
    # Losing one datagram loses one packet; the rest open on their own, in any order.
    assert deliver(b, sealed[3]) == packets[3]
    assert deliver(b, sealed[1]) == packets[1]
    assert deliver(b, sealed[0]) == packets[0]
    assert a.seal(b"x") and a.send_counter == 5


def test_replay_is_rejected_once_accepted():
    a, b = pair()
    d = a.seal(b"hello")
    assert deliver(b, d) == b"hello"
    assert deliver(b, d) is None
    assert b.replay.last == 0


@pytest.mark.parametrize("offset", [8, 15, 16, 20, -1])
def test_tampering_counter_or_ciphertext_fails_and_does_not_move_the_window(offset):
    # The type byte and receiver index only pick the session (as in WireGuard); the counter
    # is the nonce, so changing it or any ciphertext/tag byte fails authentication.
    a, b = pair()
    d = bytearray(a.seal(b"payload bytes"))
    d[offset] ^= 0x40
    assert b.open(bytes(d)) is None
    assert b.replay.last == -1  # forged packets never advance the replay window
    # The genuine packet still opens afterwards.
    d[offset] ^= 0x40
    assert deliver(b, bytes(d)) == b"payload bytes"


def test_wrong_key_and_wrong_aead_fail():
    a, _ = pair()
    _, other = pair()
    assert deliver(other, a.seal(b"x")) is None
    c, _ = pair("chacha20poly1305")
    k = os.urandom(32)
    g1 = Session(k, k, 1, 2, 0.0, True, aead="aes256gcm")
    c2 = Session(k, k, 1, 2, 0.0, True, aead="chacha20poly1305")
    assert deliver(c2, g1.seal(b"x")) is None


def test_counter_far_ahead_then_old_is_too_old():
    a, b = pair()
    early = a.seal(b"early")
    a.send_counter = 10_000
    assert deliver(b, a.seal(b"late")) == b"late"
    assert deliver(b, early) is None


def test_exhausted_flag():
    a, _ = pair()
    assert not a.exhausted
    a.send_counter = 2**60
    assert a.exhausted
