"""The data-plane core: peers, handshakes, sessions, timers and cryptokey routing. Sans I/O.

The I/O shell feeds it inner packets read from the TUN (`send`) and UDP
datagrams (`receive`), calls `handle_timer(now)` when `next_timer()` says,
and sends whatever `datagrams_to_send()` returns. Nothing here reads a clock
or touches a socket.

Theory of operation (per peer), after WireGuard's timer design:

                     packet to send, no session
        IDLE ─────────────────────────────────────► HANDSHAKING ──response──► ESTABLISHED
         ▲                                           │    ▲  retransmit every           │
         │ no answer for REKEY_ATTEMPT_TIME          │    └─ REKEY_TIMEOUT (new e)       │
         └───────────────────────────────────────────┘                                  │
                   session older than REKEY_AFTER (initiator) / +10 s (responder),      │
                   or data sent with nothing heard back for KEEPALIVE+REKEY_TIMEOUT ────┘ (new handshake, old
                                                                                           session keeps working)

Sessions: `current` sends; `previous` still receives for a while after a
rekey, so no packet in flight is lost; the responder keeps a fresh session in
`next` until the initiator's first data message proves the initiator has it
(only then does it send with it). A session is dead after REJECT_AFTER.

Cryptokey routing: a packet's inner destination address selects the peer
(`Router.lookup`, exact host routes first, then longest prefix). After
decryption the inner source must belong to the sending peer, or the packet
is dropped as `spoofed_source`. The router answers "which peers" as a tuple,
so broadcast/multicast fan-out (many peers) and TAP mode (MAC-keyed
routes) plug in as other key extractors without changing callers.

Every drop has a named reason (see `hamachi.proto.drops`) and is counted;
nothing unauthenticated is ever answered, except a cookie reply to a
handshake whose mac1 proves the sender knows our public key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections import Counter
from collections.abc import Callable

from hamachi.crypto import cookie as ck
from hamachi.crypto.keys import KeyPair
from hamachi.crypto.noise import HandshakeError, NoiseIK
from hamachi.crypto.session import AEAD_IDS, AEAD_NAMES, Session
from hamachi.proto import drops as D
from hamachi.proto.lan import Lan
from hamachi.proto.peer import (  # noqa: F401  (re-exported: callers import them from here)
    DIRECT_PROBE_INTERVAL,
    QUEUE_LIMIT,
    Addr,
    Interface,
    Peer,
    PeerConfig,
    Router,
    _Pending,
    inner_destination,
    inner_source,
)
from hamachi.proto.ratelimit import RateLimiter
from hamachi.wire import lan as L
from hamachi.wire.codec import DecodeError
from hamachi.wire.transport import (
    DATA_HEADER_LEN,
    TAG_LEN,
    TYPE_COOKIE,
    TYPE_DATA,
    TYPE_INIT,
    TYPE_RESPONSE,
    CookieReply,
    HandshakeInit,
    HandshakeResponse,
)

PROLOGUE = b"hamachi data v1"
_DATA_BYTE = bytes([TYPE_DATA])
REKEY_AFTER = 120.0
REJECT_AFTER = 180.0
REKEY_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 10.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_AFTER_MESSAGES = 2**48  # a new session this often by count too (long before REJECT_AFTER_MESSAGES)
TAI64_BASE = 2**62 + 10
DIRECT_PROBE_MAX = 30.0  # while relayed, the direct probe interval doubles per failed probe, up to this
RELAY_AFTER = 1.0  # a handshake unanswered this long also goes through the relay
# Handshake initiations we send, whatever the server or a peer told us (a candidate list is
# someone else's claim; these caps bound what any of them can aim at one address):
PEER_HANDSHAKE_RATE, PEER_HANDSHAKE_BURST = 1.0, 5.0  # initiations per peer
DEST_HANDSHAKE_RATE, DEST_HANDSHAKE_BURST = 0.5, 4.0  # datagrams per destination ip:port
SPRAY_ROUNDS = 6  # birthday-probe rounds per peer configuration (one per handshake attempt), then no more


def is_relayed(addr: Addr | None) -> bool:
    """The I/O shell names "this peer, through its relay" with a pseudo-address relay:<session>."""
    return addr is not None and addr[0].startswith("relay:")



TAI64N_WHITENER = (1 << 24) - 1  # nanoseconds below 2^24 (~16.8 ms) are cleared, as WireGuard does


def tai64n(wall: float) -> bytes:
    """The handshake timestamp, coarsened so that an initiation does not reveal a precise clock."""
    sec = int(wall)
    return struct.pack(">QI", TAI64_BASE + sec, int((wall - sec) * 1e9) & ~TAI64N_WHITENER)


def _next_stamp(stamp: bytes) -> bytes:
    if not stamp:
        return b""
    sec, nano = struct.unpack(">QI", stamp)
    return struct.pack(">QI", sec, nano + 1) if nano + 1 < 10**9 else struct.pack(">QI", sec + 1, 0)


class Tunnel:
    """All peers of one local identity. See the module docstring."""

    def __init__(self, local: KeyPair, now: float, rand: Callable[[int], bytes], *, wall_offset: float = 0.0,
                 rekey_after: float = REKEY_AFTER, reject_after: float = REJECT_AFTER,
                 rekey_timeout: float = REKEY_TIMEOUT, handshake_rate: float = 20.0,
                 aead: str | tuple[str, ...] = "chacha20poly1305",
                 rekey_after_messages: int = REKEY_AFTER_MESSAGES):
        self.local = local
        self.rekey_after_messages = rekey_after_messages
        self.rand = rand
        self.wall_offset = wall_offset
        self._last_stamp = b""  # the last handshake timestamp sent (they only ever increase)
        self.rekey_after = rekey_after
        self.reject_after = reject_after
        self.rekey_timeout = rekey_timeout
        self.aead = aead  # the AEADs we allow, our preference first (a name, or a tuple of names)
        self.peers: dict[bytes, Peer] = {}
        self.router = Router()
        self.drops: Counter = Counter()
        self._index: dict[int, tuple[Peer, Session | _Pending]] = {}
        self._out: list[tuple[bytes, Addr]] = []
        self._cookies = ck.CookieChecker(local.public, rand)
        # Per source: a source over its rate must prove its address with a cookie (mac2). Globally:
        # past `handshake_rate * 10` initiations a second from anywhere (many spoofed sources),
        # everyone must. Cookie holders get their own per-source budget so a real address that
        # fetched a cookie still cannot force unlimited DH work.
        self._hs_limit = RateLimiter(rate=handshake_rate, burst=handshake_rate)
        self._hs_global = RateLimiter(rate=handshake_rate * 10, burst=handshake_rate * 10)
        self._hs_cookie_limit = RateLimiter(rate=handshake_rate, burst=handshake_rate)
        self._init_limit = RateLimiter(rate=PEER_HANDSHAKE_RATE, burst=PEER_HANDSHAKE_BURST, max_keys=16384)
        self._dest_limit = RateLimiter(rate=DEST_HANDSHAKE_RATE, burst=DEST_HANDSHAKE_BURST, max_keys=16384)
        self.started = now
        # LAN policy (broadcast copies, Ethernet frames); frames for TAP devices wait in `frames_in`
        # as (network id, frame) until the I/O shell writes them.
        self.lan = Lan(local.public)
        self.frames_in: list[tuple[bytes, bytes]] = []

    # -- configuration ---------------------------------------------------------
    def add_peer(self, cfg: PeerConfig) -> Peer:
        if cfg.public_key == self.local.public:
            raise ValueError("a peer cannot have our own public key")
        old = self.peers.get(cfg.public_key)
        if old is not None:
            self.remove_peer(cfg.public_key)
        peer = Peer(cfg, cfg.public_key, cfg.endpoint, ck.mac1_key(cfg.public_key))
        if old is not None:  # keep live sessions and counters across a reconfiguration
            for attr in ("current", "previous", "next", "last_timestamp", "last_handshake", "rtt", "rx_bytes",
                         "rx_packets", "tx_bytes", "tx_packets", "last_sent", "last_received"):
                setattr(peer, attr, getattr(old, attr))
            for s in (peer.current, peer.previous, peer.next):
                if s is not None:
                    self._index[s.local_index] = (peer, s)
            peer.endpoint = cfg.endpoint or old.endpoint
        self.peers[cfg.public_key] = peer
        self.router.add(peer, cfg.addresses)
        return peer

    def rename_peer(self, public_key: bytes, name: str) -> bool:
        """A member changed its nickname (the netmap says so): status and logs follow. True if changed."""
        peer = self.peers.get(public_key)
        if peer is None or peer.config.name == name:
            return False
        peer.config = dataclasses.replace(peer.config, name=name)
        return True

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self.router.remove(peer)
        self._index = {i: e for i, e in self._index.items() if e[0] is not peer}

    def set_endpoint(self, public_key: bytes, endpoint: Addr) -> None:
        peer = self.peers.get(public_key)
        if peer is not None:
            peer.endpoint = endpoint

    # -- outputs ---------------------------------------------------------------
    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    @property
    def aead(self) -> tuple[str, ...]:
        return self._aeads

    @aead.setter
    def aead(self, value: str | tuple[str, ...]) -> None:
        names = (value,) if isinstance(value, str) else tuple(value)
        if not names or any(n not in AEAD_IDS for n in names):
            raise ValueError(f"unknown AEAD in {names!r}; known: {', '.join(AEAD_IDS)}")
        self._aeads = names[:2]
        ids = [AEAD_IDS[n] for n in self._aeads] + [0]
        self._prefs = bytes([ids[0] << 4 | ids[1]])

    def _choose_aead(self, prefs: int) -> str | None:
        """Responder: the initiator's first choice among those we allow."""
        for wire_id in (prefs >> 4, prefs & 0x0F):
            name = AEAD_NAMES.get(wire_id)
            if name in self._aeads:
                return name
        return None

    def _drop(self, reason: str, peer: Peer | None = None, count: int = 1) -> None:
        self.drops[reason] += count
        if peer is not None:
            peer.drops[reason] += count

    # -- outbound --------------------------------------------------------------
    def route_peer(self, dst: bytes) -> Peer | None:
        return self.router.lookup(dst)

    def seal_for(self, peer: Peer, packets: list[bytes], now: float) -> list[bytes] | None:
        """Seal packets for one peer; None if they were queued awaiting a handshake."""
        s = peer.current
        if s is None or now - s.created >= self.reject_after or s.exhausted or peer.endpoint is None:
            if peer.endpoint is None:
                self._drop(D.NO_ENDPOINT, peer)
                return None
            q = peer.queue
            for p in packets:
                if len(q) == q.maxlen:
                    self._drop(D.QUEUE_FULL, peer)
                q.append(p)
            if peer.pending is None:
                self._initiate(peer, now)
            return None
        age = now - s.created
        due = self.rekey_after if s.initiator else self.rekey_after + 10  # the initiator rekeys first
        if peer.pending is None and (age >= due or s.send_counter >= self.rekey_after_messages):
            self._initiate(peer, now)
        out = s.seal_many(packets)
        n = 0
        for p in packets:
            n += len(p)
        peer.tx_bytes += n
        peer.tx_packets += len(packets)
        if peer.unanswered_since is None:
            peer.unanswered_since = now  # answered by data or a passive keepalive within KEEPALIVE_TIMEOUT
        peer.last_sent = now
        s.last_sent = now
        return out

    def group_copies(self, packet: bytes, now: float) -> list[tuple[Peer, bytes]]:
        """A broadcast/multicast packet from the TUN -> one LAN message per co-member (proto/lan.py)."""
        copies, reason = self.lan.group_copies(packet, self.peers, now)
        if reason is not None:
            self._drop(reason)
        peers = self.peers
        return [(peers[k], m) for k, m in copies]

    def frame_copies(self, network: bytes, frame: bytes, now: float) -> list[tuple[Peer, bytes]]:
        """An Ethernet frame from a TAP network's device -> the member(s) it goes to."""
        copies, reason = self.lan.frame_out(network, frame, self.peers, now)
        if reason is not None:
            self._drop(reason)
        peers = self.peers
        return [(peers[k], m) for k, m in copies]

    def send(self, packets: list[bytes], now: float) -> list[tuple[list[bytes], Addr]]:
        """Inner packets from the TUN -> sealed datagrams grouped per endpoint."""
        by_peer: dict[Peer, list[bytes]] = {}
        for p in packets:
            dst = inner_destination(p)
            peer = self.router.lookup(dst) if dst is not None else None
            if peer is None and dst is not None and self.lan.is_group(p):
                for cp, m in self.group_copies(p, now):
                    by_peer.setdefault(cp, []).append(m)
                continue
            if peer is None:
                self._drop(D.NO_ROUTE if dst is not None else D.MALFORMED_INNER)
                continue
            by_peer.setdefault(peer, []).append(p)
        result = []
        for peer, pkts in by_peer.items():
            sealed = self.seal_for(peer, pkts, now)
            if sealed:
                result.append((sealed, peer.endpoint))
        return result

    # -- inbound ---------------------------------------------------------------
    def receive(self, datagram: bytes, addr: Addr, now: float) -> list[bytes]:
        """One UDP datagram -> inner packets for the TUN (handshakes are handled here)."""
        if not datagram:
            self._drop(D.MALFORMED)
            return []
        t = datagram[0]
        if t == TYPE_DATA:
            inner: list[bytes] = []
            self.open_batch([datagram], addr, now, inner)
            return inner
        if t == TYPE_INIT:
            self._on_init(datagram, addr, now)
        elif t == TYPE_RESPONSE:
            self._on_response(datagram, addr, now)
        elif t == TYPE_COOKIE:
            self._on_cookie(datagram, now)
        else:
            self._drop(D.UNKNOWN_TYPE)
        return []

    def _receive_into(self, datagram: bytes, addr: Addr, now: float, inner: list[bytes]) -> None:
        inner.extend(self.receive(datagram, addr, now))

    def open_batch(self, datagrams: list[bytes], addr: Addr, now: float, inner: list[bytes],
                   other: Callable[[bytes, Addr, float, list[bytes]], None] | None = None) -> None:
        """Datagrams from one source (a GRO batch, or just one) -> authenticated inner packets
        appended to `inner`. Runs of data messages for one session are opened in one loop;
        anything else goes to `other` (the I/O shell's STUN and the like), by default to
        `receive()` (handshakes). Keepalives update the peer and add nothing."""
        if other is None:
            other = self._receive_into
        n = len(datagrams)
        i = 0
        index, exact = self._index, self.router.exact
        while i < n:
            d = datagrams[i]
            if d[:1] != _DATA_BYTE:
                other(d, addr, now, inner)
                i += 1
                continue
            if len(d) < DATA_HEADER_LEN + TAG_LEN:
                self._drop(D.MALFORMED)
                i += 1
                continue
            rx = d[4:8]
            j = i + 1
            while j < n and datagrams[j][4:8] == rx and datagrams[j][:1] == _DATA_BYTE and \
                    len(datagrams[j]) >= DATA_HEADER_LEN + TAG_LEN:
                j += 1
            run = datagrams[i:j]
            i = j
            entry = index.get(int.from_bytes(rx, "little"))
            if entry is None or not isinstance(entry[1], Session):
                self.drops[D.UNKNOWN_INDEX] += len(run)
                continue
            peer, sess = entry
            if now - sess.created >= self.reject_after:
                self._drop(D.SESSION_EXPIRED, peer, len(run))
                continue
            pts, replays, forged = sess.open_many(run)
            if replays:
                self._drop(D.REPLAY, peer, replays)
            if forged:
                self._drop(D.DECRYPT_FAILED, peer, forged)
            if not pts:
                continue
            if sess is peer.next:
                self._promote_next(peer)
            peer.last_heard = peer.last_received = sess.last_received = now
            peer.endpoint = addr
            peer.unanswered_since = None
            got = nbytes = 0
            for pt in pts:
                if not pt:
                    continue  # keepalive
                if pt[0] == L.TYPE_LAN:
                    if self._lan_in(peer, pt, now, inner):
                        got += 1
                        nbytes += len(pt)
                    continue
                # The peer's own address (an exact route) decides at once; prefixes and malformed
                # packets take Router.allowed_source.
                src = pt[12:16] if pt[0] >> 4 == 4 else pt[8:24]
                if exact.get(src) is not peer and not self.router.allowed_source(peer, pt):
                    self._drop(D.SPOOFED_SOURCE, peer)
                    continue
                inner.append(pt)
                got += 1
                nbytes += len(pt)
            peer.rx_bytes += nbytes
            peer.rx_packets += got

    def _lan_in(self, peer: Peer, pt: bytes, now: float, inner: list[bytes]) -> bool:
        """A LAN message from an authenticated peer: a group packet for the TUN, or a frame for a TAP."""
        try:
            msg = L.LanMessage.decode(pt)
        except DecodeError:
            self._drop(D.LAN_MALFORMED, peer)
            return False
        if msg.kind == L.KIND_GROUP:
            if not self.router.allowed_source(peer, msg.body):
                self._drop(D.SPOOFED_SOURCE, peer)
                return False
            reason = self.lan.accept_group(peer.public_key, msg, now)
            if reason is None:
                inner.append(msg.body)
                return True
        else:
            reason = self.lan.accept_frame(peer.public_key, msg, now)
            if reason is None:
                self.frames_in.append((msg.network, msg.body))
                return True
        self._drop(reason, peer)
        return False

    def _promote_next(self, peer: Peer) -> None:
        nxt = peer.next
        if peer.previous is not None:
            self._index.pop(peer.previous.local_index, None)
        peer.previous = peer.current
        peer.current = nxt
        peer.next = None

    # -- handshakes -----------------------------------------------------------
    def _new_index(self, peer: Peer, what: Session | _Pending | None = None) -> int:
        while True:
            idx = int.from_bytes(self.rand(4), "little")
            if idx not in self._index:
                return idx

    @staticmethod
    def _stamp(peer: Peer, body: bytes, now: float) -> bytes:
        """A handshake message with its mac1 (keyed by the peer's key) and mac2 (our cookie, if fresh)."""
        m1 = ck.mac1(peer.mac1_key, body)
        m2 = b"\x00" * ck.MAC_LEN
        if peer.cookie is not None and now - peer.cookie_time < ck.COOKIE_LIFETIME:
            m2 = ck.mac2(peer.cookie, body + m1)
        return body + m1 + m2

    def _initiate(self, peer: Peer, now: float, first: float | None = None, lost: bool = False,
                  probe: bool = False) -> None:
        if peer.endpoint is None and peer.config.candidates:
            peer.endpoint = peer.config.candidates[0]
        if peer.endpoint is None:
            self._drop(D.NO_ENDPOINT, peer)
            return
        # A rekey on a working path goes to an address the peer proved it holds; anything else goes to
        # candidates someone else told us about, so it is capped (per peer here, per destination below).
        rekey = peer.current is not None and not is_relayed(peer.endpoint) and not lost and not probe
        if not rekey and not self._init_limit.allow(peer.public_key, now):
            self._drop(D.HANDSHAKE_CAPPED, peer)
            return
        if peer.pending is not None:
            self._index.pop(peer.pending.index, None)
        idx = self._new_index(peer)
        hs = NoiseIK.initiator(self.local, peer.public_key, PROLOGUE)
        # Coarse, yet strictly increasing: two initiations within one 16.8 ms step must not look
        # stale to the responder, so the second takes the last one plus a nanosecond.
        stamp = max(tai64n(now + self.wall_offset), _next_stamp(self._last_stamp))
        self._last_stamp = stamp
        noise = hs.write_message(stamp + self._prefs)
        wire = self._stamp(peer, HandshakeInit(idx, noise).body(), now)
        pending = _Pending(hs, idx, now, now if first is None else first, wire[-2 * ck.MAC_LEN : -ck.MAC_LEN], wire)
        peer.pending = pending
        self._index[idx] = (peer, pending)
        direct = [c for c in (peer.endpoint, peer.config.endpoint, *peer.config.candidates)
                  if c is not None and not is_relayed(c)]
        direct = list(dict.fromkeys(direct))
        if probe:
            targets = direct  # looking for a way back to direct; the relayed session keeps working meanwhile
            pending.probe_only = True
        elif rekey:
            targets = [peer.endpoint]  # a plain rekey on a working path
        else:
            targets = direct  # connecting, rekeying a relayed session, or the path died: direct now,
            # the relay after RELAY_AFTER
        if not targets:
            targets = self._relay_targets(peer)
            pending.relay_sent = True
        peer.last_direct_probe = now
        for t in targets:
            if rekey or is_relayed(t) or self._dest_limit.allow(t, now):
                self._out.append((wire, t))
            else:
                self._drop(D.HANDSHAKE_CAPPED, peer)
        if peer.config.spray and peer.current is None and peer.endpoint is not None and \
                not is_relayed(peer.endpoint) and peer.sprays < SPRAY_ROUNDS:
            peer.sprays += 1
            host = peer.endpoint[0]
            raw = self.rand(2 * peer.config.spray)
            for i in range(peer.config.spray):
                port = 1024 + int.from_bytes(raw[2 * i : 2 * i + 2], "big") % (65536 - 1024)
                self._out.append((wire, (host, port)))
        peer.last_sent = now

    @staticmethod
    def _relays(peer: Peer) -> list:
        """The peer's relays, in the order the server gave them (the same order on both sides)."""
        return list(dict.fromkeys(c for c in (peer.config.endpoint, *peer.config.candidates) if is_relayed(c)))

    def _relay_targets(self, peer: Peer) -> list:
        if is_relayed(peer.endpoint):
            return [peer.endpoint]
        relays = self._relays(peer)
        return [relays[peer.relay_index % len(relays)]] if relays else []

    def relay_ready(self, relay: Addr, now: float) -> None:
        """A relay session just got bound: a handshake that already went to it (and was probably
        dropped there, the other side not bound yet) goes again now, not at its next retransmit."""
        for peer in self.peers.values():
            p = peer.pending
            if p is not None and p.relay_sent and not p.probe_only and relay in self._relay_targets(peer):
                self._out.append((p.wire, relay))

    def _next_relay(self, peer: Peer) -> None:
        """The relay we used stopped answering: move to the next one (the peer does the same)."""
        relays = self._relays(peer)
        if len(relays) < 2:
            return
        cur = self._relay_targets(peer)[0]
        peer.relay_index = (relays.index(cur) + 1 if cur in relays else peer.relay_index + 1) % len(relays)
        if is_relayed(peer.endpoint):
            peer.endpoint = relays[peer.relay_index]

    def _on_init(self, data: bytes, addr: Addr, now: float) -> None:
        try:
            msg = HandshakeInit.decode(data)
        except DecodeError:
            self._drop(D.MALFORMED)
            return
        body = msg.body()
        if not self._cookies.check_mac1(body, msg.mac1):
            self._drop(D.BAD_MAC1)
            return
        source = _source_bytes(addr)
        under_load = not self._hs_limit.allow(addr[0], now)
        under_load = not self._hs_global.allow(None, now) or under_load
        if under_load:
            # Under load: no DH without a cookie proving the source address is real.
            if not self._cookies.check_mac2(body + msg.mac1, msg.mac2, source, now):
                nonce, enc = self._cookies.make_reply(msg.mac1, source, now)
                self._out.append((CookieReply(msg.sender, nonce, enc).encode(), addr))
                self._drop(D.COOKIE_SENT)
                return
            if not self._hs_cookie_limit.allow(addr[0], now):
                self._drop(D.RATE_LIMITED)
                return
        hs = NoiseIK.responder(self.local, PROLOGUE)
        try:
            payload = hs.read_message(msg.noise)
        except HandshakeError:
            self._drop(D.HANDSHAKE_FAILED)
            return
        peer = self.peers.get(hs.remote_static)
        if peer is None:
            self._drop(D.UNKNOWN_PEER)
            return
        timestamp = payload[:12]
        if timestamp <= peer.last_timestamp:
            self._drop(D.STALE_TIMESTAMP, peer)
            return
        aead = self._choose_aead(payload[12])
        if aead is None:
            self._drop(D.NO_COMMON_CIPHER, peer)
            return
        peer.last_timestamp = timestamp
        peer.last_heard = now
        idx = self._new_index(peer)
        wire = self._stamp(peer, HandshakeResponse(idx, msg.sender, hs.write_message(bytes([AEAD_IDS[aead]]))).body(),
                           now)
        send, recv = hs.split()
        session = Session(send.k, recv.k, idx, msg.sender, now, initiator=False, aead=aead)
        if peer.next is not None:
            self._index.pop(peer.next.local_index, None)
        peer.next = session
        self._index[idx] = (peer, session)
        peer.endpoint = addr
        peer.last_handshake = now
        if not is_relayed(addr):
            peer.probe_interval = DIRECT_PROBE_INTERVAL
        self._out.append((wire, addr))
        peer.last_sent = now

    def _on_response(self, data: bytes, addr: Addr, now: float) -> None:
        try:
            msg = HandshakeResponse.decode(data)
        except DecodeError:
            self._drop(D.MALFORMED)
            return
        if not self._cookies.check_mac1(msg.body(), msg.mac1):
            self._drop(D.BAD_MAC1)
            return
        entry = self._pending_for(msg.receiver)
        if entry is None:
            return
        peer, pending = entry
        try:
            payload = pending.hs.read_message(msg.noise)
        except HandshakeError:
            self._drop(D.HANDSHAKE_FAILED, peer)
            return
        aead = AEAD_NAMES.get(payload[0])
        if aead not in self._aeads:  # the responder picked one we did not offer
            self._drop(D.NO_COMMON_CIPHER, peer)
            return
        send, recv = pending.hs.split()
        session = Session(send.k, recv.k, pending.index, msg.sender, now, initiator=True, aead=aead)
        self._index[pending.index] = (peer, session)
        if peer.previous is not None:
            self._index.pop(peer.previous.local_index, None)
        # A `next` session from a crossing initiation stays: the peer may already be sending with it.
        peer.previous = peer.current
        peer.current = session
        peer.pending = None
        peer.last_heard = now
        peer.rtt = now - (pending.relay_sent_at if is_relayed(addr) and pending.relay_sent_at else pending.sent)
        if not is_relayed(addr):
            peer.probe_interval = DIRECT_PROBE_INTERVAL
        peer.endpoint = addr
        peer.last_handshake = now
        peer.last_received = now
        peer.unanswered_since = None
        queued = list(peer.queue)
        peer.queue.clear()
        # The responder may send only after it hears from us on the new session.
        for d in session.seal_many(queued or [b""]):
            self._out.append((d, addr))
        if queued:
            peer.tx_packets += len(queued)
            peer.tx_bytes += sum(len(p) for p in queued)
        peer.last_sent = now

    def _pending_for(self, receiver: int) -> tuple[Peer, _Pending] | None:
        """Our handshake in flight that a response or cookie names; None (counted) if there is none."""
        entry = self._index.get(receiver)
        if entry is None or not isinstance(entry[1], _Pending):
            self._drop(D.UNKNOWN_INDEX)
            return None
        return entry  # type: ignore[return-value]

    def _on_cookie(self, data: bytes, now: float) -> None:
        try:
            msg = CookieReply.decode(data)
        except DecodeError:
            self._drop(D.MALFORMED)
            return
        entry = self._pending_for(msg.receiver)
        if entry is None:
            return
        peer, pending = entry
        cookie = ck.open_cookie(peer.public_key, msg.nonce, msg.cookie, pending.mac1)
        if cookie is None:
            self._drop(D.BAD_COOKIE, peer)
            return
        peer.cookie = cookie
        peer.cookie_time = now

    # -- timers ----------------------------------------------------------------
    def _keepalive(self, peer: Peer, now: float) -> None:
        s = peer.current
        if s is None or peer.endpoint is None or now - s.created >= self.reject_after:
            if peer.pending is None and peer.endpoint is not None:
                self._initiate(peer, now)
            return
        self._out.append((s.seal(b""), peer.endpoint))
        peer.last_sent = now

    def handle_timer(self, now: float) -> None:
        for peer in list(self.peers.values()):
            p = peer.pending
            # (An upgrade probe from a young relayed session stays direct-only; a due rekey may use the relay.)
            # Only when nothing at all came back: a crossing handshake that completed directly must
            # not drag both sides onto the relay.
            if p is not None and not p.relay_sent and now - p.sent >= RELAY_AFTER and peer.last_heard < p.sent \
                    and not (p.probe_only and peer.current is not None
                             and now - peer.current.created < self.rekey_after):
                p.relay_sent = True  # punching has not worked within a second: start on the relay too
                p.relay_sent_at = now
                for t in self._relay_targets(peer):
                    self._out.append((p.wire, t))
            if p is not None and now - p.sent >= self.rekey_timeout:
                if p.probe_only or now - p.first >= REKEY_ATTEMPT_TIME:  # a failed probe waits for the next
                    if p.probe_only:
                        peer.probe_interval = min(peer.probe_interval * 2, DIRECT_PROBE_MAX)
                    self._index.pop(p.index, None)
                    peer.pending = None
                    for _ in peer.queue:
                        self._drop(D.HANDSHAKE_TIMEOUT, peer)
                    peer.queue.clear()
                else:
                    if p.relay_sent and peer.last_heard < p.relay_sent_at:
                        self._next_relay(peer)  # not even the relay answered: try the next one
                    self._initiate(peer, now, first=p.first, lost=True)
            for attr in ("current", "previous", "next"):
                s = getattr(peer, attr)
                if s is not None and now - s.created >= self.reject_after:
                    self._index.pop(s.local_index, None)
                    setattr(peer, attr, None)
            if (peer.pending is None or peer.pending.probe_only) and peer.unanswered_since is not None and \
                    now - peer.unanswered_since >= KEEPALIVE_TIMEOUT + self.rekey_timeout:
                peer.unanswered_since = None
                if is_relayed(peer.endpoint):
                    self._next_relay(peer)  # the relay died (or lost our session): the next one
                self._initiate(peer, now, lost=True)
            if peer.pending is None and peer.current is not None and is_relayed(peer.endpoint) and \
                    now - peer.last_direct_probe >= peer.probe_interval and \
                    any(not is_relayed(c) for c in (*peer.config.candidates, peer.config.endpoint) if c):
                self._initiate(peer, now, probe=True)
            ka = peer.config.keepalive
            if ka > 0 and now - peer.last_sent >= ka and peer.endpoint is not None:
                self._keepalive(peer, now)
            elif peer.current is not None and peer.last_received > peer.last_sent and \
                    now - peer.last_received >= KEEPALIVE_TIMEOUT:
                self._keepalive(peer, now)  # passive keepalive: acknowledge that we are alive

    def next_timer(self) -> float | None:
        deadlines = []
        for peer in self.peers.values():
            if peer.pending is not None:
                deadlines.append(peer.pending.sent + self.rekey_timeout)
                if not peer.pending.relay_sent and self._relay_targets(peer):
                    deadlines.append(peer.pending.sent + RELAY_AFTER)
            if peer.config.keepalive > 0 and peer.endpoint is not None:
                deadlines.append(peer.last_sent + peer.config.keepalive)
            if peer.current is not None:
                deadlines.append(peer.current.created + self.reject_after)
                if peer.last_received > peer.last_sent:
                    deadlines.append(peer.last_received + KEEPALIVE_TIMEOUT)
            if peer.unanswered_since is not None:
                deadlines.append(peer.unanswered_since + KEEPALIVE_TIMEOUT + self.rekey_timeout)
        return min(deadlines) if deadlines else None

    # -- introspection -------------------------------------------------------
    def stats(self, now: float) -> dict:
        peers = []
        for peer in self.peers.values():
            peers.append({
                "name": peer.name,
                "public_key": _b64(peer.public_key),
                "addresses": [str(a) for a in peer.config.addresses],
                "endpoint": _fmt_addr(peer.endpoint),
                "path": ("none" if not peer.endpoint else "connecting" if peer.current is None
                         else "relayed" if is_relayed(peer.endpoint) else "direct"),
                "rtt_ms": None if peer.rtt is None else round(peer.rtt * 1000, 2),
                "cipher": peer.current.aead if peer.current is not None else None,
                "session": peer.current is not None,
                "last_handshake_ago": None if peer.last_handshake is None else round(now - peer.last_handshake, 1),
                "rx_bytes": peer.rx_bytes, "rx_packets": peer.rx_packets,
                "tx_bytes": peer.tx_bytes, "tx_packets": peer.tx_packets,
                "drops": dict(peer.drops),
            })
        return {"peers": peers, "drops": dict(self.drops)}


def _source_bytes(addr: Addr) -> bytes:
    host, port = addr[0], addr[1]
    try:
        return ipaddress.ip_address(host).packed + port.to_bytes(2, "big")
    except ValueError:
        return host.encode() + port.to_bytes(2, "big")


def _b64(key: bytes) -> str:
    from hamachi.crypto.keys import encode_key

    return encode_key(key)


def _fmt_addr(addr: Addr | None) -> str | None:
    if addr is None:
        return None
    if is_relayed(addr):
        return addr[0]  # relay:<session id>
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
