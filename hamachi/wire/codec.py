"""The one Reader/Writer every codec uses, and the one exception decoders raise.

Numbers are big-endian (network order) unless a codec says otherwise. Decoders
ignore trailing bytes they do not understand so that newer peers can append
fields; a decoder that needs *more* bytes than it was given raises
`DecodeError` with a message naming what was missing.
"""

from __future__ import annotations

import struct

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_U32LE = struct.Struct("<I")
_U64LE = struct.Struct("<Q")


class DecodeError(ValueError):
    """Raised by every decoder for every malformed input, and by nothing else."""


class Reader:
    """Cursor over a bytes-like buffer; every read is bounds-checked."""

    __slots__ = ("_buf", "_pos", "_end")

    def __init__(self, buf: bytes | bytearray | memoryview, start: int = 0, end: int | None = None):
        self._buf = bytes(buf) if not isinstance(buf, bytes) else buf
        self._pos = start
        self._end = len(self._buf) if end is None else end

    @property
    def pos(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return self._end - self._pos

    def _take(self, n: int, what: str) -> int:
        if n < 0 or self._pos + n > self._end:
            raise DecodeError(f"truncated {what}: need {n} bytes, have {self.remaining()}")
        p = self._pos
        self._pos = p + n
        return p

    def u8(self, what: str = "u8") -> int:
        return _U8.unpack_from(self._buf, self._take(1, what))[0]

    def u16(self, what: str = "u16") -> int:
        return _U16.unpack_from(self._buf, self._take(2, what))[0]

    def u32(self, what: str = "u32") -> int:
        return _U32.unpack_from(self._buf, self._take(4, what))[0]

    def u64(self, what: str = "u64") -> int:
        return _U64.unpack_from(self._buf, self._take(8, what))[0]

    def u32le(self, what: str = "u32le") -> int:
        return _U32LE.unpack_from(self._buf, self._take(4, what))[0]

    def u64le(self, what: str = "u64le") -> int:
        return _U64LE.unpack_from(self._buf, self._take(8, what))[0]

    def bytes(self, n: int, what: str = "bytes") -> bytes:
        p = self._take(n, what)
        return self._buf[p : p + n]

    def rest(self) -> bytes:
        p = self._pos
        self._pos = self._end
        return self._buf[p : self._end]

    def lp8(self, what: str = "string") -> bytes:
        """A byte string prefixed by a one-byte length."""
        return self.bytes(self.u8(what + " length"), what)

    def lp16(self, what: str = "blob") -> bytes:
        """A byte string prefixed by a two-byte length."""
        return self.bytes(self.u16(what + " length"), what)

    def text8(self, what: str = "text") -> str:
        raw = self.lp8(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{what} is not UTF-8") from exc

    def text16(self, what: str = "text") -> str:
        raw = self.lp16(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{what} is not UTF-8") from exc


class Writer:
    """Append-only builder; `getvalue()` returns the encoded bytes."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> Writer:
        self._parts.append(_U8.pack(v))
        return self

    def u16(self, v: int) -> Writer:
        self._parts.append(_U16.pack(v))
        return self

    def u32(self, v: int) -> Writer:
        self._parts.append(_U32.pack(v))
        return self

    def u64(self, v: int) -> Writer:
        self._parts.append(_U64.pack(v))
        return self

    def u32le(self, v: int) -> Writer:
        self._parts.append(_U32LE.pack(v))
        return self

    def u64le(self, v: int) -> Writer:
        self._parts.append(_U64LE.pack(v))
        return self

    def bytes(self, b: bytes) -> Writer:
        self._parts.append(bytes(b))
        return self

    def lp8(self, b: bytes) -> Writer:
        if len(b) > 0xFF:
            raise ValueError(f"value too long for a one-byte length: {len(b)}")
        return self.u8(len(b)).bytes(b)

    def lp16(self, b: bytes) -> Writer:
        if len(b) > 0xFFFF:
            raise ValueError(f"value too long for a two-byte length: {len(b)}")
        return self.u16(len(b)).bytes(b)

    def text8(self, s: str) -> Writer:
        return self.lp8(s.encode("utf-8"))

    def text16(self, s: str) -> Writer:
        return self.lp16(s.encode("utf-8"))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)
