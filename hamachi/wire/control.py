"""Control-connection messages (client <-> server), carried inside Noise transport frames.

On the TCP stream every frame is a 2-byte big-endian length and that many bytes:

    frame 1 (client)  Noise IK message 1 (the client's static key travels encrypted)
    frame 2 (server)  Noise IK message 2
    frame 3...        ChaCha20-Poly1305 ciphertext (Noise transport, implicit nonces) of one message

A message's plaintext starts with a version byte and a type byte, then the
fields of that type in order (integers big-endian; text and blobs with a
2-byte length; keys 32 raw bytes; lists with a 2-byte count):

    +---------+------+--------------------------------+
    | ver = 1 | type | fields ...                     |   trailing bytes are ignored
    +---------+------+--------------------------------+

Phases (proto/control_server.py): login (Hello -> Welcome), discovery
(Discovery), sync (Netmap, then Delta messages with sequence numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from hamachi.wire.codec import DecodeError, Reader, Writer

VERSION = 1
MAX_FRAME = 65535
MAX_LIST = 4096


# -- field kinds --------------------------------------------------------------
def _w(kind: str, w: Writer, v: Any) -> None:
    if kind == "u8":
        w.u8(v)
    elif kind == "u16":
        w.u16(v)
    elif kind == "u32":
        w.u32(v)
    elif kind == "u64":
        w.u64(v)
    elif kind == "text":
        w.text16(v)
    elif kind == "blob":
        w.lp16(v)
    elif kind == "key":
        if len(v) != 32:
            raise ValueError("a key is 32 bytes")
        w.bytes(v)
    elif kind == "pairs":
        w.u16(len(v))
        for k, val in v:
            w.text16(k).text16(val)
    elif kind.startswith("list:"):
        _RECORDS[kind[5:]]
        w.u16(len(v))
        for item in v:
            item._write(w)
    else:  # pragma: no cover - a typo in a FIELDS table
        raise AssertionError(kind)


def _r(kind: str, r: Reader, name: str) -> Any:
    if kind == "u8":
        return r.u8(name)
    if kind == "u16":
        return r.u16(name)
    if kind == "u32":
        return r.u32(name)
    if kind == "u64":
        return r.u64(name)
    if kind == "text":
        return r.text16(name)
    if kind == "blob":
        return r.lp16(name)
    if kind == "key":
        return r.bytes(32, name)
    if kind == "pairs":
        n = r.u16(name + " count")
        if n > MAX_LIST:
            raise DecodeError(f"{name}: {n} entries is too many")
        return tuple((r.text16(name + " key"), r.text16(name + " value")) for _ in range(n))
    if kind.startswith("list:"):
        sub = _RECORDS[kind[5:]]
        n = r.u16(name + " count")
        if n > MAX_LIST:
            raise DecodeError(f"{name}: {n} entries is too many")
        return tuple(sub._read(r) for _ in range(n))
    raise AssertionError(kind)  # pragma: no cover


class _Fields:
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def _write(self, w: Writer) -> None:
        for f, kind in zip(fields(self), self.FIELDS, strict=True):
            _w(kind, w, getattr(self, f.name))

    @classmethod
    def _read(cls, r: Reader):
        return cls(*(_r(kind, r, f.name) for f, kind in zip(fields(cls), cls.FIELDS, strict=True)))


_RECORDS: dict[str, type] = {}
_TYPES: dict[int, type] = {}


def record(cls):
    _RECORDS[cls.__name__] = cls
    return cls


def message(type_id: int):
    def deco(cls):
        cls.TYPE = type_id
        _TYPES[type_id] = cls
        return cls

    return deco


class Message(_Fields):
    TYPE: ClassVar[int] = 0

    def encode(self) -> bytes:
        w = Writer().u8(VERSION).u8(self.TYPE)
        self._write(w)
        return w.getvalue()


def decode(data: bytes) -> Message:
    r = Reader(data)
    version = r.u8("version")
    if version != VERSION:
        raise DecodeError(f"unsupported control protocol version {version}")
    t = r.u8("type")
    cls = _TYPES.get(t)
    if cls is None:
        raise DecodeError(f"unknown control message type {t}")
    return cls._read(r)


# -- records ------------------------------------------------------------------
@record
@dataclass(frozen=True, slots=True)
class MemberInfo(_Fields):
    FIELDS = ("key", "text", "text", "text", "text", "u8", "text")
    public_key: bytes
    nickname: str
    address4: str
    address6: str
    state: str  # member | pending
    online: int
    endpoint: str


@record
@dataclass(frozen=True, slots=True)
class RelayOffer(_Fields):
    """One relay for one pair: where it listens ("host:port", tcp may be empty) and the ticket."""

    FIELDS = ("text", "text", "text", "blob")
    name: str
    udp: str
    tcp: str
    ticket: bytes


@record
@dataclass(frozen=True, slots=True)
class NetworkInfo(_Fields):
    FIELDS = ("text", "key", "text", "u8", "u8", "u16", "list:MemberInfo")
    name: str
    owner: bytes
    mode: str
    locked: int
    approval: int
    max_members: int
    members: tuple[MemberInfo, ...]


# -- client -> server ---------------------------------------------------------
@message(1)
@dataclass(frozen=True, slots=True)
class Hello(Message):
    FIELDS = ("text", "text", "text")
    client_version: str
    nickname: str
    token: str = ""


@message(2)
@dataclass(frozen=True, slots=True)
class Discovery(Message):
    FIELDS = ("u16", "pairs")
    listen_port: int
    report: tuple[tuple[str, str], ...] = ()


@message(3)
@dataclass(frozen=True, slots=True)
class Request(Message):
    FIELDS = ("u32", "text", "pairs")
    req_id: int
    verb: str
    args: tuple[tuple[str, str], ...] = ()

    def arg(self, name: str, default: str = "") -> str:
        for k, v in self.args:
            if k == name:
                return v
        return default


@message(4)
@dataclass(frozen=True, slots=True)
class Ping(Message):
    FIELDS = ("u64",)
    nonce: int


@message(5)
@dataclass(frozen=True, slots=True)
class Resync(Message):
    FIELDS = ("u64",)
    last_seq: int


# -- server -> client ---------------------------------------------------------
@message(64)
@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """`relays` maps each relay's name to its UDP host:port; the client measures its RTT to each
    (a STUN Binding) and reports them in Discovery as rtt:<name> = milliseconds."""

    FIELDS = ("text", "text", "u8", "u8", "text", "pairs")
    address4: str
    address6: str
    prefix4: int
    prefix6: int
    server_version: str
    relays: tuple[tuple[str, str], ...] = ()


@message(65)
@dataclass(frozen=True, slots=True)
class Netmap(Message):
    FIELDS = ("u64", "list:NetworkInfo")
    seq: int
    networks: tuple[NetworkInfo, ...]


@message(66)
@dataclass(frozen=True, slots=True)
class Delta(Message):
    """One network changed (`networks` holds it) or is gone for this client (`removed`)."""

    FIELDS = ("u64", "list:NetworkInfo", "text")
    seq: int
    networks: tuple[NetworkInfo, ...]
    removed: str = ""


@message(67)
@dataclass(frozen=True, slots=True)
class PeerUp(Message):
    """Set up a tunnel. `endpoint` lists candidate host:port pairs, comma-separated, best first;
    `nat` is the peer's discovered "mapping/filtering" behaviour (empty if unknown); `relays`
    are the relays the pair may meet at, best first (both sides get the same order), each with
    the pair's ticket for it; `side` says which end of the tickets we are."""

    FIELDS = ("key", "text", "text", "text", "text", "text", "list:RelayOffer", "u8")
    public_key: bytes
    nickname: str
    address4: str
    address6: str
    endpoint: str
    nat: str = ""
    relays: tuple[RelayOffer, ...] = ()
    side: int = 0


@message(68)
@dataclass(frozen=True, slots=True)
class PeerDown(Message):
    """Drop the tunnel ("left", "logout", "evicted"), or check it yourself ("lost")."""

    FIELDS = ("key", "text")
    public_key: bytes
    reason: str


@message(69)
@dataclass(frozen=True, slots=True)
class Reply(Message):
    FIELDS = ("u32", "u8", "text")
    req_id: int
    ok: int
    error: str = ""


@message(70)
@dataclass(frozen=True, slots=True)
class Pong(Message):
    FIELDS = ("u64",)
    nonce: int


@message(71)
@dataclass(frozen=True, slots=True)
class Close(Message):
    FIELDS = ("text",)
    reason: str


def frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return len(payload).to_bytes(2, "big") + payload
