"""Noise IK: known-answer vectors (cross-checked with an independent implementation) and failure states."""

from __future__ import annotations

import warnings

import pytest

from hamachi.crypto.keys import KeyPair
from hamachi.crypto.noise import CipherState, HandshakeError, NoiseIK

SI, SR, EI, ER = (KeyPair.from_private(bytes([i]) * 32) for i in (1, 2, 3, 4))
PROLOGUE = b"hamachi-kat"
# Produced by our implementation and confirmed byte for byte by the `noiseprotocol`
# package (test_against_noiseprotocol below) with the same fixed keys.
KAT_M1 = bytes.fromhex(
    "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef224391bcfef3f1b0f051873c2103356110"
    "f8056ef928c4354783347c74dc7b71b7dbb873d11ea7f619109866fc63f21c9c9f63830df95a17a245374c5376228507"
    "d9124c7f1c2a283cc0")
KAT_M2 = bytes.fromhex(
    "ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10bd98ce7cadfff6c51d42eadc315538dfa"
    "52b482574696c1ac06")
KAT_HASH = bytes.fromhex("269b96c482b1403621f358d5d9893322b25856e65caf90f76ac6d5e1d55de28e")
KAT_K1 = bytes.fromhex("8b63a17b3027c853ffcfea99dae9d090a15504924d85f87dedb5f6f99e53f853")
KAT_K2 = bytes.fromhex("9b40738cc543c05f5ebd16dac9b12211c6e9edbb42385d92c47bd6def1f318ae")


def _pair(prologue=PROLOGUE):
    return (NoiseIK.initiator(SI, SR.public, prologue, ephemeral=EI),
            NoiseIK.responder(SR, prologue, ephemeral=ER))


def test_known_answer_vectors():
    a, b = _pair()
    m1 = a.write_message(b"payload-1")
    assert m1 == KAT_M1
    assert b.read_message(m1) == b"payload-1"
    assert b.remote_static == SI.public
    m2 = b.write_message(b"payload-2")
    assert m2 == KAT_M2
    assert a.read_message(m2) == b"payload-2"
    assert a.complete and b.complete
    assert a.handshake_hash == b.handshake_hash == KAT_HASH
    a_send, a_recv = a.split()
    b_send, b_recv = b.split()
    assert (a_send.k, a_recv.k) == (KAT_K1, KAT_K2)
    assert (b_send.k, b_recv.k) == (KAT_K2, KAT_K1)
    ct = a_send.encrypt_with_ad(b"ad", b"hello")
    assert b_recv.decrypt_with_ad(b"ad", ct) == b"hello"


def test_against_noiseprotocol():
    noise = pytest.importorskip("noise.connection", reason="the `noiseprotocol` package is not installed")
    Keypair = noise.Keypair
    ni = noise.NoiseConnection.from_name(b"Noise_IK_25519_ChaChaPoly_BLAKE2s")
    ni.set_as_initiator()
    ni.set_prologue(PROLOGUE)
    ni.set_keypair_from_private_bytes(Keypair.STATIC, SI.private)
    ni.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, SR.public)
    nr = noise.NoiseConnection.from_name(b"Noise_IK_25519_ChaChaPoly_BLAKE2s")
    nr.set_as_responder()
    nr.set_prologue(PROLOGUE)
    nr.set_keypair_from_private_bytes(Keypair.STATIC, SR.private)
    ni.set_keypair_from_private_bytes(Keypair.EPHEMERAL, EI.private)
    nr.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ER.private)
    with warnings.catch_warnings():  # it warns, rightly, that fixed ephemerals are for tests only
        warnings.simplefilter("ignore")
        ni.start_handshake()
        nr.start_handshake()
    assert bytes(ni.write_message(b"payload-1")) == KAT_M1
    assert bytes(nr.read_message(KAT_M1)) == b"payload-1"
    assert bytes(nr.write_message(b"payload-2")) == KAT_M2
    ni.read_message(KAT_M2)
    assert ni.get_handshake_hash() == KAT_HASH
    # Transport interop: their initiator's first message decrypts with our responder's keys.
    a, b = _pair()
    b.read_message(a.write_message(b"payload-1"))
    a.read_message(b.write_message(b"payload-2"))
    _, b_recv = b.split()
    assert b_recv.decrypt_with_ad(b"", bytes(ni.encrypt(b"interop"))) == b"interop"


def _flip(msg: bytes, at: int) -> bytes:
    return msg[:at] + bytes([msg[at] ^ 1]) + msg[at + 1 :]


def _responder_after(m1: bytes) -> NoiseIK:
    b = NoiseIK.responder(SR, PROLOGUE)
    b.read_message(m1)
    return b


# (case, function producing the machine and the bad input, who reads, expected: "failed" or "usable")
def _m1():
    return NoiseIK.initiator(SI, SR.public, PROLOGUE).write_message(b"ts")


FAILURES = [
    ("wrong responder key", lambda: (NoiseIK.responder(KeyPair.generate(), PROLOGUE), _m1()), "failed"),
    ("tampered ephemeral", lambda: (NoiseIK.responder(SR, PROLOGUE), _flip(_m1(), 0)), "failed"),
    ("tampered static", lambda: (NoiseIK.responder(SR, PROLOGUE), _flip(_m1(), 40)), "failed"),
    ("tampered payload", lambda: (NoiseIK.responder(SR, PROLOGUE), _flip(_m1(), 90)), "failed"),
    ("wrong prologue", lambda: (NoiseIK.responder(SR, b"other"), _m1()), "failed"),
    ("truncated message 1", lambda: (NoiseIK.responder(SR, PROLOGUE), _m1()[:50]), "usable"),
    ("empty message", lambda: (NoiseIK.responder(SR, PROLOGUE), b""), "usable"),
]


@pytest.mark.parametrize("case,make,after", FAILURES, ids=[f[0] for f in FAILURES])
def test_responder_failures_leave_a_defined_state(case, make, after):
    machine, msg = make()
    with pytest.raises(HandshakeError):
        machine.read_message(msg)
    if after == "failed":
        assert machine.failed and not machine.complete
        with pytest.raises(HandshakeError):
            machine.read_message(_m1())
    else:
        assert not machine.failed
        assert machine.read_message(_m1()) == b"ts"  # still takes a good message


def test_initiator_failures():
    a = NoiseIK.initiator(SI, SR.public, PROLOGUE)
    m1 = a.write_message(b"")
    b = _responder_after(m1)
    m2 = b.write_message(b"")
    with pytest.raises(HandshakeError):
        a.read_message(m2[:20])  # too short: rejected before any state changes
    assert not a.failed
    with pytest.raises(HandshakeError):
        a.read_message(_flip(m2, 40))  # tampered tag: state was mixed, so the machine is dead
    assert a.failed
    with pytest.raises(HandshakeError):
        a.split()


def test_wrong_order_calls_change_nothing():
    a = NoiseIK.initiator(SI, SR.public, PROLOGUE)
    with pytest.raises(HandshakeError):
        a.read_message(b"\x00" * 64)
    assert not a.failed
    b = NoiseIK.responder(SR, PROLOGUE)
    with pytest.raises(HandshakeError):
        b.write_message(b"")
    assert not b.failed
    a.write_message(b"")
    with pytest.raises(HandshakeError):
        a.write_message(b"")


def test_low_order_ephemeral_is_rejected():
    m1 = bytearray(_m1())
    m1[:32] = bytes(32)  # the all-zero point gives an all-zero DH result
    b = NoiseIK.responder(SR, PROLOGUE)
    with pytest.raises(HandshakeError):
        b.read_message(bytes(m1))
    assert b.failed


def test_forward_secrecy_fresh_ephemerals_give_fresh_keys():
    keys = set()
    for _ in range(3):
        a, b = NoiseIK.initiator(SI, SR.public), NoiseIK.responder(SR)
        b.read_message(a.write_message(b""))
        a.read_message(b.write_message(b""))
        keys.add(a.split()[0].k)
    assert len(keys) == 3


def test_cipherstate_counts_nonces():
    c1, c2 = CipherState(bytes(32)), CipherState(bytes(32))
    cts = [c1.encrypt_with_ad(b"", b"x") for _ in range(3)]
    assert len(set(cts)) == 3
    assert [c2.decrypt_with_ad(b"", ct) for ct in cts] == [b"x"] * 3
    with pytest.raises(HandshakeError):
        c2.decrypt_with_ad(b"", cts[0])  # out of order for an ordered transport
