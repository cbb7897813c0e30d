"""STUN codec: RFC 5769 sample messages both ways, every prefix, random bytes, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hamachi.wire import stun as S
from hamachi.wire.codec import DecodeError

# RFC 5769 §2.2, sample IPv4 response (password "VOkJxbRl1RmTxUk/WvJxBt").
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96")
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")


def test_rfc5769_ipv4_response_decodes():
    m = S.StunMessage.decode(RFC5769_IPV4_RESPONSE)
    assert m.msg_type == S.BINDING_RESPONSE and m.txid == TXID
    assert m.mapped == ("192.0.2.1", 32853)
    assert m.get(S.SOFTWARE) == b"test vector"
    assert S.check_fingerprint(RFC5769_IPV4_RESPONSE)
    assert S.check_integrity(RFC5769_IPV4_RESPONSE, RFC5769_PASSWORD)
    assert not S.check_integrity(RFC5769_IPV4_RESPONSE, b"wrong")


def test_rfc5769_ipv4_response_encodes_byte_for_byte():
    # SOFTWARE is padded with spaces in the RFC's sample; our encoder pads with zeros, so pad the value.
    m = S.StunMessage(S.BINDING_RESPONSE, TXID, (
        (S.SOFTWARE, b"test vector"),
        (S.XOR_MAPPED_ADDRESS, S.encode_address(("192.0.2.1", 32853), S.MAGIC_BYTES + TXID)),
    ))
    ours = m.encode(integrity_key=RFC5769_PASSWORD)
    rfc_with_zero_pad = RFC5769_IPV4_RESPONSE[:20 + 4 + 11] + b"\x00" + RFC5769_IPV4_RESPONSE[36:]
    assert ours[:36] == rfc_with_zero_pad[:36]
    assert ours[36:48] == RFC5769_IPV4_RESPONSE[36:48]  # XOR-MAPPED-ADDRESS
    assert S.check_integrity(ours, RFC5769_PASSWORD) and S.check_fingerprint(ours)


def test_xor_ipv6_round_trip():
    addr = ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    v = S.encode_address(addr, S.MAGIC_BYTES + TXID)
    # RFC 5769 §2.3's X-Port and first X-Address bytes for this address and transaction id
    assert v[2:4] == bytes.fromhex("a147") and v[4:8] == bytes.fromhex("0113a9fa")
    assert S.decode_address(v, S.MAGIC_BYTES + TXID) == addr


def test_every_prefix_raises_decode_error_only():
    for n in range(len(RFC5769_IPV4_RESPONSE)):
        with pytest.raises(DecodeError):
            m = S.StunMessage.decode(RFC5769_IPV4_RESPONSE[:n])
            m.mapped  # noqa: B018 - a prefix that parses must still fail somewhere
            raise DecodeError("parsed")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data):
    try:
        m = S.StunMessage.decode(data)
        m.mapped  # noqa: B018
        m.change_request  # noqa: B018
    except DecodeError:
        pass


@settings(max_examples=100, deadline=None)
@given(txid=st.binary(min_size=12, max_size=12), port=st.integers(0, 65535),
       ip=st.ip_addresses().map(str), change=st.sampled_from([0, 2, 4, 6]))
def test_round_trips(txid, port, ip, change):
    req = S.binding_request(txid, change)
    m = S.StunMessage.decode(req)
    assert S.is_stun(req) and S.check_fingerprint(req) and m.change_request == change
    resp = S.binding_response(txid, (ip, port), ("198.51.100.10", 3478), ("198.51.100.11", 3479))
    r = S.StunMessage.decode(resp)
    assert r.mapped == (ip, port) and r.address(S.OTHER_ADDRESS) == ("198.51.100.11", 3479)


def test_is_stun_tells_stun_from_hamachi_messages():
    assert S.is_stun(S.binding_request(TXID))
    for first in (1, 2, 3, 4, 5):
        assert not S.is_stun(bytes([first]) + bytes(40))
