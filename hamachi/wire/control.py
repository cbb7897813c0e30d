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

import ipaddress
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
        name, limit = _list_kind(kind)
        if len(v) > limit:
            raise ValueError(f"{len(v)} {name} records exceed the limit of {limit}")
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
        sub_name, limit = _list_kind(kind)
        sub = _RECORDS[sub_name]
        n = r.u16(name + " count")
        if n > limit:
            raise DecodeError(f"{name}: {n} entries is too many (at most {limit})")
        return tuple(sub._read(r) for _ in range(n))
    raise AssertionError(kind)  # pragma: no cover


def _list_kind(kind: str) -> tuple[str, int]:
    """"list:Record" or "list:Record:limit" -> (record name, most entries allowed)."""
    _, name, *limit = kind.split(":")
    return name, int(limit[0]) if limit else MAX_LIST


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
class Candidate:
    """One address a peer may be reached at: an IP literal (never a hostname), a port, a kind.

        +------+--------+---------------------+----------+
        | kind | family | address (4|16 bytes) | port u16 |
        +------+--------+---------------------+----------+

    kind: PUBLIC is what the server itself observed (the control connection's address, with
    the port its STUN service saw for the client's discovery probe); LAN is a private or
    link-local address the client reported; FORWARDED is a port forward the client configured
    on its own public address. family is 4 or 6. A port of 0, an unknown kind or family is a
    DecodeError; constructing one with a hostname or a bad port is a ValueError.
    """

    PUBLIC: ClassVar[int] = 1
    LAN: ClassVar[int] = 2
    FORWARDED: ClassVar[int] = 3
    KINDS: ClassVar[frozenset[int]] = frozenset((1, 2, 3))

    kind: int
    ip: str
    port: int

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown candidate kind {self.kind}")
        addr = ipaddress.ip_address(self.ip)  # ValueError for a hostname
        if str(addr) != self.ip:
            object.__setattr__(self, "ip", str(addr))
        if not 1 <= self.port <= 65535:
            raise ValueError(f"candidate port {self.port} is out of range 1..65535")

    @property
    def version(self) -> int:
        return 6 if ":" in self.ip else 4

    @property
    def addr(self) -> tuple[str, int]:
        """The socket address (an IP literal and a port: never a name to resolve)."""
        return self.ip, self.port

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.version == 6 else f"{self.ip}:{self.port}"

    def _write(self, w: Writer) -> None:
        w.u8(self.kind).u8(self.version).bytes(ipaddress.ip_address(self.ip).packed).u16(self.port)

    @classmethod
    def _read(cls, r: Reader) -> Candidate:
        kind = r.u8("candidate kind")
        if kind not in cls.KINDS:
            raise DecodeError(f"unknown candidate kind {kind}")
        family = r.u8("candidate family")
        if family not in (4, 6):
            raise DecodeError(f"candidate family {family} is neither 4 nor 6")
        raw = r.bytes(4 if family == 4 else 16, "candidate address")
        port = r.u16("candidate port")
        if port == 0:
            raise DecodeError("candidate port 0")
        return cls(kind, str(ipaddress.ip_address(raw)), port)


MAX_CANDIDATES = 10  # the public one, a forwarded port, and up to 8 LAN addresses
MAX_LAN_CANDIDATES = 8


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
    """`candidates` are the client's own claims (LAN addresses, a forwarded port); the server
    keeps only what it can check (see proto/control_server.py). `report` carries the NAT
    discovery results and the txids of its STUN probes (txid:T1, txid:M2, txid:M3, hex), which
    the server looks up in what its own STUN service saw."""

    FIELDS = ("u16", "pairs", f"list:Candidate:{MAX_CANDIDATES}")
    listen_port: int
    report: tuple[tuple[str, str], ...] = ()
    candidates: tuple[Candidate, ...] = ()


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
    """Set up a tunnel. `candidates` are where the peer may be reached, best first (the server
    checked them: see Candidate); `nat` is the peer's "mapping/filtering" behaviour, the mapping
    as the server's own STUN service saw it (empty if unknown); `relays`
    are the relays the pair may meet at, best first (both sides get the same order), each with
    the pair's ticket for it; `side` says which end of the tickets we are."""

    FIELDS = ("key", "text", "text", "text", f"list:Candidate:{MAX_CANDIDATES}", "text", "list:RelayOffer", "u8")
    public_key: bytes
    nickname: str
    address4: str
    address6: str
    candidates: tuple[Candidate, ...]
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
