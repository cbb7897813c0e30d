"""Relay tickets: the server's permission for two peers to use one relay session.

The server and each relay share a key derived from X25519(server, relay) (both
sides know the other's public key from their configs), so a ticket is
authenticated with a keyed BLAKE2s MAC rather than a signature: only that
server and that relay can make or check it, and a ticket for one relay is
useless at another. Layout (all big-endian):

    | version 1 | session id 8 | peer a 32 | peer b 32 | expires u64 (unix s) | rate u32 (B/s, 0 = none) |
    | account (u8 length + UTF-8) | MAC 16 |
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from hamachi.crypto.keys import KeyPair
from hamachi.crypto.noise import dh, hkdf
from hamachi.wire.codec import DecodeError, Reader, Writer

MAC_LEN = 16
_BODY = struct.Struct("!B8s32s32sQI")


def session_id_of(ticket: bytes) -> bytes:
    """The session a ticket is for (readable by its holders, who cannot check the MAC); b"" if short."""
    return ticket[1:9] if len(ticket) >= _BODY.size + 1 + MAC_LEN else b""


def shared_key(local: KeyPair, remote_public: bytes) -> bytes:
    """The server-relay ticket key; the same on both sides."""
    secret = dh(local.private, remote_public)
    pair = b"".join(sorted((local.public, remote_public)))
    return hkdf(hashlib.blake2s(b"hamachi relay ticket v1" + pair).digest(), secret, 2)[0]


@dataclass(frozen=True, slots=True)
class Ticket:
    session_id: bytes
    peer_a: bytes
    peer_b: bytes
    expires: int
    rate: int = 0
    account: str = ""

    def encode(self, key: bytes) -> bytes:
        body = Writer().bytes(_BODY.pack(1, self.session_id, self.peer_a, self.peer_b, self.expires, self.rate)) \
            .text8(self.account).getvalue()
        return body + hashlib.blake2s(body, key=key, digest_size=MAC_LEN).digest()

    @classmethod
    def decode(cls, data: bytes, key: bytes) -> Ticket:
        """Parse and authenticate; DecodeError if malformed or forged."""
        if len(data) < _BODY.size + 1 + MAC_LEN:
            raise DecodeError(f"ticket is {len(data)} bytes, too short")
        body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
        if not hmac.compare_digest(hashlib.blake2s(body, key=key, digest_size=MAC_LEN).digest(), mac):
            raise DecodeError("ticket MAC does not verify")
        r = Reader(body)
        version, sid, a, b, expires, rate = _BODY.unpack(r.bytes(_BODY.size, "ticket body"))
        if version != 1:
            raise DecodeError(f"unknown ticket version {version}")
        return cls(sid, a, b, expires, rate, r.text8("account"))
