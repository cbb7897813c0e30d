"""STUN messages (RFC 8489, formerly 5389) with the RFC 5780 NAT-behaviour attributes. Pure codec.

Header (RFC 8489 §5), 20 bytes:

     0                   1                   2                   3
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |0 0|     STUN Message Type     |         Message Length        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                  Magic Cookie = 0x2112A442                    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                Transaction ID (96 bits)                       |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

then attributes, each a 16-bit type, 16-bit length and a value padded to 4
bytes (§14). Address attributes (MAPPED-ADDRESS, OTHER-ADDRESS,
RESPONSE-ORIGIN) carry a family byte, a port and the address; the XOR form
XORs the port with the cookie's top 16 bits and the address with the cookie
(IPv4) or cookie || transaction id (IPv6) (§14.2). FINGERPRINT is the CRC-32
of everything before it XOR 0x5354554e (§14.7); MESSAGE-INTEGRITY is
HMAC-SHA1 with the length field counting up to and including it (§14.5).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib
from dataclasses import dataclass, field

from hamachi.wire.codec import DecodeError

MAGIC = 0x2112A442
MAGIC_BYTES = struct.pack("!I", MAGIC)
FINGERPRINT_XOR = 0x5354554E

BINDING_REQUEST = 0x0001
BINDING_RESPONSE = 0x0101
BINDING_ERROR = 0x0111

MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
XOR_MAPPED_ADDRESS = 0x0020
RESPONSE_PORT = 0x0027
PADDING = 0x0026
SOFTWARE = 0x8022
FINGERPRINT = 0x8028
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C

CHANGE_IP = 0x04
CHANGE_PORT = 0x02

Addr = tuple[str, int]


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test: two zero bits, a 4-aligned length, the magic cookie (§5)."""
    return len(data) >= 20 and data[0] & 0xC0 == 0 and data[4:8] == MAGIC_BYTES and data[3] & 3 == 0


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def encode_address(addr: Addr, xor_with: bytes | None = None) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    raw, port = ip.packed, addr[1]
    if xor_with is not None:
        port ^= MAGIC >> 16
        raw = bytes(a ^ b for a, b in zip(raw, xor_with[: len(raw)], strict=True))
    return struct.pack("!BBH", 0, 1 if ip.version == 4 else 2, port) + raw


def decode_address(value: bytes, xor_with: bytes | None = None) -> Addr:
    if len(value) < 4:
        raise DecodeError("address attribute shorter than 4 bytes")
    family, port = value[1], struct.unpack_from("!H", value, 2)[0]
    n = {1: 4, 2: 16}.get(family)
    if n is None:
        raise DecodeError(f"unknown address family {family}")
    if len(value) < 4 + n:
        raise DecodeError("address attribute truncated")
    raw = value[4 : 4 + n]
    if xor_with is not None:
        port ^= MAGIC >> 16
        raw = bytes(a ^ b for a, b in zip(raw, xor_with[:n], strict=True))
    return str(ipaddress.ip_address(raw)), port


@dataclass(frozen=True, slots=True)
class StunMessage:
    msg_type: int
    txid: bytes
    attributes: tuple[tuple[int, bytes], ...] = field(default=())

    # -- building ---------------------------------------------------------------
    def encode(self, *, fingerprint: bool = True, integrity_key: bytes | None = None) -> bytes:
        body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\x00" * _pad(len(v)) for t, v in self.attributes)
        msg = struct.pack("!HH", self.msg_type, len(body)) + MAGIC_BYTES + self.txid + body
        if integrity_key is not None:
            msg = msg[:2] + struct.pack("!H", len(body) + 24) + msg[4:]
            mac = hmac.new(integrity_key, msg, hashlib.sha1).digest()
            msg += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + mac
            body += b"x" * 24
        if fingerprint:
            msg = msg[:2] + struct.pack("!H", len(msg) - 20 + 8) + msg[4:]
            msg += struct.pack("!HHI", FINGERPRINT, 4, (zlib.crc32(msg) ^ FINGERPRINT_XOR) & 0xFFFFFFFF)
        return msg

    # -- reading ------------------------------------------------------------------
    @classmethod
    def decode(cls, data: bytes) -> StunMessage:
        if len(data) < 20:
            raise DecodeError(f"STUN message is {len(data)} bytes, the header alone is 20")
        msg_type, length = struct.unpack_from("!HH", data)
        if msg_type & 0xC000:
            raise DecodeError("the top two bits of a STUN message must be zero")
        if data[4:8] != MAGIC_BYTES:
            raise DecodeError("no STUN magic cookie")
        if length % 4:
            raise DecodeError(f"STUN length {length} is not a multiple of 4")
        if 20 + length > len(data):
            raise DecodeError(f"STUN length {length} runs past the {len(data)}-byte datagram")
        txid = data[8:20]
        attrs = []
        pos, end = 20, 20 + length
        while pos < end:
            if pos + 4 > end:
                raise DecodeError("truncated attribute header")
            t, n = struct.unpack_from("!HH", data, pos)
            if pos + 4 + n > end:
                raise DecodeError(f"attribute 0x{t:04x} runs past the message")
            attrs.append((t, data[pos + 4 : pos + 4 + n]))
            pos += 4 + n + _pad(n)
        return cls(msg_type, txid, tuple(attrs))

    def get(self, attr_type: int) -> bytes | None:
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return None

    def address(self, attr_type: int) -> Addr | None:
        v = self.get(attr_type)
        if v is None:
            return None
        xor = MAGIC_BYTES + self.txid if attr_type == XOR_MAPPED_ADDRESS else None
        return decode_address(v, xor)

    @property
    def mapped(self) -> Addr | None:
        """XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from old servers."""
        return self.address(XOR_MAPPED_ADDRESS) or self.address(MAPPED_ADDRESS)

    @property
    def change_request(self) -> int:
        v = self.get(CHANGE_REQUEST)
        if v is None:
            return 0
        if len(v) != 4:
            raise DecodeError("CHANGE-REQUEST must be 4 bytes")
        return struct.unpack("!I", v)[0] & (CHANGE_IP | CHANGE_PORT)


def check_fingerprint(data: bytes) -> bool:
    """True if the message ends in a FINGERPRINT attribute that matches (§14.7)."""
    if len(data) < 28 or struct.unpack_from("!HH", data, len(data) - 8) != (FINGERPRINT, 4):
        return False
    want = struct.unpack_from("!I", data, len(data) - 4)[0]
    return (zlib.crc32(data[:-8]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF == want


def check_integrity(data: bytes, key: bytes) -> bool:
    """Verify MESSAGE-INTEGRITY (HMAC-SHA1), allowing a FINGERPRINT after it (§14.5)."""
    msg = StunMessage.decode(data)
    pos = 20
    for t, v in msg.attributes:
        if t == MESSAGE_INTEGRITY:
            head = bytearray(data[:pos])
            struct.pack_into("!H", head, 2, pos - 20 + 24)
            return len(v) == 20 and hmac.compare_digest(hmac.new(key, bytes(head), hashlib.sha1).digest(), v)
        pos += 4 + len(v) + _pad(len(v))
    return False


def binding_request(txid: bytes, change: int = 0) -> bytes:
    attrs = ((CHANGE_REQUEST, struct.pack("!I", change)),) if change else ()
    return StunMessage(BINDING_REQUEST, txid, attrs).encode()


def binding_response(txid: bytes, mapped: Addr, origin: Addr | None = None, other: Addr | None = None,
                     software: bytes = b"") -> bytes:
    attrs = [(XOR_MAPPED_ADDRESS, encode_address(mapped, MAGIC_BYTES + txid)),
             (MAPPED_ADDRESS, encode_address(mapped))]
    if origin is not None:
        attrs.append((RESPONSE_ORIGIN, encode_address(origin)))
    if other is not None:
        attrs.append((OTHER_ADDRESS, encode_address(other)))
    if software:
        attrs.append((SOFTWARE, software))
    return StunMessage(BINDING_RESPONSE, txid, tuple(attrs)).encode()
