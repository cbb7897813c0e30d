"""Peers and cryptokey routing: who a peer is, what it may send, where inner packets go. Sans I/O.

A `Peer` is one remote static key with its endpoint, its sessions (`current`
sends, `previous` still receives after a rekey, `next` waits for the
initiator's first data message), a pending handshake and a bounded queue of
packets waiting for a session. The `Tunnel` (hamachi.proto.tunnel) drives it.

Cryptokey routing (`Router`): an inner packet's destination address selects
the peer. Host routes (/32, /128, and every peer's own address) sit in a dict
keyed by the raw address bytes, so the common case is one dict lookup; other
prefixes are tried longest first. After decryption the inner source must map
back to the sending peer (`allowed_source`), or the packet is a spoof.

The routing answer is a tuple of peers (`route`), never a single peer, and the
key is pulled out of the packet by one function (`inner_destination`): a later
broadcast/multicast fan-out returns many peers, and a TAP (Ethernet) mode
swaps in a MAC-keyed extractor and table, with no change to callers.

Inner packet layouts used here (RFC 791 §3.1, RFC 8200 §3):

    IPv4: version/IHL at 0, source at 12..16, destination at 16..20
    IPv6: version at 0 (high nibble), source at 8..24, destination at 24..40
"""

from __future__ import annotations

import ipaddress
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from hamachi.crypto.noise import NoiseIK
from hamachi.crypto.session import Session

QUEUE_LIMIT = 1024
DIRECT_PROBE_INTERVAL = 10.0  # while relayed, try the direct candidates again after this long...

Addr = tuple[str, int]
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class PeerConfig:
    public_key: bytes
    addresses: tuple[Interface, ...] = ()
    endpoint: Addr | None = None
    keepalive: float = 0.0
    name: str = ""
    # Other addresses the peer may be reached at (LAN, port forward...): until a session is up,
    # handshakes go to all of them and the first to answer becomes the endpoint.
    candidates: tuple[Addr, ...] = ()
    # The peer is behind a symmetric NAT: also send each handshake to this many random ports of its
    # address (birthday-paradox probing; its side keeps many sockets open toward us).
    spray: int = 0


@dataclass(slots=True)
class _Pending:
    hs: NoiseIK
    index: int
    sent: float
    first: float
    mac1: bytes
    wire: bytes = b""
    relay_sent: bool = False
    relay_sent_at: float = 0.0
    probe_only: bool = False  # an upgrade probe from a working relayed session: direct candidates only


@dataclass(eq=False, slots=True)
class Peer:
    config: PeerConfig
    public_key: bytes
    endpoint: Addr | None
    mac1_key: bytes
    current: Session | None = None
    previous: Session | None = None
    next: Session | None = None
    pending: _Pending | None = None
    queue: deque = field(default_factory=lambda: deque(maxlen=QUEUE_LIMIT))
    last_timestamp: bytes = b""
    cookie: bytes | None = None
    cookie_time: float = 0.0
    last_handshake: float | None = None
    rtt: float | None = None  # seconds, from the last handshake we initiated (initiation -> response)
    last_sent: float = float("-inf")
    last_received: float = float("-inf")
    unanswered_since: float | None = None
    last_direct_probe: float = float("-inf")
    probe_interval: float = DIRECT_PROBE_INTERVAL  # while relayed: time between direct probes (backs off)
    relay_index: int = 0  # which of the peer's relays (in the server's order) we use when we need one
    last_heard: float = float("-inf")  # any authenticated message from the peer, on any path
    sprays: int = 0  # birthday-probe rounds sent since the peer was (re)configured
    rx_bytes: int = 0
    rx_packets: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    drops: Counter = field(default_factory=Counter)

    @property
    def name(self) -> str:
        return self.config.name


class Router:
    """Cryptokey routing table: inner address -> peers."""

    def __init__(self) -> None:
        self.exact: dict[bytes, Peer] = {}
        self.prefixes: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Peer]] = []

    def add(self, peer: Peer, addresses: Iterable[Interface]) -> None:
        for a in addresses:
            net = a.network if a.network.prefixlen < a.max_prefixlen else None
            if net is None:
                self.exact[a.ip.packed] = peer
            else:
                self.prefixes.append((net, peer))
                # The peer's own address is a host route too (fast path for the common case).
                self.exact[a.ip.packed] = peer
        self.prefixes.sort(key=lambda item: -item[0].prefixlen)

    def remove(self, peer: Peer) -> None:
        self.exact = {k: v for k, v in self.exact.items() if v is not peer}
        self.prefixes = [(n, p) for n, p in self.prefixes if p is not peer]

    def lookup(self, dst: bytes) -> Peer | None:
        peer = self.exact.get(dst)
        if peer is not None or not self.prefixes:
            return peer
        ip = ipaddress.ip_address(dst)
        for net, p in self.prefixes:
            if ip.version == net.version and ip in net:
                return p
        return None

    def route(self, packet: bytes) -> tuple[Peer, ...]:
        """Peers an inner packet goes to (one for unicast; a later fan-out gives many)."""
        dst = inner_destination(packet)
        if dst is None:
            return ()
        peer = self.lookup(dst)
        return (peer,) if peer is not None else ()

    def allowed_source(self, peer: Peer, packet: bytes) -> bool:
        src = inner_source(packet)
        return src is not None and self.lookup(src) is peer


def inner_destination(packet: bytes) -> bytes | None:
    if not packet:
        return None
    v = packet[0] >> 4
    if v == 4 and len(packet) >= 20:
        return packet[16:20]
    if v == 6 and len(packet) >= 40:
        return packet[24:40]
    return None


def inner_source(packet: bytes) -> bytes | None:
    if not packet:
        return None
    v = packet[0] >> 4
    if v == 4 and len(packet) >= 20:
        return packet[12:16]
    if v == 6 and len(packet) >= 40:
        return packet[8:24]
    return None
