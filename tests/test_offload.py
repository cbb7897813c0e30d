"""TSO splitting and GRO-style coalescing, checked against a plain reference checksum."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hamachi.proto import offload as O


def ref_checksum(data: bytes) -> int:
    """RFC 1071, word by word."""
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_packet(payload: bytes, seq: int = 1000, flags: int = O.TCP_ACK | O.TCP_PSH, v6: bool = False,
               src="100.64.0.1", dst="100.64.0.2") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, 5 << 4, flags, 512, 0, 0)
    if v6:
        s, d = ipaddress.ip_address("fd00::1").packed, ipaddress.ip_address("fd00::2").packed
        ip = struct.pack("!IHBB", 6 << 28, len(tcp) + len(payload), 6, 64) + s + d
    else:
        s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64, 6, 0) + s + d
        ip = ip[:10] + struct.pack("!H", ref_checksum(ip)) + ip[12:]
    return ip + tcp + payload


def tcp_ok(pkt: bytes) -> bool:
    v6 = pkt[0] >> 4 == 6
    ihl = 40 if v6 else 20
    l4 = pkt[ihl:]
    if v6:
        pseudo = pkt[8:40] + struct.pack("!IxxxB", len(l4), 6)
    else:
        pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(l4))
        if ref_checksum(pkt[:20]) != 0:
            return False
    return ref_checksum(pseudo + l4) == 0


def vnet(pkt: bytes, mss: int, v6: bool = False) -> bytes:
    return O.VNET_HDR.pack(O.F_NEEDS_CSUM, O.GSO_TCPV6 if v6 else O.GSO_TCPV4, 40 if not v6 else 60, mss,
                           40 if v6 else 20, 16) + pkt


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 20000), mss=st.integers(100, 1400), v6=st.booleans())
def test_split_gives_valid_segments_that_reassemble(size, mss, v6):
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    segs = O.split(vnet(tcp_packet(payload, v6=v6), mss, v6))
    assert len(segs) == (size + mss - 1) // mss
    ihl = 40 if v6 else 20
    assert b"".join(s[ihl + 20 :] for s in segs) == payload
    for i, s in enumerate(segs):
        # The sender leaves the TCP checksum to the receiver; the IPv4 header checksum is valid.
        assert v6 or ref_checksum(s[:20]) == 0, f"segment {i} has a bad IP header checksum"
        assert tcp_ok(O.finish_tcp(s)), f"segment {i}: the receiver's checksum is bad"
        assert tcp_ok(O.finish_checksum(O._single(s)[O.VNET_HDR_LEN:], ihl, 16)), "as the kernel finishes it"
        seq = struct.unpack_from("!I", s, ihl + 4)[0]
        assert seq == 1000 + i * mss
        flags = s[ihl + 13]
        assert bool(flags & O.TCP_PSH) == (i == len(segs) - 1)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 30000), mss=st.integers(200, 1400))
def test_coalesce_undoes_split(size, mss):
    payload = (b"hamachi!" * (size // 8 + 1))[:size]
    segs = O.split(vnet(tcp_packet(payload), mss))
    writes = O.coalesce(segs)
    if len(segs) == 1:
        (w,) = writes
        assert O.VNET_HDR.unpack_from(w) == (O.F_NEEDS_CSUM, O.GSO_NONE, 0, 0, 20, 16)
        assert tcp_ok(O.finish_checksum(w[O.VNET_HDR_LEN:], 20, 16))
        return
    body = b"".join(w[O.VNET_HDR_LEN + 40 :] for w in writes)
    assert body == payload
    flags, gso, hdr_len, gso_size, cs, co = O.VNET_HDR.unpack_from(writes[0])
    assert (flags, gso, hdr_len, gso_size, cs, co) == (O.F_NEEDS_CSUM, O.GSO_TCPV4, 40, mss, 20, 16)
    # The partial checksum plus the L4 bytes gives a valid checksum, as the kernel will compute.
    pkt = writes[0][O.VNET_HDR_LEN :]
    assert tcp_ok(O.finish_checksum(pkt, 20, 16))


def test_coalesce_keeps_flows_and_non_tcp_apart():
    a = O.split(vnet(tcp_packet(b"a" * 3000), 1000))
    b = O.split(vnet(tcp_packet(b"b" * 3000, src="100.64.0.9"), 1000))
    udp = bytes([0x45]) + bytes(19)
    writes = O.coalesce([a[0], a[1], b[0], udp, a[2]])
    assert len(writes) == 4  # a0+a1 merged; b0; udp; a2 (out of run)
    assert writes[2] == O.PLAIN_HDR + udp


def test_non_gso_packet_with_partial_checksum_is_finished():
    pkt = bytearray(tcp_packet(b"data"))
    # Put the pseudo-header sum in the checksum field, as the kernel does for CHECKSUM_PARTIAL.
    struct.pack_into("!H", pkt, 36, O.pseudo_sum(bytes(pkt), len(pkt) - 20, 6))
    out = O.split(O.VNET_HDR.pack(O.F_NEEDS_CSUM, 0, 0, 0, 20, 16) + bytes(pkt))
    assert tcp_ok(O.finish_tcp(out[0]))  # TCP: the receiver finishes it
    udp = bytearray(tcp_packet(b"data"))
    udp[9] = 17  # the same bytes as UDP: also left to the receiver
    udp[10:12] = b"\x00\x00"
    udp[10:12] = struct.pack("!H", ref_checksum(bytes(udp[:20])))
    struct.pack_into("!H", udp, 26, O.pseudo_sum(bytes(udp), len(udp) - 20, 17))
    (out,) = O.split(O.VNET_HDR.pack(O.F_NEEDS_CSUM, 0, 0, 0, 20, 6) + bytes(udp))
    assert out == bytes(udp)

    def udp_ok(p):
        return ref_checksum(p[12:20] + struct.pack("!BBH", 0, 17, len(p) - 20) + p[20:]) == 0

    assert udp_ok(O.finish_tcp(out))
    (w,) = O.coalesce([out])
    assert O.VNET_HDR.unpack_from(w) == (O.F_NEEDS_CSUM, O.GSO_NONE, 0, 0, 20, 6)
    assert udp_ok(O.finish_checksum(w[O.VNET_HDR_LEN:], 20, 6))


def test_receiver_ignores_whatever_tcp_checksum_arrives():
    pkt = bytearray(tcp_packet(b"payload"))
    pkt[36:38] = b"\xde\xad"  # garbage from the sender: the receiver computes its own
    assert tcp_ok(O.finish_tcp(bytes(pkt)))
    w = O.coalesce([bytes(pkt)])[0]
    assert tcp_ok(O.finish_checksum(w[O.VNET_HDR_LEN:], 20, 16))
    udp = bytes([0x45]) + bytes(19)
    assert O.finish_tcp(udp) == udp and O.coalesce([udp]) == [O.PLAIN_HDR + udp]


@pytest.mark.parametrize("bad,reason", [
    (b"\x00" * 5, "bad_vnet_header"),
    (O.VNET_HDR.pack(0, O.GSO_UDP, 0, 100, 0, 0) + b"\x45" + bytes(40), "unsupported_gso"),
    (O.VNET_HDR.pack(0, O.GSO_TCPV4, 0, 100, 0, 0) + b"\x45" + bytes(10), "bad_gso_packet"),
    (O.VNET_HDR.pack(O.F_NEEDS_CSUM, 0, 0, 0, 500, 16) + bytes(40), "bad_vnet_header"),
])
def test_malformed_vnet_packets_have_named_reasons(bad, reason):
    with pytest.raises(O.OffloadError) as ei:
        O.split(bad)
    assert ei.value.reason == reason


def udp_packet(payload: bytes, sport: int = 40000, src="100.64.0.1", ident: int = 7) -> bytes:
    udp = struct.pack("!HHHH", sport, 5201, 8 + len(payload), 0)
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address("100.64.0.2").packed
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 28 + len(payload), ident, 0x4000, 64, 17, 0) + s + d
    ip = ip[:10] + struct.pack("!H", ref_checksum(ip)) + ip[12:]
    return ip + udp + payload


def udp_ok(p: bytes) -> bool:
    return ref_checksum(p[12:20] + struct.pack("!BBH", 0, 17, len(p) - 20) + p[20:]) == 0


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 9000), seg=st.integers(16, 1400))
def test_udp_super_packet_splits_into_valid_datagrams(size, seg):
    payload = (bytes(range(251)) * (size // 251 + 1))[:size]
    sup = udp_packet(payload)
    segs = O.split(O.VNET_HDR.pack(O.F_NEEDS_CSUM, O.GSO_UDP_L4, 28, seg, 20, 6) + sup)
    assert len(segs) == (size + seg - 1) // seg
    assert b"".join(s[28:] for s in segs) == payload
    for s in segs:
        assert ref_checksum(s[:20]) == 0 and struct.unpack_from("!H", s, 24)[0] == len(s) - 20
        assert udp_ok(O.finish_tcp(s))


@settings(max_examples=60, deadline=None)
@given(count=st.integers(2, 80), size=st.integers(1, 1400), last=st.integers(0, 1400))
def test_udp_runs_merge_into_one_write_the_kernel_can_segment(count, size, last):
    dgrams = [udp_packet(bytes([i % 256]) * size, ident=i) for i in range(count)]
    if 0 < last < size:
        dgrams.append(udp_packet(b"z" * last))
    writes = O.coalesce(dgrams, udp=True)
    assert O.coalesce(dgrams) == [O._single(d) for d in dgrams]  # without USO: one write each
    merged = [w for w in writes if O.VNET_HDR.unpack_from(w)[1] == O.GSO_UDP_L4]
    assert sum(len(w) for w in writes) < sum(len(d) + O.VNET_HDR_LEN for d in dgrams) or len(dgrams) < 2
    got = b""
    for w in writes:
        flags, gso, hdr_len, gso_size, cs, co = O.VNET_HDR.unpack_from(w)
        pkt = w[O.VNET_HDR_LEN:]
        assert ref_checksum(pkt[:20]) == 0  # the kernel checks the IPv4 header of the super-packet
        if gso == O.GSO_UDP_L4:
            assert (flags, hdr_len, cs, co) == (O.F_NEEDS_CSUM, 28, 20, 6) and gso_size == size
            # The partial checksum is the pseudo-header sum for the whole UDP length, which the
            # kernel adjusts to each segment's length (udp_offload.c).
            ulen = struct.unpack_from("!H", pkt, 24)[0]
            assert ulen == len(pkt) - 20 and struct.unpack_from("!H", pkt, 26)[0] == O.csum_fold(pkt[12:20], 17 + ulen)
            for s in O.split_udp(pkt, gso_size):
                assert udp_ok(O.finish_tcp(s))
        got += b"".join(s[28:] for s in O.split_udp(pkt, gso_size or len(pkt)))
    assert got == b"".join(d[28:] for d in dgrams)
    assert merged and len(merged) <= (len(dgrams) + O.MAX_UDP_SEGMENTS - 1) // O.MAX_UDP_SEGMENTS + 1


def test_udp_runs_break_at_another_flow_or_a_bigger_datagram():
    a = [udp_packet(b"a" * 100) for _ in range(3)]
    b = udp_packet(b"b" * 100, sport=40001)
    big = udp_packet(b"c" * 200)
    writes = O.coalesce([a[0], a[1], b, a[2], big], udp=True)
    kinds = [O.VNET_HDR.unpack_from(w)[1] for w in writes]
    assert kinds == [O.GSO_UDP_L4, O.GSO_NONE, O.GSO_NONE, O.GSO_NONE]


@pytest.mark.parametrize("buf", [
    O.PLAIN_HDR + udp_packet(b"game state"),
    O.VNET_HDR.pack(O.F_NEEDS_CSUM, 0, 0, 0, 20, 6) + udp_packet(b"game state"),
    O.VNET_HDR.pack(O.F_NEEDS_CSUM, 0, 0, 0, 20, 16) + tcp_packet(b"ack"),
    O.VNET_HDR.pack(O.F_NEEDS_CSUM, 0, 0, 0, 20, 6) + tcp_packet(b"odd offset"),  # not TCP's: finished
    O.VNET_HDR.pack(O.F_NEEDS_CSUM, 0, 0, 0, 20, 2) + bytes([0x45]) + bytes(40),  # other protocol
    vnet(tcp_packet(b"x" * 3000), 1000),  # GSO: split
    O.PLAIN_HDR + b"\x45",
])
def test_single_is_splits_fast_path(buf):
    fast = O.single(buf)
    try:
        full = O.split(buf)
    except O.OffloadError:
        assert fast is None
        return
    assert fast is None or [fast] == full
