"""Noise_IK_25519_ChaChaPoly_BLAKE2s, sans I/O.

The IK pattern (Noise spec rev. 34, §7.5): the initiator already knows the
responder's static key, so one round trip gives mutual authentication,
forward secrecy, and hides the initiator's identity from passive observers:

    <- s
    ...
    -> e, es, s, ss        message 1: 32 + (32+16) + (payload+16) bytes
    <- e, ee, se           message 2: 32 + (payload+16) bytes

Primitives come from libsodium through PyNaCl (X25519, ChaCha20-Poly1305
IETF) and from hashlib (BLAKE2s for HASH, HMAC and HKDF, §4.3).

Theory of operation / state diagram:

    initiator:  START --write_message--> SENT1 --read_message--> COMPLETE
    responder:  START --read_message--> GOT1 --write_message--> COMPLETE
    any state --(error)--> FAILED   (or unchanged, see below)

Error contract: `read_message` raises `HandshakeError`. If the bad message
was rejected before any state was touched (wrong length, wrong state), the
machine is unchanged and can take another message; if it failed after state
was mixed (a failed decryption, a bad DH), `failed` is set and the machine
takes nothing more. `write_message` in the wrong state raises
`HandshakeError` without changing anything.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
)
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaclRuntimeError

from hamachi.crypto.keys import KeyPair

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
HASHLEN = 32
DHLEN = 32
TAGLEN = 16
MAX_NONCE = 2**64 - 1


class HandshakeError(ValueError):
    """A handshake message was rejected (see the module's error contract)."""


def hash_(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def hmac_hash(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def hkdf(ck: bytes, ikm: bytes, n: int) -> tuple[bytes, ...]:
    temp = hmac_hash(ck, ikm)
    out1 = hmac_hash(temp, b"\x01")
    if n == 2:
        return out1, hmac_hash(temp, out1 + b"\x02")
    out2 = hmac_hash(temp, out1 + b"\x02")
    return out1, out2, hmac_hash(temp, out2 + b"\x03")


def dh(private: bytes, public: bytes) -> bytes:
    try:
        return crypto_scalarmult(private, public)
    except (NaclRuntimeError, CryptoError, ValueError) as exc:  # low-order point: all-zero output
        raise HandshakeError("invalid public key (DH result is zero)") from exc


def _nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


class CipherState:
    """A key and a nonce counter (§5.1). Used directly for ordered transports (TCP)."""

    __slots__ = ("k", "n")

    def __init__(self, k: bytes | None = None):
        self.k = k
        self.n = 0

    def has_key(self) -> bool:
        return self.k is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise HandshakeError("nonce exhausted")
        ct = crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, _nonce(self.n), self.k)
        self.n += 1
        return ct

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise HandshakeError("nonce exhausted")
        try:
            pt = crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, ad, _nonce(self.n), self.k)
        except CryptoError as exc:
            raise HandshakeError("decryption failed") from exc
        self.n += 1
        return pt


class SymmetricState:
    __slots__ = ("ck", "h", "cs")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME):
        self.h = protocol_name.ljust(HASHLEN, b"\x00") if len(protocol_name) <= HASHLEN else hash_(protocol_name)
        self.ck = self.h
        self.cs = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cs = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = hash_(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(k1), CipherState(k2)


@dataclass(frozen=True, slots=True)
class _Phase:
    name: str


START, SENT1, GOT1, COMPLETE, FAILED = (_Phase(n) for n in ("start", "sent1", "got1", "complete", "failed"))


class NoiseIK:
    """One IK handshake. Build with `initiator()` or `responder()`."""

    def __init__(self, initiator: bool, local: KeyPair, remote_static: bytes | None, prologue: bytes,
                 ephemeral: KeyPair | None):
        self.initiator = initiator
        self.s = local
        self.e: KeyPair | None = ephemeral
        self.rs = remote_static
        self.re: bytes | None = None
        self.ss = SymmetricState()
        self.ss.mix_hash(prologue)
        # Pre-message pattern "<- s": both sides hash the responder's static key.
        self.ss.mix_hash(remote_static if initiator else local.public)
        self.phase = START

    @classmethod
    def initiator(cls, local: KeyPair, remote_static: bytes, prologue: bytes = b"",
                  ephemeral: KeyPair | None = None) -> NoiseIK:
        if len(remote_static) != DHLEN:
            raise ValueError("remote static key must be 32 bytes")
        return cls(True, local, remote_static, prologue, ephemeral)

    @classmethod
    def responder(cls, local: KeyPair, prologue: bytes = b"", ephemeral: KeyPair | None = None) -> NoiseIK:
        return cls(False, local, None, prologue, ephemeral)

    # -- state ----------------------------------------------------------------
    @property
    def failed(self) -> bool:
        return self.phase is FAILED

    @property
    def complete(self) -> bool:
        return self.phase is COMPLETE

    @property
    def remote_static(self) -> bytes | None:
        return self.rs

    @property
    def handshake_hash(self) -> bytes:
        return self.ss.h

    @staticmethod
    def message1_len(payload_len: int) -> int:
        return DHLEN + DHLEN + TAGLEN + payload_len + TAGLEN

    @staticmethod
    def message2_len(payload_len: int) -> int:
        return DHLEN + payload_len + TAGLEN

    # -- messages -------------------------------------------------------------
    def write_message(self, payload: bytes = b"") -> bytes:
        if self.initiator and self.phase is START:
            return self._write1(payload)
        if not self.initiator and self.phase is GOT1:
            return self._write2(payload)
        raise HandshakeError(f"write_message not allowed in phase {self.phase.name}")

    def read_message(self, message: bytes) -> bytes:
        if not self.initiator and self.phase is START:
            if len(message) < self.message1_len(0):
                raise HandshakeError(f"message 1 too short: {len(message)} bytes")
            return self._guard(self._read1, message)
        if self.initiator and self.phase is SENT1:
            if len(message) < self.message2_len(0):
                raise HandshakeError(f"message 2 too short: {len(message)} bytes")
            return self._guard(self._read2, message)
        raise HandshakeError(f"read_message not allowed in phase {self.phase.name}")

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) cipher states for this side."""
        if self.phase is not COMPLETE:
            raise HandshakeError("handshake not complete")
        c1, c2 = self.ss.split()
        return (c1, c2) if self.initiator else (c2, c1)

    def _guard(self, fn, message: bytes) -> bytes:
        try:
            return fn(message)
        except HandshakeError:
            self.phase = FAILED
            raise

    def _write1(self, payload: bytes) -> bytes:
        if self.e is None:
            self.e = KeyPair.generate()
        ss = self.ss
        ss.mix_hash(self.e.public)  # e
        ss.mix_key(dh(self.e.private, self.rs))  # es
        enc_s = ss.encrypt_and_hash(self.s.public)  # s
        ss.mix_key(dh(self.s.private, self.rs))  # ss
        enc_p = ss.encrypt_and_hash(payload)
        self.phase = SENT1
        return self.e.public + enc_s + enc_p

    def _read1(self, msg: bytes) -> bytes:
        ss = self.ss
        self.re = msg[:DHLEN]
        ss.mix_hash(self.re)  # e
        ss.mix_key(dh(self.s.private, self.re))  # es
        self.rs = ss.decrypt_and_hash(msg[DHLEN : DHLEN + DHLEN + TAGLEN])  # s
        ss.mix_key(dh(self.s.private, self.rs))  # ss
        payload = ss.decrypt_and_hash(msg[DHLEN + DHLEN + TAGLEN :])
        self.phase = GOT1
        return payload

    def _write2(self, payload: bytes) -> bytes:
        if self.e is None:
            self.e = KeyPair.generate()
        ss = self.ss
        ss.mix_hash(self.e.public)  # e
        ss.mix_key(dh(self.e.private, self.re))  # ee
        ss.mix_key(dh(self.e.private, self.rs))  # se
        enc_p = ss.encrypt_and_hash(payload)
        self.phase = COMPLETE
        return self.e.public + enc_p

    def _read2(self, msg: bytes) -> bytes:
        ss = self.ss
        self.re = msg[:DHLEN]
        ss.mix_hash(self.re)  # e
        ss.mix_key(dh(self.e.private, self.re))  # ee
        ss.mix_key(dh(self.s.private, self.re))  # se
        payload = ss.decrypt_and_hash(msg[DHLEN:])
        self.phase = COMPLETE
        return payload
