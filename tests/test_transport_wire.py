"""Data-socket wire formats: hex vectors both ways, lengths, demux rule."""

from __future__ import annotations

import pytest

from hamachi.wire import transport as T
from hamachi.wire.codec import DecodeError

NOISE1 = bytes(range(T.INIT_NOISE_LEN))
NOISE2 = bytes(range(100, 100 + T.RESPONSE_NOISE_LEN))
M1, M2 = b"\xaa" * 16, b"\xbb" * 16


def test_handshake_init_vector():
    msg = T.HandshakeInit(0x04030201, NOISE1, M1, M2)
    wire = msg.encode()
    assert wire[:8].hex() == "0100000001020304"
    assert wire[8:-32] == NOISE1 and wire[-32:] == M1 + M2
    assert len(wire) == T.INIT_LEN == 149
    assert msg.body() == wire[:-32]
    assert T.HandshakeInit.decode(wire) == msg
    assert T.HandshakeInit.decode(wire + b"future") == msg  # trailing bytes ignored


def test_handshake_response_vector():
    msg = T.HandshakeResponse(1, 0xDEADBEEF, NOISE2, M1, M2)
    wire = msg.encode()
    assert wire[:12].hex() == "0200000001000000efbeadde"
    assert len(wire) == T.RESPONSE_LEN == 93
    assert T.HandshakeResponse.decode(wire) == msg


def test_cookie_reply_vector():
    msg = T.CookieReply(0x10, b"\x01" * 24, b"\x02" * 32)
    wire = msg.encode()
    assert wire.hex() == "0300000010000000" + "01" * 24 + "02" * 32
    assert len(wire) == T.COOKIE_LEN == 64
    assert T.CookieReply.decode(wire) == msg


def test_data_header_vector():
    h = T.DataHeader(0x0A0B0C0D, 0x0102030405060708)
    wire = h.encode()
    assert wire.hex() == "040000000d0c0b0a0807060504030201"
    assert T.DataHeader.decode(wire + b"\x00" * T.TAG_LEN) == h


@pytest.mark.parametrize("decode,wire", [
    (T.HandshakeInit.decode, T.HandshakeResponse(1, 2, NOISE2).encode() + bytes(60)),
    (T.HandshakeResponse.decode, T.HandshakeInit(1, NOISE1).encode()),
    (T.CookieReply.decode, bytes([4]) + bytes(63)),
    (T.DataHeader.decode, bytes([1]) + bytes(40)),
])
def test_wrong_type_is_a_decode_error(decode, wire):
    with pytest.raises(DecodeError, match="type"):
        decode(wire)


def test_data_without_room_for_a_tag_is_a_decode_error():
    with pytest.raises(DecodeError):
        T.DataHeader.decode(T.DataHeader(1, 1).encode() + bytes(T.TAG_LEN - 1))


def test_stun_demux():
    # A STUN binding request: type 0x0001, length 0, magic cookie, 12-byte transaction id.
    stun = bytes.fromhex("00010000" "2112a442") + bytes(12)
    assert T.is_stun(stun)
    assert not T.is_stun(T.HandshakeInit(1, NOISE1).encode())
    assert not T.is_stun(T.DataHeader(0x42A41221, 0).encode() + bytes(16))  # type 4 is never STUN
    assert not T.is_stun(stun[:19])
