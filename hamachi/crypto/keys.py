"""Static identity keys and their text encoding.

A node's identity is an X25519 key pair. Public keys travel as standard
base64 of the 32 raw bytes (44 characters), the same text form WireGuard uses,
so they are easy to paste into configs and chat. The key file holds the
private key in the same encoding, one line, and must be mode 0600.

This module is pure: reading and writing key files is done by `io`/`cli`,
which hand the text here.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from nacl.bindings import crypto_scalarmult_base
from nacl.utils import random as _nacl_random

KEY_LEN = 32


class KeyError_(ValueError):
    """A key's text form does not parse."""


def encode_key(raw: bytes) -> str:
    if len(raw) != KEY_LEN:
        raise ValueError(f"a key is {KEY_LEN} bytes, got {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def decode_key(text: str) -> bytes:
    text = text.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyError_("not valid base64") from exc
    if len(raw) != KEY_LEN:
        raise KeyError_(f"decodes to {len(raw)} bytes, a key is {KEY_LEN}")
    return raw


def public_from_private(private: bytes) -> bytes:
    return crypto_scalarmult_base(private)


@dataclass(frozen=True, slots=True)
class KeyPair:
    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        priv = _nacl_random(KEY_LEN)
        return cls(priv, public_from_private(priv))

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        return cls(private, public_from_private(private))

    @classmethod
    def from_text(cls, text: str) -> KeyPair:
        return cls.from_private(decode_key(text))

    def private_text(self) -> str:
        return encode_key(self.private)

    def public_text(self) -> str:
        return encode_key(self.public)

    def __repr__(self) -> str:  # never print the private half
        return f"KeyPair(public={self.public_text()!r})"
