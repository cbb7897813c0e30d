"""Datagrams on the data socket. The first byte says what a datagram is.

Demultiplexing rule for everything that arrives on a client's one UDP socket:

    first byte 0x00-0x03 with 0x2112A442 at offset 4  -> STUN (RFC 8489 §5)
    1 handshake initiation   2 handshake response   3 cookie reply   4 data
    5 disco (path probes)    6-9 relay              anything else -> dropped ("unknown_type")

(A STUN message's first byte is 0x00 or 0x01, so it is told apart from types
1-4 by the magic cookie.) Integers are little-endian, as in WireGuard.

HandshakeInit (type 1), 116 + payload bytes (payload: timestamp and AEAD preferences, 13):

    0      1        4             8                                   8+N       +16     +16
    +------+--------+-------------+-----------------------------------+---------+-------+
    | 0x01 | 0 0 0  | sender idx  | Noise IK message 1 (N bytes)      |  mac1   | mac2  |
    +------+--------+-------------+-----------------------------------+---------+-------+

HandshakeResponse (type 2), payload: the chosen AEAD (1 byte):

    | 0x02 | 0 0 0 | sender idx (4) | receiver idx (4) | Noise IK message 2 | mac1 (16) | mac2 (16) |

CookieReply (type 3), 64 bytes:

    | 0x03 | 0 0 0 | receiver idx (4) | nonce (24) | encrypted cookie (16 + 16) |

Data (type 4), 16 + ciphertext bytes:

    | 0x04 | 0 0 0 | receiver idx (4) | counter (8) | AEAD ciphertext of the inner packet (+16 tag) |

An empty inner packet is a keepalive.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hamachi.wire.codec import DecodeError, Reader, Writer

TYPE_INIT = 1
TYPE_RESPONSE = 2
TYPE_COOKIE = 3
TYPE_DATA = 4
TYPE_DISCO = 5
STUN_MAGIC = 0x2112A442

MAC_LEN = 16
# Noise IK message lengths for our payloads: message 1 carries a 12-byte TAI64N timestamp and
# one byte of AEAD preferences (first choice in the high nibble, second in the low; 0 = none);
# message 2 carries one byte: the AEAD the responder chose for this session.
INIT_NOISE_LEN = 32 + 48 + 13 + 16
RESPONSE_NOISE_LEN = 32 + 1 + 16
INIT_LEN = 8 + INIT_NOISE_LEN + 2 * MAC_LEN
RESPONSE_LEN = 12 + RESPONSE_NOISE_LEN + 2 * MAC_LEN
COOKIE_LEN = 8 + 24 + 32
DATA_HEADER_LEN = 16
TAG_LEN = 16

DATA_HEADER = struct.Struct("<4sIQ")  # type+reserved, receiver, counter
_DATA_PREFIX = bytes([TYPE_DATA, 0, 0, 0])


def is_stun(datagram: bytes) -> bool:
    return len(datagram) >= 20 and datagram[0] < 4 and datagram[4:8] == b"\x21\x12\xa4\x42"


def _header(r: Reader, want: int) -> None:
    t = r.u8("type")
    if t != want:
        raise DecodeError(f"expected message type {want}, got {t}")
    r.bytes(3, "reserved")


@dataclass(frozen=True, slots=True)
class HandshakeInit:
    sender: int
    noise: bytes
    mac1: bytes = b"\x00" * MAC_LEN
    mac2: bytes = b"\x00" * MAC_LEN

    def encode(self) -> bytes:
        return self.body() + self.mac1 + self.mac2

    def body(self) -> bytes:
        """Everything that mac1 covers."""
        return Writer().u8(TYPE_INIT).bytes(b"\x00\x00\x00").u32le(self.sender).bytes(self.noise).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> HandshakeInit:
        if len(data) < INIT_LEN:
            raise DecodeError(f"handshake initiation is {len(data)} bytes, need {INIT_LEN}")
        r = Reader(data)
        _header(r, TYPE_INIT)
        return cls(r.u32le("sender"), r.bytes(INIT_NOISE_LEN, "noise"), r.bytes(MAC_LEN, "mac1"),
                   r.bytes(MAC_LEN, "mac2"))


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    sender: int
    receiver: int
    noise: bytes
    mac1: bytes = b"\x00" * MAC_LEN
    mac2: bytes = b"\x00" * MAC_LEN

    def encode(self) -> bytes:
        return self.body() + self.mac1 + self.mac2

    def body(self) -> bytes:
        return (Writer().u8(TYPE_RESPONSE).bytes(b"\x00\x00\x00").u32le(self.sender).u32le(self.receiver)
                .bytes(self.noise).getvalue())

    @classmethod
    def decode(cls, data: bytes) -> HandshakeResponse:
        if len(data) < RESPONSE_LEN:
            raise DecodeError(f"handshake response is {len(data)} bytes, need {RESPONSE_LEN}")
        r = Reader(data)
        _header(r, TYPE_RESPONSE)
        return cls(r.u32le("sender"), r.u32le("receiver"), r.bytes(RESPONSE_NOISE_LEN, "noise"),
                   r.bytes(MAC_LEN, "mac1"), r.bytes(MAC_LEN, "mac2"))


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    cookie: bytes

    def encode(self) -> bytes:
        return (Writer().u8(TYPE_COOKIE).bytes(b"\x00\x00\x00").u32le(self.receiver).bytes(self.nonce)
                .bytes(self.cookie).getvalue())

    @classmethod
    def decode(cls, data: bytes) -> CookieReply:
        r = Reader(data)
        _header(r, TYPE_COOKIE)
        return cls(r.u32le("receiver"), r.bytes(24, "nonce"), r.bytes(32, "encrypted cookie"))


@dataclass(frozen=True, slots=True)
class DataHeader:
    receiver: int
    counter: int

    def encode(self) -> bytes:
        return DATA_HEADER.pack(_DATA_PREFIX, self.receiver, self.counter)

    @classmethod
    def decode(cls, data: bytes) -> DataHeader:
        if len(data) < DATA_HEADER_LEN + TAG_LEN:
            raise DecodeError(f"data message is {len(data)} bytes, need at least {DATA_HEADER_LEN + TAG_LEN}")
        prefix, receiver, counter = DATA_HEADER.unpack_from(data)
        if prefix[0] != TYPE_DATA:
            raise DecodeError(f"expected message type {TYPE_DATA}, got {prefix[0]}")
        return cls(receiver, counter)
