"""The LAN-party join code: a short secret that also names the server's key.

A code is 10 characters of Crockford base32 (50 bits), shown as two groups of
five, e.g. ``7KQ2M-XH4PD``:

    +---------------------------+---------------------------+
    | S: admission secret 25 b  | F: key fingerprint 25 b   |
    +---------------------------+---------------------------+
      random, chosen by the host  F = scrypt(S, salt = server public key)[:25 bits]

* **Binding the key.** mDNS is unauthenticated, so a joiner checks every
  announced party against the code: F must equal the fingerprint of the
  announced key under S. A rogue announcer that does not know the code passes
  with probability 2^-25 per try; one that heard the code must find a key whose
  scrypt fingerprint matches, about 2^25 scrypt runs (N = 2^14: roughly 50 ms
  and 16 MiB each, so weeks of CPU) before the party ends. The joiner then
  pins that key in the Noise IK handshake, so only the holder of its private
  key can answer.
* **Admission.** Inside that authenticated, encrypted channel the joiner sends
  the admission proof `admission_password(code, key)`, a keyed BLAKE2s of the
  key under the whole code; the server holds it as the party network's
  (argon2id-hashed) password and admits without a prompt. An online attacker
  who knows the key but not the code must guess S (F follows from S and the
  key): 2^25 values, and the server slows every source after a few wrong
  guesses (proto/ratelimit.py `GuessThrottle`).

Pure: callers pass the random bytes in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
# What people misread or mistype, folded onto the alphabet when a code is parsed.
_FOLD = str.maketrans({"I": "1", "L": "1", "O": "0", "U": "V"})
SECRET_BITS = 25
FINGERPRINT_BITS = 25
CODE_CHARS = (SECRET_BITS + FINGERPRINT_BITS) // 5
SCRYPT_N = 2**14
SCRYPT_R = 8
ONLINE_GUESS_BITS = SECRET_BITS


class CodeError(ValueError):
    """A code that is not 10 base32 characters; the text says what is wrong."""


@dataclass(frozen=True, slots=True)
class JoinCode:
    secret: int  # SECRET_BITS bits
    fingerprint: int  # FINGERPRINT_BITS bits

    @property
    def value(self) -> int:
        return (self.secret << FINGERPRINT_BITS) | self.fingerprint

    def __str__(self) -> str:
        v = self.value
        chars = "".join(ALPHABET[(v >> (5 * i)) & 31] for i in reversed(range(CODE_CHARS)))
        return f"{chars[:5]}-{chars[5:]}"

    def matches(self, server_key: bytes) -> bool:
        """Does the announced `server_key` belong to the party this code was made for?"""
        return fingerprint(self.secret, server_key) == self.fingerprint


def fingerprint(secret: int, server_key: bytes) -> int:
    if len(server_key) != 32:
        raise ValueError("a server key is 32 bytes")
    digest = hashlib.scrypt(b"hamachi party v1" + secret.to_bytes(4, "big"), salt=server_key, n=SCRYPT_N,
                            r=SCRYPT_R, p=1, maxmem=64 * 1024 * 1024, dklen=8)
    return int.from_bytes(digest, "big") >> (64 - FINGERPRINT_BITS)


def make_code(server_key: bytes, random4: bytes) -> JoinCode:
    """A new code for `server_key` from 4 random bytes (the caller's os.urandom)."""
    if len(random4) != 4:
        raise ValueError("make_code needs 4 random bytes")
    secret = int.from_bytes(random4, "big") >> (32 - SECRET_BITS)
    return JoinCode(secret, fingerprint(secret, server_key))


def parse_code(text: str) -> JoinCode:
    """Read a code as a person typed it: any case, with or without dashes and spaces."""
    raw = "".join(ch for ch in text.upper() if ch not in "- \t").translate(_FOLD)
    if len(raw) != CODE_CHARS:
        raise CodeError(f"a join code has {CODE_CHARS} characters (like 7KQ2M-XH4PD), got {len(raw)}")
    v = 0
    for ch in raw:
        i = ALPHABET.find(ch)
        if i < 0:
            raise CodeError(f"{ch!r} cannot be part of a join code (letters and digits only)")
        v = (v << 5) | i
    return JoinCode(v >> FINGERPRINT_BITS, v & ((1 << FINGERPRINT_BITS) - 1))


def admission_password(code: JoinCode, server_key: bytes) -> str:
    """What the joiner presents inside the authenticated channel; the host sets it as the party password."""
    return hashlib.blake2s(server_key, key=code.value.to_bytes(7, "big"), person=b"hmparty1").hexdigest()
