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
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from hamachi.wire.codec import DecodeError, Reader, Writer

VERSION = 1
MAX_FRAME = 65535
MAX_LIST = 4096
MAX_NAME_BYTES = 256  # a nickname or network name: 64 characters, up to 4 UTF-8 bytes each
NAME, ADDR, HOSTPORT = f"text:{MAX_NAME_BYTES}", "text:64", "text:300"
# A part of a split Netmap/Delta stays below this (the frame also holds the 16-byte AEAD tag).
PART_BUDGET = 60000


# -- field kinds --------------------------------------------------------------
# "text:N" and "blob:N" hold at most N bytes, "pairs:C:K:V" at most C pairs of a K-byte key and a
# V-byte value, "list:Record:C" at most C records: every field is bounded where it is decoded
# (and encoded: the sender finds out first). Without a bound, a field's length prefix is the limit.
def _bound(kind: str, i: int, default: int) -> int:
    parts = kind.split(":")
    return int(parts[i]) if len(parts) > i else default


def _check_len(n: int, limit: int, what: str, exc: type[Exception]) -> None:
    if n > limit:
        raise exc(f"{what}: {n} is more than the {limit} allowed")


def _w(kind: str, w: Writer, v: Any) -> None:
    base = kind.split(":", 1)[0]
    if base == "u8":
        w.u8(v)
    elif base == "u16":
        w.u16(v)
    elif base == "u32":
        w.u32(v)
    elif base == "u64":
        w.u64(v)
    elif base == "text":
        raw = v.encode("utf-8")
        _check_len(len(raw), _bound(kind, 1, 0xFFFF), "text bytes", ValueError)
        w.lp16(raw)
    elif base == "blob":
        _check_len(len(v), _bound(kind, 1, 0xFFFF), "blob bytes", ValueError)
        w.lp16(v)
    elif base == "key":
        if len(v) != 32:
            raise ValueError("a key is 32 bytes")
        w.bytes(v)
    elif base == "pairs":
        _check_len(len(v), _bound(kind, 1, MAX_LIST), "pairs", ValueError)
        w.u16(len(v))
        for k, val in v:
            _w(f"text:{_bound(kind, 2, 0xFFFF)}", w, k)
            _w(f"text:{_bound(kind, 3, 0xFFFF)}", w, val)
    elif base == "list":
        name, limit = _list_kind(kind)
        _check_len(len(v), limit, f"{name} records", ValueError)
        w.u16(len(v))
        for item in v:
            item._write(w)
    else:  # pragma: no cover - a typo in a FIELDS table
        raise AssertionError(kind)


def _text(r: Reader, limit: int, name: str) -> str:
    n = r.u16(name + " length")
    _check_len(n, limit, f"{name} bytes", DecodeError)
    raw = r.bytes(n, name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{name} is not UTF-8") from exc


def _r(kind: str, r: Reader, name: str) -> Any:
    base = kind.split(":", 1)[0]
    if base == "u8":
        return r.u8(name)
    if base == "u16":
        return r.u16(name)
    if base == "u32":
        return r.u32(name)
    if base == "u64":
        return r.u64(name)
    if base == "text":
        return _text(r, _bound(kind, 1, 0xFFFF), name)
    if base == "blob":
        n = r.u16(name + " length")
        _check_len(n, _bound(kind, 1, 0xFFFF), f"{name} bytes", DecodeError)
        return r.bytes(n, name)
    if base == "key":
        return r.bytes(32, name)
    if base == "pairs":
        n = r.u16(name + " count")
        _check_len(n, _bound(kind, 1, MAX_LIST), f"{name} entries", DecodeError)
        klen, vlen = _bound(kind, 2, 0xFFFF), _bound(kind, 3, 0xFFFF)
        return tuple((_text(r, klen, name + " key"), _text(r, vlen, name + " value")) for _ in range(n))
    if base == "list":
        sub_name, limit = _list_kind(kind)
        sub = _RECORDS[sub_name]
        n = r.u16(name + " count")
        _check_len(n, limit, f"{name} entries", DecodeError)
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
    FIELDS = ("key", NAME, ADDR, ADDR, "text:16", "u8", "text:64")
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

    FIELDS = (NAME, HOSTPORT, HOSTPORT, "blob:1024")
    name: str
    udp: str
    tcp: str
    ticket: bytes


@record
@dataclass(frozen=True, slots=True)
class NetworkInfo(_Fields):
    """`settings` are the network's owner-set options as text pairs: broadcast = on|off,
    broadcast_pps, broadcast_bps (per-sender rate limit), bridges (comma-separated member keys)."""

    FIELDS = (NAME, "key", "text:16", "u8", "u8", "u16", "list:MemberInfo", "pairs:16:32:4096")
    name: str
    owner: bytes
    mode: str
    locked: int
    approval: int
    max_members: int
    members: tuple[MemberInfo, ...]
    settings: tuple[tuple[str, str], ...] = ()

    def setting(self, name: str, default: str = "") -> str:
        for k, v in self.settings:
            if k == name:
                return v
        return default


# -- client -> server ---------------------------------------------------------
@message(1)
@dataclass(frozen=True, slots=True)
class Hello(Message):
    FIELDS = ("text:64", NAME, "text:256")
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

    FIELDS = ("u16", "pairs:64:64:256", f"list:Candidate:{MAX_CANDIDATES}")
    listen_port: int
    report: tuple[tuple[str, str], ...] = ()
    candidates: tuple[Candidate, ...] = ()


@message(3)
@dataclass(frozen=True, slots=True)
class Request(Message):
    FIELDS = ("u32", "text:32", "pairs:16:32:1024")
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

    FIELDS = (ADDR, ADDR, "u8", "u8", "text:64", f"pairs:64:{MAX_NAME_BYTES}:300")
    address4: str
    address6: str
    prefix4: int
    prefix6: int
    server_version: str
    relays: tuple[tuple[str, str], ...] = ()


@message(65)
@dataclass(frozen=True, slots=True)
class Netmap(Message):
    FIELDS = ("u64", "list:NetworkInfo", "u8")
    seq: int
    networks: tuple[NetworkInfo, ...]
    more: int = 0  # 1: another part with the same seq follows (see `split`)


@message(66)
@dataclass(frozen=True, slots=True)
class Delta(Message):
    """One network changed (`networks` holds it) or is gone for this client (`removed`)."""

    FIELDS = ("u64", "list:NetworkInfo", NAME, "u8")
    seq: int
    networks: tuple[NetworkInfo, ...]
    removed: str = ""
    more: int = 0  # 1: another part with the same seq follows (see `split`)


@message(67)
@dataclass(frozen=True, slots=True)
class PeerUp(Message):
    """Set up a tunnel. `candidates` are where the peer may be reached, best first (the server
    checked them: see Candidate); `nat` is the peer's "mapping/filtering" behaviour, the mapping
    as the server's own STUN service saw it (empty if unknown); `relays`
    are the relays the pair may meet at, best first (both sides get the same order), each with
    the pair's ticket for it; `side` says which end of the tickets we are."""

    FIELDS = ("key", NAME, ADDR, ADDR, f"list:Candidate:{MAX_CANDIDATES}", "text:64", "list:RelayOffer:16", "u8")
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

    FIELDS = ("key", "text:64")
    public_key: bytes
    reason: str


@message(69)
@dataclass(frozen=True, slots=True)
class Reply(Message):
    FIELDS = ("u32", "u8", "text:1024")
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
    """The last message on a connection. Reasons that a client acts on start with one of the
    prefixes below (free text follows); any other reason is shown to the user as it is."""

    FIELDS = ("text:1024",)
    reason: str

    REPLACED = "replaced"  # this key logged in again elsewhere; this connection lost
    SHUTDOWN = "server shutting down"  # come back soon


# -- large netmaps ------------------------------------------------------------------
def _size(rec) -> int:
    w = Writer()
    rec._write(w)
    return len(w.getvalue())


def split_networks(networks: tuple[NetworkInfo, ...], budget: int = PART_BUDGET - 64) -> list[tuple[NetworkInfo, ...]]:
    """Networks in parts that each encode within `budget` bytes; a network with many members is
    spread over several parts, each with the network's own fields and some of its members.
    Members are measured once, so the parts can be sent to many recipients."""
    parts: list[tuple[NetworkInfo, ...]] = []
    cur: list[NetworkInfo] = []
    used = 2
    for net in networks:
        head = _size(replace(net, members=()))
        chunk: list[MemberInfo] = []
        chunk_size = 0
        for m in net.members:
            ms = _size(m)
            if used + head + chunk_size + ms > budget and (chunk or cur):
                if chunk:
                    cur.append(replace(net, members=tuple(chunk)))
                parts.append(tuple(cur))
                cur, used, chunk, chunk_size = [], 2, [], 0
            chunk.append(m)
            chunk_size += ms
        if chunk or not net.members:
            cur.append(replace(net, members=tuple(chunk)))
            used += head + chunk_size
    parts.append(tuple(cur))
    return parts


def join_networks(parts: list[tuple[NetworkInfo, ...]]) -> tuple[NetworkInfo, ...]:
    """The inverse of `split_networks`: parts of one network become one NetworkInfo again."""
    merged: dict[str, NetworkInfo] = {}
    for part in parts:
        for net in part:
            old = merged.get(net.name)
            merged[net.name] = net if old is None else replace(net, members=old.members + net.members)
    return tuple(merged.values())


def frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return len(payload).to_bytes(2, "big") + payload
