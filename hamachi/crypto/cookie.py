"""Handshake MACs and cookies against floods (the WireGuard design, whitepaper §5.4.4, §5.4.7).

* mac1 = BLAKE2s-128 keyed by HASH("mac1----" || responder static public key)
  over the message. Anyone who knows whom they are talking to can make it, and
  the responder checks it before any Diffie-Hellman, so random garbage costs
  one hash.
* Under load the responder does no DH for a message without a valid mac2 and
  answers with a cookie reply instead: cookie = BLAKE2s-128 keyed by a secret
  that rotates every 2 minutes, over the sender's IP and port, sent encrypted
  (XChaCha20-Poly1305 keyed by HASH("cookie--" || responder public key), the
  initiation's mac1 as associated data). Only a sender that can receive at its
  claimed address learns the cookie, so spoofed floods get nowhere.
* mac2 = BLAKE2s-128 keyed by the cookie over the message and mac1.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

MAC_LEN = 16
COOKIE_SECRET_LIFETIME = 120.0
COOKIE_LIFETIME = 120.0 - 5.0


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=MAC_LEN).digest()


def mac1_key(responder_public: bytes) -> bytes:
    return hashlib.blake2s(b"mac1----" + responder_public).digest()


def cookie_key(responder_public: bytes) -> bytes:
    return hashlib.blake2s(b"cookie--" + responder_public).digest()


def mac1(key: bytes, body: bytes) -> bytes:
    return _mac(key, body)


def mac2(cookie: bytes, body_and_mac1: bytes) -> bytes:
    return _mac(cookie, body_and_mac1)


def macs_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


class CookieChecker:
    """Responder side: checks mac1/mac2 and makes cookie replies."""

    def __init__(self, local_public: bytes, rand: Callable[[int], bytes]):
        self.mac1_key = mac1_key(local_public)
        self.cookie_key = cookie_key(local_public)
        self.rand = rand
        self._secret = rand(32)
        self._secret_born = float("-inf")

    def check_mac1(self, body: bytes, got: bytes) -> bool:
        return macs_equal(mac1(self.mac1_key, body), got)

    def _cookie_for(self, source: bytes, now: float) -> bytes:
        if now - self._secret_born >= COOKIE_SECRET_LIFETIME:
            self._secret = self.rand(32)
            self._secret_born = now
        return _mac(self._secret, source)

    def check_mac2(self, body_and_mac1: bytes, got: bytes, source: bytes, now: float) -> bool:
        return macs_equal(mac2(self._cookie_for(source, now), body_and_mac1), got)

    def make_reply(self, mac1_of_msg: bytes, source: bytes, now: float) -> tuple[bytes, bytes]:
        """(nonce, encrypted cookie) for a CookieReply."""
        nonce = self.rand(24)
        return nonce, crypto_aead_xchacha20poly1305_ietf_encrypt(
            self._cookie_for(source, now), mac1_of_msg, nonce, self.cookie_key)


def open_cookie(remote_public: bytes, nonce: bytes, encrypted: bytes, mac1_sent: bytes) -> bytes | None:
    """Initiator side: the cookie from a reply, or None if it does not authenticate."""
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(encrypted, mac1_sent, nonce, cookie_key(remote_public))
    except CryptoError:
        return None
