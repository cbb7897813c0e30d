"""The STUN responder: RFC 5780 CHANGE-REQUEST handling, no amplification, garbage never answered."""

from __future__ import annotations

import os

import pytest

from hamachi.proto.stun_server import AMPLIFICATION, StunResponder
from hamachi.wire import stun as S

A1, A2 = "198.51.100.10", "198.51.100.11"
CLIENT = ("203.0.113.7", 40000)


@pytest.mark.parametrize("change,origin", [
    (0, (A1, 3478)), (S.CHANGE_PORT, (A1, 3479)), (S.CHANGE_IP, (A2, 3478)), (S.CHANGE_IP | S.CHANGE_PORT, (A2, 3479)),
])
def test_change_request(change, origin):
    r = StunResponder([A1, A2], 3478)
    txid = os.urandom(12)
    src, dst, data = r.handle((A1, 3478), CLIENT, S.binding_request(txid, change))
    assert src == origin and dst == CLIENT
    m = S.StunMessage.decode(data)
    assert m.txid == txid and m.mapped == CLIENT
    assert m.address(S.RESPONSE_ORIGIN) == origin
    assert m.address(S.OTHER_ADDRESS) == (A2, 3479)
    assert S.check_fingerprint(data)


def test_single_address_server_refuses_change_ip_and_omits_other_address():
    r = StunResponder([A1], 3478)
    assert r.handle((A1, 3478), CLIENT, S.binding_request(os.urandom(12), S.CHANGE_IP)) is None
    _, _, data = r.handle((A1, 3478), CLIENT, S.binding_request(os.urandom(12)))
    assert S.StunMessage.decode(data).get(S.OTHER_ADDRESS) is None


def test_never_amplifies():
    r = StunResponder([A1, A2], 3478)
    smallest = S.StunMessage(S.BINDING_REQUEST, os.urandom(12)).encode(fingerprint=False)  # 20 bytes
    out = r.handle((A1, 3478), CLIENT, smallest)
    assert out is not None and len(out[2]) <= AMPLIFICATION * len(smallest)
    assert S.StunMessage.decode(out[2]).mapped == CLIENT


@pytest.mark.parametrize("data,reason", [
    (b"\x04" + bytes(40), "not_stun"),
    (S.StunMessage(S.BINDING_RESPONSE, bytes(12)).encode(), "not_binding_request"),
    (bytes.fromhex("000100082112a442") + bytes(12) + b"\x00\x03\x00\x08", "malformed"),
])
def test_garbage_is_dropped_and_counted(data, reason):
    r = StunResponder([A1, A2], 3478)
    assert r.handle((A1, 3478), CLIENT, data) is None
    assert r.drops[reason] == 1 and r.answered == 0
