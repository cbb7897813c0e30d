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
from hamachi.wire import transport as T
from hamachi.wire.codec import DecodeError

DECODERS = [
    ("handshake_init", T.HandshakeInit.decode, T.HandshakeInit(7, os.urandom(T.INIT_NOISE_LEN)).encode()),
    ("handshake_response", T.HandshakeResponse.decode,
     T.HandshakeResponse(7, 9, os.urandom(T.RESPONSE_NOISE_LEN)).encode()),
    ("cookie_reply", T.CookieReply.decode, T.CookieReply(7, os.urandom(24), os.urandom(32)).encode()),
    ("data_header", T.DataHeader.decode, T.DataHeader(7, 99).encode() + os.urandom(20)),
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
