"""Segmentation offload helpers, pure functions on bytes.

With IFF_VNET_HDR and TSO the kernel hands the TUN reader TCP super-packets
(up to 64 KB) behind a virtio-net header (virtio spec §5.1.6):

    0        1          2            4            6              8              10
    +--------+----------+------------+------------+--------------+--------------+
    | flags  | gso_type | hdr_len    | gso_size   | csum_start   | csum_offset  |   little-endian
    +--------+----------+------------+------------+--------------+--------------+

`split()` cuts such a packet into MSS-sized IP packets, each with correct IP
and TCP headers, so each can be sealed and sent on its own (one lost datagram
loses one segment, not a burst). `coalesce()` does the reverse on the
receiving side: consecutive in-order segments of one TCP flow become one GSO
super-packet, written to the TUN in one write.

The checksum contract between peers: a receiver never trusts the TCP or UDP
checksum field of an inner packet. Every unfragmented TCP or UDP packet is
written to the TUN with NEEDS_CSUM and a pseudo-header sum it computes
itself, so the kernel finishes the checksum where one is needed (forwarding)
and skips it on local delivery; without a vnet header, `finish_tcp()`
computes it in software. The AEAD already guarantees the bytes are the
sender's, so a sender spends no time on L4 checksums at all (about half of
the sending side's work when it did). IPv4 header checksums stay valid end to
end (the kernel checks them).

Checksums use the fact that 2**16 = 1 (mod 0xffff): the ones'-complement sum
of 16-bit words equals the big-endian integer value of the bytes mod 0xffff,
which C-speed int.from_bytes computes quickly (RFC 1071 §2).
"""

from __future__ import annotations

import struct

from hamachi._accel import fast

VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = 10
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
MAX_UDP_SEGMENTS = 64
GSO_ECN = 0x80
PLAIN_HDR = VNET_HDR.pack(0, 0, 0, 0, 0, 0)
MAX_COALESCE = 65535 - 60

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = 1, 2, 4, 8, 16, 32, 64, 128


class OffloadError(ValueError):
    """A virtio-net header or super-packet we cannot handle; `reason` names the drop."""

    def __init__(self, reason: str, msg: str):
        super().__init__(msg)
        self.reason = reason


def csum_fold(data: bytes, initial: int = 0) -> int:
    """Ones'-complement sum of 16-bit big-endian words, folded to 16 bits (not inverted)."""
    if len(data) & 1:
        data += b"\x00"
    s = (int.from_bytes(data, "big") + initial) % 0xFFFF
    return s if s else (0xFFFF if data.strip(b"\x00") or initial else 0)


def checksum(data: bytes, initial: int = 0) -> int:
    """The Internet checksum (the complement of the folded sum)."""
    return (0xFFFF - csum_fold(data, initial)) & 0xFFFF


def pseudo_sum(packet: bytes, l4_len: int, proto: int) -> int:
    v = packet[0] >> 4
    if v == 4:
        return csum_fold(packet[12:20] + struct.pack("!HH", proto, l4_len))
    return csum_fold(packet[8:40] + struct.pack("!IxxxB", l4_len, proto))


def finish_checksum(packet: bytes, csum_start: int, csum_offset: int) -> bytes:
    """Complete a partial checksum (NEEDS_CSUM): sum from csum_start, store the complement."""
    at = csum_start + csum_offset
    if at + 2 > len(packet) or csum_start >= len(packet):
        raise OffloadError("bad_vnet_header", "checksum offset beyond the packet")
    value = (0xFFFF - csum_fold(packet[csum_start:])) & 0xFFFF
    return packet[:at] + struct.pack("!H", value) + packet[at + 2 :]


def _ip_header_checksum(hdr: bytearray) -> None:
    hdr[10:12] = b"\x00\x00"
    hdr[10:12] = struct.pack("!H", (0xFFFF - csum_fold(bytes(hdr))) & 0xFFFF)


def single(buf: bytes) -> bytes | None:
    """The common small-packet case of `split()`, cheaply: a non-GSO packet that needs nothing
    done (no partial checksum, or a TCP/UDP one the receiver finishes) -> the IP packet; else None."""
    if len(buf) <= VNET_HDR_LEN + 20 or buf[1] != GSO_NONE:
        return None
    if buf[0] & F_NEEDS_CSUM:
        # csum_offset 16 (TCP) or 6 (UDP) at csum_start = the IP header length
        off = buf[8] | buf[9] << 8
        pkt = buf[VNET_HDR_LEN:]
        l4 = _l4(pkt) if off in (6, 16) else None
        if l4 is None or l4[2] != off or l4[0] != (buf[6] | buf[7] << 8):
            return None
        return pkt
    return buf[VNET_HDR_LEN:]


def split(buf: bytes) -> list[bytes]:
    """A packet read from a vnet-header TUN -> plain IP packets with valid checksums."""
    if len(buf) < VNET_HDR_LEN:
        raise OffloadError("bad_vnet_header", "shorter than a virtio-net header")
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buf)
    pkt = buf[VNET_HDR_LEN:]
    gso = gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if flags & F_NEEDS_CSUM and _l4(pkt) is None:  # TCP and UDP: the receiver finishes them
            pkt = finish_checksum(pkt, csum_start, csum_offset)
        return [pkt]
    if gso == GSO_UDP_L4 and gso_size:
        return split_udp(pkt, gso_size)
    if gso not in (GSO_TCPV4, GSO_TCPV6) or gso_size == 0:
        raise OffloadError("unsupported_gso", f"unsupported gso_type {gso_type} / gso_size {gso_size}")
    return split_tcp(pkt, gso_size)


def _l4(pkt: bytes) -> tuple[int, int, int] | None:
    """(IP header length, protocol, checksum offset) of an unfragmented TCP or UDP packet (IPv4, or
    IPv6 without extension headers), else None."""
    n = len(pkt)
    if n < 28:
        return None
    b0 = pkt[0]
    if b0 >> 4 == 4:
        proto = pkt[9]
        ihl = (b0 & 0x0F) * 4
        if ihl < 20 or pkt[6] & 0x3F or pkt[7]:  # IHL below 5 is malformed
            return None
    elif b0 >> 4 == 6 and n >= 48:
        proto = pkt[6]
        ihl = 40
    else:
        return None
    if proto == 6 and n >= ihl + 20:
        return ihl, 6, 16
    if proto == 17 and n >= ihl + 8:
        return ihl, 17, 6
    return None


def _is_tcp(pkt: bytes) -> bool:
    l4 = _l4(pkt)
    return l4 is not None and l4[1] == 6


def _ipv4_template(hdr: bytearray, ihl: int) -> tuple[int, int]:
    """Zero the length, id and checksum of an IPv4 header in place -> (original id, folded sum of
    the rest), from which each segment's checksum is one addition away."""
    ip_id = int.from_bytes(hdr[4:6], "big")
    hdr[2:6] = b"\x00\x00\x00\x00"
    hdr[10:12] = b"\x00\x00"
    return ip_id, csum_fold(bytes(hdr[:ihl]))


def split_tcp(pkt: bytes, mss: int) -> list[bytes]:
    """A TCP super-packet -> MSS-sized segments (IP header checksum valid; TCP checksum left to the receiver).
    In C when the fast path is built (it hands packets it refuses back to the twin, which names the error)."""
    if fast is not None:
        out = fast.split_tcp(pkt, mss)
        if out is not None:
            return out
    return split_tcp_py(pkt, mss)


def split_tcp_py(pkt: bytes, mss: int) -> list[bytes]:
    """The pure-Python twin of the C split_tcp."""
    v = pkt[0] >> 4 if pkt else 0
    if v == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if ihl < 20 or len(pkt) < ihl + 20 or pkt[9] != 6:
            raise OffloadError("bad_gso_packet", "not a TCP/IPv4 packet")
    elif v == 6:
        ihl = 40
        if len(pkt) < 60 or pkt[6] != 6:
            raise OffloadError("bad_gso_packet", "not a TCP/IPv6 packet (extension headers unsupported)")
    else:
        raise OffloadError("bad_gso_packet", "not an IP packet")
    thl = (pkt[ihl + 12] >> 4) * 4
    if thl < 20 or len(pkt) < ihl + thl:
        raise OffloadError("bad_gso_packet", "bad TCP header length")
    hlen = ihl + thl
    hdr = bytearray(pkt[:hlen])
    seq = int.from_bytes(hdr[ihl + 4 : ihl + 8], "big")
    flags = hdr[ihl + 13]
    mid_flags = flags & ~(TCP_FIN | TCP_PSH)
    total = len(pkt)
    n = max(1, (total - hlen + mss - 1) // mss)
    pack = struct.pack_into
    ip_id, base = _ipv4_template(hdr, ihl) if v == 4 else (0, 0)
    out = []
    # (The per-segment IPv4 header update below is also in split_udp: inlined on purpose, this
    # loop runs for every segment of bulk TCP.)
    for i in range(n):
        start = hlen + i * mss
        chunk = pkt[start : start + mss]
        length = hlen + len(chunk)
        if v == 4:
            ident = (ip_id + i) & 0xFFFF
            c = base + length + ident
            c = (c & 0xFFFF) + (c >> 16)
            c = (c & 0xFFFF) + (c >> 16)
            pack("!HH", hdr, 2, length, ident)
            pack("!H", hdr, 10, 0xFFFF - c)
        else:
            pack("!H", hdr, 4, length - 40)
        pack("!I", hdr, ihl + 4, (seq + i * mss) & 0xFFFFFFFF)
        f = flags if i == n - 1 else mid_flags
        hdr[ihl + 13] = f if i == 0 else f & ~TCP_CWR
        out.append(bytes(hdr) + chunk)
    return out


def split_udp(pkt: bytes, size: int) -> list[bytes]:
    """A UDP super-packet (USO) -> datagrams of `size` payload bytes (the last may be shorter)."""
    l4 = _l4(pkt)
    if l4 is None or l4[1] != 17:
        raise OffloadError("bad_gso_packet", "not an unfragmented UDP packet")
    ihl = l4[0]
    hlen = ihl + 8
    hdr = bytearray(pkt[:hlen])
    v4 = pkt[0] >> 4 == 4
    ip_id, base = _ipv4_template(hdr, ihl) if v4 else (0, 0)
    out = []
    pack = struct.pack_into
    for i, start in enumerate(range(hlen, max(len(pkt), hlen + 1), size)):
        chunk = pkt[start : start + size]
        length = hlen + len(chunk)
        if v4:
            ident = (ip_id + i) & 0xFFFF
            c = base + length + ident
            c = (c & 0xFFFF) + (c >> 16)
            c = (c & 0xFFFF) + (c >> 16)
            pack("!HH", hdr, 2, length, ident)
            pack("!H", hdr, 10, 0xFFFF - c)
        else:
            pack("!H", hdr, 4, length - 40)
        pack("!H", hdr, ihl + 4, 8 + len(chunk))  # the checksum is left to the receiver
        out.append(bytes(hdr) + chunk)
    return out


def tcp_pseudo(pkt: bytes, ihl: int, proto: int = 6) -> int:
    """The folded pseudo-header sum of a TCP or UDP packet (what NEEDS_CSUM wants in the field)."""
    if pkt[0] >> 4 == 4:
        return csum_fold(pkt[12:20], proto + len(pkt) - ihl)
    return csum_fold(pkt[8:40], proto + len(pkt) - ihl)


def finish_tcp(pkt: bytes) -> bytes:
    """For a TUN without a vnet header: a TCP or UDP packet with its full checksum (computed here,
    whatever the field held); anything else unchanged."""
    l4 = _l4(pkt)
    if l4 is None:
        return pkt
    ihl, proto, off = l4
    at = ihl + off
    body = pkt[:at] + b"\x00\x00" + pkt[at + 2 :]
    c = (0xFFFF - csum_fold(body[ihl:], tcp_pseudo(pkt, ihl, proto))) & 0xFFFF
    if proto == 17 and c == 0:
        c = 0xFFFF  # UDP: 0 would mean "no checksum" (RFC 768)
    return body[:at] + struct.pack("!H", c) + body[at + 2 :]


def _single(pkt: bytes) -> bytes:
    """One inner packet -> a TUN write; TCP and UDP go with NEEDS_CSUM and our own pseudo-header sum."""
    l4 = _l4(pkt)
    if l4 is None:
        return PLAIN_HDR + pkt
    ihl, proto, off = l4
    at = ihl + off
    vh = VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, ihl, off)
    return vh + pkt[:at] + struct.pack("!H", tcp_pseudo(pkt, ihl, proto)) + pkt[at + 2 :]


_MERGE_BLOCKERS = TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR | TCP_ECE


def _flow(pkt: bytes):
    """(flow key, ihl, thl, seq, flags, payload length) for a mergeable TCP packet, else None."""
    n = len(pkt)
    if n < 40:
        return None
    v = pkt[0] >> 4
    if v == 4:
        if pkt[0] != 0x45 or pkt[9] != 6 or pkt[6] & 0x3F or pkt[7]:  # options or fragments
            return None
        ihl = 20
        key_ip = pkt[12:20]
    elif v == 6:
        if n < 60 or pkt[6] != 6:
            return None
        ihl = 40
        key_ip = pkt[8:40]
    else:
        return None
    thl = (pkt[ihl + 12] >> 4) * 4
    flags = pkt[ihl + 13]
    if thl < 20 or flags & _MERGE_BLOCKERS or not flags & TCP_ACK or n <= ihl + thl:  # data offset < 5: malformed
        return None
    # Flow: addresses, ports, ack number, window and options must match to merge.
    key = (key_ip, pkt[ihl : ihl + 4], pkt[ihl + 8 : ihl + 12], pkt[ihl + 14 : ihl + 16], pkt[ihl + 20 : ihl + thl],
           v, thl)
    seq = int.from_bytes(pkt[ihl + 4 : ihl + 8], "big")
    return key, ihl, thl, seq, flags, n - ihl - thl


def _udp_key(pkt: bytes):
    """Flow key of a UDP datagram we may merge (IPv4 without options, or IPv6), else None."""
    if len(pkt) < 28:
        return None
    b0 = pkt[0]
    if b0 == 0x45 and pkt[9] == 17 and not (pkt[6] & 0x3F or pkt[7]):
        return pkt[12:24]  # addresses and ports
    if b0 >> 4 == 6 and pkt[6] == 17 and len(pkt) >= 48:
        return pkt[8:44]
    return None


def _udp_run(packets: list[bytes], i: int) -> int:
    """End (exclusive) of the run of same-flow UDP datagrams from i: equal sizes, the last may be shorter."""
    key = _udp_key(packets[i])
    if key is None:
        return i + 1
    size = len(packets[i])
    total, j, n = size, i + 1, len(packets)
    while j < n and j - i < MAX_UDP_SEGMENTS:
        q = packets[j]
        if len(q) > size or total + len(q) > MAX_COALESCE or _udp_key(q) != key:
            break
        total += len(q)
        j += 1
        if len(q) < size:
            break
    return j


def _merge_udp(run: list[bytes]) -> bytes:
    first = run[0]
    ihl = 20 if first[0] >> 4 == 4 else 40
    hlen = ihl + 8
    body = b"".join([first[hlen:]] + [p[hlen:] for p in run[1:]])
    hdr = bytearray(first[:hlen])
    total = hlen + len(body)
    if ihl == 20:
        struct.pack_into("!H", hdr, 2, total)
        hdr[10:12] = b"\x00\x00"
        struct.pack_into("!H", hdr, 10, (0xFFFF - csum_fold(bytes(hdr[:20]))) & 0xFFFF)
    else:
        struct.pack_into("!H", hdr, 4, total - 40)
    struct.pack_into("!H", hdr, ihl + 4, total - ihl)
    # NEEDS_CSUM with the pseudo-header sum for the whole length; the kernel adjusts it per segment.
    addrs = hdr[12:20] if ihl == 20 else hdr[8:40]
    struct.pack_into("!H", hdr, ihl + 6, csum_fold(bytes(addrs), 17 + total - ihl))
    vh = VNET_HDR.pack(F_NEEDS_CSUM, GSO_UDP_L4, hlen, len(first) - hlen, ihl, 6)
    return vh + bytes(hdr) + body


def coalesce(packets: list[bytes], udp: bool = False) -> list[bytes]:
    """Inner packets (in arrival order) -> TUN writes with a virtio-net header each; in C when the
    fast path is built, else `coalesce_py`."""
    if fast is not None:
        try:
            return fast.coalesce(packets if type(packets) is list else list(packets), udp)
        except TypeError:  # not all bytes (a memoryview, say): the twin takes anything
            pass
    return coalesce_py(packets, udp)


def coalesce_py(packets: list[bytes], udp: bool = False) -> list[bytes]:
    """Inner packets (in arrival order) -> TUN writes with a virtio-net header each.

    Runs of in-order TCP segments of one flow, all but the last of equal size,
    become one GSO super-packet; with `udp` (the TUN does USO), so do runs of
    one flow's UDP datagrams of equal size; everything else passes through.
    """
    out: list[bytes] = []
    i, n = 0, len(packets)
    while i < n:
        p = packets[i]
        f = _flow(p)
        if f is None:
            if udp and i + 1 < n:
                j = _udp_run(packets, i)
                if j - i > 1:
                    out.append(_merge_udp(packets[i:j]))
                    i = j
                    continue
            out.append(_single(p))
            i += 1
            continue
        key, ihl, thl, seq, flags, plen = f
        run = [p]
        total = len(p)
        nxt = (seq + plen) & 0xFFFFFFFF  # sequence numbers wrap
        last_flags = flags
        j = i + 1
        while j < n and not last_flags & TCP_PSH:
            g = _flow(packets[j])
            if g is None or g[0] != key or g[3] != nxt or g[5] > plen or total + g[5] > MAX_COALESCE:
                break
            run.append(packets[j])
            total += g[5]
            nxt = (nxt + g[5]) & 0xFFFFFFFF
            last_flags = g[4]
            j += 1
            if g[5] < plen:
                break
        if len(run) == 1:
            out.append(_single(p))
        else:
            out.append(_merge(run, ihl, thl, plen, last_flags))
        i = j
    return out


def _merge(run: list[bytes], ihl: int, thl: int, mss: int, last_flags: int) -> bytes:
    first = run[0]
    hlen = ihl + thl
    body = b"".join([first[hlen:]] + [p[hlen:] for p in run[1:]])
    hdr = bytearray(first[:hlen])
    v = first[0] >> 4
    total = hlen + len(body)
    if v == 4:
        struct.pack_into("!H", hdr, 2, total)
        ih = bytearray(hdr[:20])
        _ip_header_checksum(ih)
        hdr[:20] = ih
        pseudo = csum_fold(bytes(hdr[12:20]), 6 + total - ihl)
        gso = GSO_TCPV4
    else:
        struct.pack_into("!H", hdr, 4, total - 40)
        pseudo = csum_fold(bytes(hdr[8:40]), 6 + total - ihl)
        gso = GSO_TCPV6
    hdr[ihl + 13] = hdr[ihl + 13] | (last_flags & TCP_PSH)
    # NEEDS_CSUM: the checksum field holds the pseudo-header sum; the kernel adds the rest.
    struct.pack_into("!H", hdr, ihl + 16, pseudo)
    vh = VNET_HDR.pack(F_NEEDS_CSUM, gso, hlen, mss, ihl, 16)
    return vh + bytes(hdr) + body
