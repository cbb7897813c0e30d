"""The relay's forwarding table, sans I/O.

A session is created by the first valid Bind for a ticket, and each side
(peer a, peer b) is bound to the transport endpoint it binds from (a UDP
address or a TCP connection: endpoints are opaque, hashable values from the
I/O shell, so a UDP peer can talk to a TCP peer). Data from a bound endpoint
goes to the other side's endpoint, nowhere else.

    Bind(ticket ok) ──> side bound, Bound sent back ──> Data flows both ways
    no traffic for idle_timeout ──> session forgotten

Every drop has a reason: malformed, forged_ticket, expired_ticket, not_bound,
peer_not_bound, oversized, rate_limited, flood, denied (a source on the relay's
deny-list, checked after the ticket so strangers learn nothing). Nothing unauthenticated is
answered: only a valid ticket's Bind gets a reply.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

from hamachi.crypto.ticket import Ticket
from hamachi.proto.policy import DenyList
from hamachi.proto.ratelimit import RateLimiter
from hamachi.wire import relay as R
from hamachi.wire.codec import DecodeError


@dataclass
class _Bucket:
    rate: float
    tokens: float
    last: float

    def take(self, n: int, now: float) -> bool:
        if self.rate <= 0:
            return True
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


@dataclass
class RelaySession:
    ticket: Ticket
    ends: list = field(default_factory=lambda: [None, None])
    last_active: float = 0.0
    bytes: int = 0
    bucket: _Bucket | None = None


class RelayTable:
    def __init__(self, ticket_key: bytes, *, idle_timeout: float = 60.0, session_rate: int = 0,
                 account_rate: int = 0, binds_per_second: float = 20.0, deny: DenyList | None = None):
        self.key = ticket_key
        self.idle_timeout = idle_timeout
        self.session_rate = session_rate
        self.account_rate = account_rate
        self.sessions: dict[bytes, RelaySession] = {}
        # (endpoint, session id) -> side: one client socket may carry sessions with many peers.
        self.by_end: dict[tuple[Hashable, bytes], int] = {}
        self.bound_ends: Counter = Counter()
        self.accounts: dict[str, _Bucket] = {}
        self.drops: Counter = Counter()
        self.deny = deny or DenyList()
        self.forwarded = 0
        self.forwarded_bytes = 0
        self._binds = RateLimiter(rate=binds_per_second, burst=binds_per_second)

    def handle(self, end: Hashable, data: bytes, now: float, wall: float, source_ip: str = "") -> list:
        """One message from `end` -> [(endpoint, bytes to send there)]."""
        t = data[0] if data else -1
        if t == R.TYPE_DATA:
            return self._data(end, data, now)
        if t == R.TYPE_BIND:
            return self._bind(end, data, now, wall, source_ip or str(end))
        if t == R.TYPE_PING:
            try:
                ping = R.Ping.decode(data)
            except DecodeError:
                self.drops["malformed"] += 1
                return []
            if not self.bound_ends[end] or ping.pong:
                self.drops["not_bound"] += 1
                return []
            return [(end, R.Ping(1, ping.nonce).encode())]
        self.drops["malformed"] += 1
        return []

    def _bind(self, end, data: bytes, now: float, wall: float, source_ip: str) -> list:
        if not self._binds.allow(source_ip, now):
            self.drops["flood"] += 1
            return []
        try:
            bind = R.Bind.decode(data)
            ticket = Ticket.decode(bind.ticket, self.key)
        except DecodeError as exc:
            self.drops["forged_ticket" if "MAC" in str(exc) else "malformed"] += 1
            return []
        if ticket.expires < wall:
            self.drops["expired_ticket"] += 1
            return []
        if self.deny.match(source_ip, "relay") is not None:
            self.drops["denied"] += 1
            return []
        s = self.sessions.get(ticket.session_id)
        if s is None or s.ticket != ticket:
            if s is not None:  # same id, different names: never let one ticket hijack another session
                self.drops["forged_ticket"] += 1
                return []
            rate = ticket.rate or self.session_rate
            s = RelaySession(ticket, bucket=_Bucket(rate, rate, now) if rate else None)
            self.sessions[ticket.session_id] = s
        old = s.ends[bind.side]
        if old != end:
            if old is not None:  # the peer moved (new address or a new TCP connection)
                self._unbind(old, ticket.session_id)
            self.bound_ends[end] += 1
        s.ends[bind.side] = end
        s.last_active = now
        self.by_end[(end, ticket.session_id)] = bind.side
        return [(end, R.Bound(ticket.session_id).encode())]

    def _unbind(self, end, sid: bytes) -> None:
        if self.by_end.pop((end, sid), None) is not None:
            self.bound_ends[end] -= 1
            if self.bound_ends[end] <= 0:
                del self.bound_ends[end]

    def _data(self, end, data: bytes, now: float) -> list:
        if len(data) > R.MAX_PAYLOAD + 9:
            self.drops["oversized"] += 1
            return []
        sid = data[1:9]
        side = self.by_end.get((end, sid))
        if side is None:
            self.drops["not_bound"] += 1
            return []
        s = self.sessions[sid]
        other = s.ends[1 - side]
        if other is None:
            self.drops["peer_not_bound"] += 1
            return []
        n = len(data)
        if s.bucket is not None and not s.bucket.take(n, now):
            self.drops["rate_limited"] += 1
            return []
        if self.account_rate and s.ticket.account:
            acct = self.accounts.setdefault(s.ticket.account, _Bucket(self.account_rate, self.account_rate, now))
            if not acct.take(n, now):
                self.drops["rate_limited"] += 1
                return []
        s.last_active = now
        s.bytes += n
        self.forwarded += 1
        self.forwarded_bytes += n
        return [(other, data)]

    def expire(self, now: float) -> int:
        gone = [sid for sid, s in self.sessions.items() if now - s.last_active > self.idle_timeout]
        for sid in gone:
            s = self.sessions.pop(sid)
            for e in s.ends:
                if e is not None:
                    self._unbind(e, sid)
        return len(gone)
