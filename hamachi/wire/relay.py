"""Relay messages, on UDP (one per datagram) or TCP (each behind a 2-byte big-endian length).

    Bind   (6): | 6 | side (0 = peer a, 1 = peer b) | ticket (rest) |
    Bound  (7): | 7 | session id 8 |                                   only to a valid ticket's holder
    Data   (8): | 8 | session id 8 | payload (an opaque, already encrypted hamachi datagram) |
    Ping   (9): | 9 | 0 = ping, 1 = pong | nonce 8 |                   only for bound sources

The relay never sees plaintext: payloads are the peers' own sealed data messages.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hamachi.wire.codec import DecodeError

TYPE_BIND, TYPE_BOUND, TYPE_DATA, TYPE_PING = 6, 7, 8, 9
MAX_PAYLOAD = 65535 - 9
_SID = struct.Struct("!B8s")


@dataclass(frozen=True, slots=True)
class Bind:
    side: int
    ticket: bytes

    def encode(self) -> bytes:
        return bytes([TYPE_BIND, self.side]) + self.ticket

    @classmethod
    def decode(cls, data: bytes) -> Bind:
        if len(data) < 3 or data[0] != TYPE_BIND:
            raise DecodeError("not a relay bind")
        if data[1] not in (0, 1):
            raise DecodeError(f"bad side {data[1]}")
        return cls(data[1], data[2:])


@dataclass(frozen=True, slots=True)
class Bound:
    session_id: bytes

    def encode(self) -> bytes:
        return _SID.pack(TYPE_BOUND, self.session_id)

    @classmethod
    def decode(cls, data: bytes) -> Bound:
        if len(data) < 9 or data[0] != TYPE_BOUND:
            raise DecodeError("not a relay bound message")
        return cls(data[1:9])


def data_header(session_id: bytes) -> bytes:
    return _SID.pack(TYPE_DATA, session_id)


def split_data(data: bytes) -> tuple[bytes, bytes]:
    """(session id, payload) of a relay data message."""
    if len(data) < 10 or data[0] != TYPE_DATA:
        raise DecodeError("not a relay data message")
    return data[1:9], data[9:]


@dataclass(frozen=True, slots=True)
class Ping:
    pong: int
    nonce: bytes

    def encode(self) -> bytes:
        return bytes([TYPE_PING, self.pong]) + self.nonce

    @classmethod
    def decode(cls, data: bytes) -> Ping:
        if len(data) < 10 or data[0] != TYPE_PING or data[1] not in (0, 1):
            raise DecodeError("not a relay ping")
        return cls(data[1], data[2:10])
