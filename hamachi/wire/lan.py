"""LAN messages: broadcast copies and Ethernet frames, inside an authenticated data session.

After a data message (transport type 4) is opened, its plaintext is one of:

    empty                      keepalive
    first nibble 4 or 6        an IP packet for this peer (unicast, cryptokey-routed)
    first byte 0x01            a LAN message, below: it names the network it belongs to

LAN message (`LanMessage`), 10 + body bytes:

    0      1      2                              10
    +------+------+------------------------------+-----------------------------------+
    | 0x01 | kind | network id (8 bytes)         | body                              |
    +------+------+------------------------------+-----------------------------------+

    kind 1  GROUP  body is an IPv4/IPv6 packet to a broadcast or multicast address (a TUN network)
    kind 2  FRAME  body is an Ethernet frame, unchanged (a TAP network): destination MAC (6),
                   source MAC (6), then ethertype or 802.3 length (2), VLAN tags included

The network id is the first 8 bytes of BLAKE2s("hamachi network " + name): both
ends compute it from the name the server gave them, so it needs no allocation,
and a peer that shares several networks with us says which one a copy is for.
A body is never shorter than what its kind needs (an IPv4 header, 14 bytes of
Ethernet header); anything else raises `DecodeError`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hamachi.wire.codec import DecodeError

TYPE_LAN = 0x01
KIND_GROUP = 1
KIND_FRAME = 2
HEADER_LEN = 10
NETWORK_ID_LEN = 8
ETH_HEADER_LEN = 14
_MIN_BODY = {KIND_GROUP: 20, KIND_FRAME: ETH_HEADER_LEN}


def network_id(name: str) -> bytes:
    return hashlib.blake2s(b"hamachi network " + name.encode()).digest()[:NETWORK_ID_LEN]


@dataclass(frozen=True, slots=True)
class LanMessage:
    kind: int
    network: bytes
    body: bytes

    def encode(self) -> bytes:
        return header(self.kind, self.network) + self.body

    @classmethod
    def decode(cls, data: bytes) -> LanMessage:
        if len(data) < HEADER_LEN:
            raise DecodeError(f"LAN message is {len(data)} bytes, need at least {HEADER_LEN}")
        if data[0] != TYPE_LAN:
            raise DecodeError(f"expected LAN message type {TYPE_LAN}, got {data[0]}")
        kind = data[1]
        need = _MIN_BODY.get(kind)
        if need is None:
            raise DecodeError(f"unknown LAN message kind {kind}")
        if len(data) - HEADER_LEN < need:
            raise DecodeError(f"LAN message body is {len(data) - HEADER_LEN} bytes, kind {kind} needs {need}")
        return cls(kind, data[2:HEADER_LEN], data[HEADER_LEN:])


def header(kind: int, network: bytes) -> bytes:
    """The 10 bytes in front of a body (the sender builds it once per network and reuses it)."""
    if len(network) != NETWORK_ID_LEN:
        raise ValueError("a network id is 8 bytes")
    return bytes([TYPE_LAN, kind]) + network


def is_lan(plaintext: bytes) -> bool:
    return bool(plaintext) and plaintext[0] == TYPE_LAN
