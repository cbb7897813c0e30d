"""Every decoder: random bytes and every prefix of a valid message raise only DecodeError.

Add new decoders to DECODERS (name, decode function, a valid encoded sample).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hamachi.crypto.keys import KeyPair
from hamachi.proto import offload
from hamachi.proto.tunnel import PeerConfig, Tunnel
from hamachi.wire import lan as L
from hamachi.wire import stun as S
from hamachi.wire import transport as T
from hamachi.wire.codec import DecodeError


def _stun_decode(data: bytes):
    """STUN message plus its mapped address (the attribute a client acts on); re-encodes without FINGERPRINT."""
    m = S.StunMessage.decode(data)
    _ = m.mapped
    return type("Stun", (), {"encode": staticmethod(lambda: m.encode(fingerprint=False))})


_STUN_TXID = os.urandom(12)
DECODERS = [
    ("stun_binding_response", _stun_decode, S.StunMessage(S.BINDING_RESPONSE, _STUN_TXID, (
        (S.XOR_MAPPED_ADDRESS, S.encode_address(("203.0.113.5", 4000), S.MAGIC_BYTES + _STUN_TXID)),
        (S.OTHER_ADDRESS, S.encode_address(("2001:db8::1", 3479))))).encode(fingerprint=False)),
    ("handshake_init", T.HandshakeInit.decode, T.HandshakeInit(7, os.urandom(T.INIT_NOISE_LEN)).encode()),
    ("handshake_response", T.HandshakeResponse.decode,
     T.HandshakeResponse(7, 9, os.urandom(T.RESPONSE_NOISE_LEN)).encode()),
    ("cookie_reply", T.CookieReply.decode, T.CookieReply(7, os.urandom(24), os.urandom(32)).encode()),
    ("data_header", T.DataHeader.decode, T.DataHeader(7, 99).encode() + os.urandom(20)),
    ("lan_frame", L.LanMessage.decode, L.LanMessage(L.KIND_FRAME, os.urandom(8), os.urandom(60)).encode()),
    ("lan_group", L.LanMessage.decode, L.LanMessage(L.KIND_GROUP, os.urandom(8), os.urandom(40)).encode()),
]


@pytest.mark.parametrize("name,decode,sample", DECODERS, ids=[d[0] for d in DECODERS])
def test_round_trip_and_every_prefix(name, decode, sample):
    msg = decode(sample)
    assert msg.encode() == sample[: len(msg.encode())]
    for n in range(len(sample)):
        try:
            decode(sample[:n])
        except DecodeError:
            pass


@pytest.mark.parametrize("name,decode,sample", DECODERS, ids=[d[0] for d in DECODERS])
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_decode_error(name, decode, sample, data):
    try:
        decode(data)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), first=st.integers(0, 255))
def test_tunnel_receive_never_raises_and_never_answers_garbage(data, first):
    t = Tunnel(KeyPair.generate(), 0.0, os.urandom)
    t.add_peer(PeerConfig(KeyPair.generate().public, (), ("198.51.100.9", 1)))
    assert t.receive(bytes([first]) + data, ("198.51.100.7", 9), 1.0) == []
    assert t.datagrams_to_send() == []
    assert sum(t.drops.values()) == 1


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_offload_split_raises_only_offload_error(data):
    try:
        offload.split(data)
    except offload.OffloadError:
        pass


@settings(max_examples=200, deadline=None)
@given(packets=st.lists(st.binary(max_size=120), max_size=8))
def test_coalesce_never_raises(packets):
    out = offload.coalesce(packets)
    assert len(out) <= max(1, len(packets)) or not packets


def _valid_datagrams() -> tuple[Tunnel, list[bytes], bytes]:
    """A responder tunnel and real datagrams sent to it (initiation, data, keepalive)."""
    import ipaddress

    ka, kb = KeyPair.generate(), KeyPair.generate()
    a, b = Tunnel(ka, 0.0, os.urandom), Tunnel(kb, 0.0, os.urandom)
    a.add_peer(PeerConfig(kb.public, (ipaddress.ip_interface("100.64.0.2/32"),), ("198.51.100.2", 1)))
    b.add_peer(PeerConfig(ka.public, (ipaddress.ip_interface("100.64.0.1/32"),), ("198.51.100.1", 1)))
    pkt = bytes([0x45, 0, 0, 24]) + bytes(8) + bytes([100, 64, 0, 1, 100, 64, 0, 2]) + b"ping"
    a.send([pkt], 1.0)
    (init, _), = a.datagrams_to_send()
    b.receive(init, ("198.51.100.1", 1), 1.0)
    (resp, _), = b.datagrams_to_send()
    a.receive(resp, ("198.51.100.2", 1), 1.0)
    sent = [d for d, _ in a.datagrams_to_send()]
    return b, [init, resp, *sent], pkt


_RESPONDER, _VALID, _INNER = _valid_datagrams()


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, 10), pos=st.integers(0, 400), flip=st.integers(1, 255),
       cut=st.integers(0, 400))
def test_tunnel_receive_survives_mutated_real_datagrams(which, pos, flip, cut):
    d = bytearray(_VALID[which % len(_VALID)])
    d[pos % len(d)] ^= flip
    d = bytes(d[: max(1, cut)]) if cut < len(d) else bytes(d)
    got = _RESPONDER.receive(d, ("198.51.100.1", 1), 2.0)
    assert all(p == _INNER for p in got)  # a mutation never yields a different inner packet
    _RESPONDER.datagrams_to_send()
