"""Network passwords and enrolment tokens, stored only as salted slow hashes (libsodium argon2id)."""

from __future__ import annotations

import hashlib

from nacl import pwhash
from nacl.exceptions import InvalidkeyError

# Interactive limits: about 0.1 s and 64 MiB per hash, so a stolen database is slow to attack
# while a join still feels instant.
OPS = pwhash.argon2id.OPSLIMIT_INTERACTIVE
MEM = pwhash.argon2id.MEMLIMIT_INTERACTIVE


def hash_password(password: str) -> bytes:
    return pwhash.argon2id.str(password.encode(), opslimit=OPS, memlimit=MEM)


def verify_password(stored: bytes, password: str) -> bool:
    try:
        return pwhash.verify(stored, password.encode())
    except InvalidkeyError:
        return False


def hash_token(token: str) -> bytes:
    """Tokens are long random strings, so a fast hash is enough (nothing to brute-force)."""
    return hashlib.blake2s(token.encode(), person=b"hmtoken").digest()
