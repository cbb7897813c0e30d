"""The control server's logic, sans I/O: logins, networks, netmap sync and presence.

The I/O shell (io/control.py) completes the Noise handshake, then calls
`connect(conn, public_key, source, now)`, `receive(conn, message, now)` for
every decoded message, `disconnect(conn, now)` when the stream ends, and
`handle_timer(now)` about once a second. What to send comes out of
`outbox()` as (conn, message) pairs; a `Close` message means "send it, then
close that connection".

Per connection:

    LOGIN --Hello--> DISCOVERY --Discovery--> SYNC (Netmap, then Deltas; Requests; Pings)
      any phase: a message that does not belong there -> Close("protocol violation: ...")
      no message for IDLE_TIMEOUT -> the client is lost: its peers hear PeerDown("lost")

Presence: when a member comes online, every online member sharing a network
with it gets PeerUp (key, addresses, endpoint) and it gets PeerUp for each of
them. Leaving, eviction or logout sends PeerDown to members that no longer
share any network with it. Clients that share no network never learn of each
other. A lost connection is debounced: the member stays online ("lingering")
for `presence_debounce` seconds, and if it logs in again meanwhile (on this
node or another) its peers never see it go offline.

Cluster (N nodes, one database): `online` holds every member online anywhere.
Members on other nodes are `Conn`s with `node` set and no stream; what is
sent to them comes out of `cluster_outbox()` as ("msg", node, key, message)
for the I/O shell to forward, and presence changes as ("up", key, info) and
("down", key, reason). The node where a change happens computes everything
about it once (peers, relay tickets, deltas); the other nodes only deliver,
fed through `cluster_event()`:

    up(key, node, info)      key is online on node (replaces any local or lingering conn)
    down(key, node)          key went offline there (its PeerDowns were already sent)
    msg(key, message)        deliver to our local conn for key (a Delta gets our seq)
    node_dead(node, adopter) the adopter takes that node's members over as lingering
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from hamachi.config import BROADCAST_BPS_RANGE, BROADCAST_PPS_RANGE
from hamachi.crypto import password as pw
from hamachi.crypto.keys import KeyError_, decode_key, encode_key
from hamachi.crypto.ticket import Ticket
from hamachi.proto import candidates as cand
from hamachi.proto import policy as P
from hamachi.proto.ratelimit import GuessThrottle, RateLimiter
from hamachi.store.protocol import NetworkRecord, Store, StoreError
from hamachi.wire import control as M

log = logging.getLogger("hamachi.server")
IDLE_TIMEOUT = 45.0
ENFORCE_INTERVAL = 5.0  # bans and suspensions made on another node apply here within this
TICKET_LIFETIME = 86400.0
SERVER_VERSION = "hamachi/0.1"
MAX_NAME = 64
MAX_MEMBERS = 65535  # what NetworkInfo.max_members (u16) carries
MAX_PASSWORD = 256
# Requests (and resyncs) each client may make: a sustained rate and a burst. Pings are cheap and
# not counted; anything over the budget is refused with a reply, never queued.
REQUEST_RATE, REQUEST_BURST = 50.0, 100.0


@dataclass(frozen=True)
class RelayInfo:
    """A relay the server may hand out: where it listens and the key tickets for it are made with."""

    name: str
    udp: str
    tcp: str
    ticket_key: bytes


@dataclass
class Conn:
    id: object
    public_key: bytes
    source: tuple[str, int]
    phase: str = "login"
    nickname: str = ""
    candidates: tuple[M.Candidate, ...] = ()  # checked by the server (proto/candidates.py), best first
    mapping: str = ""  # the NAT mapping the server's own STUN service observed ("" unknown)
    last_seen: float = 0.0
    seq: int = 0
    report: dict = field(default_factory=dict)
    node: str = ""  # "" = a stream on this node; else the cluster node the member is on
    lost_at: float | None = None  # lingering: the stream is gone, PeerDown is held back until debounce

    @property
    def local(self) -> bool:
        return not self.node and self.lost_at is None
    since: float = 0.0

    @property
    def endpoint(self) -> str:
        """The best candidate as text (what the netmap shows)."""
        return str(self.candidates[0]) if self.candidates else ""


def _candidates_of(info: dict) -> tuple[M.Candidate, ...]:
    """Candidates another node published (already checked there); anything malformed is skipped."""
    out = []
    for item in list(info.get("candidates") or [])[:16]:
        try:
            kind, ip, port = item
            out.append(M.Candidate(int(kind), str(ip), int(port)))
        except (TypeError, ValueError):
            continue
    return tuple(out)


class RequestRefused(Exception):
    """A request a user made that the server refuses; the text reaches the user as one line."""


def _valid_name(name: str, what: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise RequestRefused(f"{what} must be 1-{MAX_NAME} printable characters")
    return name


def _count_arg(text: str, default: int, what: str, most: int) -> int:
    if not text:
        return default
    if not text.isdigit() or len(text) > 6 or not 1 <= int(text) <= most:
        raise RequestRefused(f"{what} must be a whole number from 1 to {most}")
    return int(text)


class ControlServer:
    def __init__(self, store: Store, now: float, *, registration: str = "open", default_max_members: int = 256,
                 prefix4: int = 10, prefix6: int = 48, login_rate: float = 5.0,
                 hash_token: Callable[[str], bytes] | None = None, wall_offset: float = 0.0,
                 relays: tuple[RelayInfo, ...] = (), presence_debounce: float = 0.0, node: str = "",
                 stun_observed: cand.Observed | None = None,
                 plans: P.Plans | None = None, deny: tuple[P.DenyEntry, ...] = ()):
        self.store = store
        self.presence_debounce = presence_debounce
        self.node = node
        self.stun_observed = stun_observed  # txid -> source its STUN service saw (None: no STUN service)
        self.relays = relays
        self.now = now
        self.wall_offset = wall_offset  # token expiry is wall-clock time; `now` is monotonic
        self.registration = registration
        self.default_max_members = default_max_members
        self.prefix4 = prefix4
        self.prefix6 = prefix6
        self.conns: dict[object, Conn] = {}
        self.online: dict[bytes, Conn] = {}
        self._out: list[tuple[object, M.Message]] = []
        self._cluster_out: list[tuple] = []
        self._login_limit = RateLimiter(rate=login_rate, burst=max(1.0, login_rate * 2))
        self.hash_token = hash_token or pw.hash_token
        self.guesses = GuessThrottle()  # wrong network passwords (party join codes), per source address
        # ... and per client key and per network (looser: a stranger must not lock a network's owner out)
        self.guesses_by_key = GuessThrottle(global_rate=1e9, global_burst=1e9)
        self.guesses_by_net = GuessThrottle(free=10, cap=30.0, global_rate=1e9, global_burst=1e9)
        self._request_limit = RateLimiter(rate=REQUEST_RATE, burst=REQUEST_BURST)
        # Slow hashes the I/O shell computed off the core thread for the request being handled:
        # {("verify", stored_hash, password): bool, ("hash", password): stored_hash}
        self.prepared: dict = {}
        self.stats = {"logins": 0, "refused_logins": 0, "protocol_errors": 0, "lost": 0}
        self.refusals: Counter = Counter()  # by Refusal.code
        self.logouts: Counter = Counter()  # by reason
        # Unlimited unless the operator configures plans (the daemon always passes its config's).
        self.plans = plans or P.Plans({"unlimited": P.Plan("unlimited", 65535, 1 << 20, 1 << 20)}, "unlimited")
        self._config_deny = tuple(deny)
        self.deny = P.DenyList()
        # A flood of refusals must not become a flood of fsyncs: the audit log keeps a sample.
        self._audit_limit = RateLimiter(rate=2.0, burst=20.0)
        self._enforced_at = now
        self.reload_policy(self.plans, self._config_deny)

    # -- operator policy ---------------------------------------------------------
    def reload_policy(self, plans: P.Plans, deny: tuple[P.DenyEntry, ...]) -> None:
        """New plans and config deny-list (SIGHUP), merged with the bans in the store."""
        self.plans = plans
        self._config_deny = tuple(deny)
        bans = []
        for b in self.store.bans():
            try:
                bans.append(P.DenyEntry(P.parse_cidr(b.cidr), P.SCOPES, b.reason, "admin"))
            except ValueError:
                continue
        self.deny = P.DenyList(bans + list(self._config_deny))

    def wall(self, now: float) -> float:
        return now + self.wall_offset

    def audit(self, actor: str, action: str, subject: str, detail: str, now: float) -> None:
        self.store.add_audit(self.wall(now), actor, action, subject, detail)

    def refused(self, refusal: P.Refusal, subject: str, now: float) -> str:
        """Count, log and (sampled) audit one refusal; returns the line the user reads."""
        self.refusals[refusal.code] += 1
        line = refusal.line()
        log.info("refused %s: %s (%s)", subject, line, refusal.code)
        if self._audit_limit.allow(refusal.code, now):
            self.audit("server", "refused:" + refusal.code, subject, line, now)
        return line

    def account_of(self, key: bytes) -> tuple[str, P.Plan]:
        """The account a key belongs to (its own, key:<key>, if attached to none) and its plan."""
        name = self.store.account_of(key)
        if name is None:
            return P.key_account(key), self.plans.get(None)
        acct = self.store.get_account(name)
        return name, self.plans.get(acct.plan if acct else None)

    def suspension(self, key: bytes) -> str | None:
        """The reason `key` (or its account) is suspended, or None."""
        subjects = {"key:" + encode_key(key)}
        name = self.store.account_of(key)
        if name is not None:
            subjects.add("account:" + name)
        for rec in self.store.suspensions():
            if rec.subject in subjects:
                return rec.reason
        return None

    def kick(self, key: bytes, line: str, peer_reason: str, now: float) -> bool:
        """Disconnect an online client at once (suspension, ban); its peers drop their tunnels.
        A client on another cluster node is told through that node."""
        conn = self.online.get(key) or next((c for c in self.conns.values() if c.public_key == key), None)
        if conn is None:
            return False
        if conn.node:
            self._send(conn, M.Close(line))
        elif conn.lost_at is not None:
            self._went_offline(conn, peer_reason)  # lingering after a drop: no stream to close
        else:
            self._out.append((conn.id, M.Close(line)))
            self.disconnect(conn.id, now, reason=peer_reason)
        return True

    def enforce(self, now: float) -> list[bytes]:
        """Re-read bans and suspensions from the store (another cluster node, or an admin, may have
        changed them) and disconnect local clients they now cover. Returns the keys disconnected."""
        self._enforced_at = now
        self.reload_policy(self.plans, self._config_deny)
        sus = {r.subject: r.reason for r in self.store.suspensions()}
        why: dict[bytes, str] = {}
        for subject, reason in sus.items():
            if subject.startswith("account:"):
                for k in self.store.account_keys(subject[8:]):
                    why.setdefault(k, reason)
            else:
                try:
                    why.setdefault(decode_key(subject[4:]), reason)
                except KeyError_:
                    continue
        kicked = []
        for key, oc in list(self.online.items()):
            if not oc.local:
                continue
            if key in why:
                line = self.refused(P.suspension_refusal(why[key]), oc.nickname, now)
                peer_reason = "suspended"
            elif (entry := self.deny.match(oc.source[0], "login")) is not None:
                line = self.refused(P.deny_refusal(entry, "login"), oc.nickname, now)
                peer_reason = "banned"
            else:
                continue
            self.kick(key, line, peer_reason, now)
            kicked.append(key)
        return kicked

    # -- outputs -----------------------------------------------------------------
    def outbox(self) -> list[tuple[object, M.Message]]:
        out, self._out = self._out, []
        return out

    def cluster_outbox(self) -> list[tuple]:
        out, self._cluster_out = self._cluster_out, []
        return out

    def _send(self, conn: Conn, msg: M.Message) -> None:
        if conn.node:
            self._cluster_out.append(("msg", conn.node, conn.public_key, msg))
        elif conn.lost_at is None:
            self._out.append((conn.id, msg))
        # lingering: nobody to tell; it gets a fresh Netmap and PeerUps when it is back

    def _close(self, conn: Conn, reason: str, now: float) -> None:
        self._out.append((conn.id, M.Close(reason)))
        self.disconnect(conn.id, now, reason="logout" if reason == "bye" else "lost")

    # -- connection lifecycle ----------------------------------------------------
    def connect(self, conn_id: object, public_key: bytes, source: tuple[str, int], now: float) -> bool:
        """A Noise-authenticated stream opened. False: refused (rate limit); the shell closes it."""
        if not self._login_limit.allow(source[0], now):
            self.stats["refused_logins"] += 1
            line = self.refused(P.Refusal("login_rate", "too many login attempts from your address",
                                          retry_after=1.0 / max(self._login_limit.rate, 1e-9)), source[0], now)
            self._out.append((conn_id, M.Close(line)))
            return False
        entry = self.deny.match(source[0], "login")
        if entry is not None:
            self.stats["refused_logins"] += 1
            self._out.append((conn_id, M.Close(self.refused(P.deny_refusal(entry, "login"),
                                                            f"{encode_key(public_key)[:10]} from {source[0]}", now))))
            return False
        self.conns[conn_id] = Conn(conn_id, public_key, source, last_seen=now, since=now)
        return True

    def disconnect(self, conn_id: object, now: float, reason: str = "lost") -> None:
        conn = self.conns.pop(conn_id, None)
        if conn is None:
            return
        if self.online.get(conn.public_key) is conn:
            self.logouts[reason] += 1
            log.info("logout %s (%s) from %s: %s", conn.nickname, encode_key(conn.public_key)[:10], conn.source[0],
                     reason)
            if reason == "lost":
                self.stats["lost"] += 1
                if self.presence_debounce > 0:
                    conn.lost_at = now  # lingering; handle_timer finishes it unless it is back in time
                    return
            self._went_offline(conn, reason)

    def _went_offline(self, conn: Conn, reason: str) -> None:
        del self.online[conn.public_key]
        for other in self._peers_of(conn.public_key):
            oc = self.online.get(other)
            if oc is not None:
                self._send(oc, M.PeerDown(conn.public_key, reason))
        self._push_networks(conn.public_key, [m.network for m in self.store.memberships(conn.public_key)])
        self._cluster_out.append(("down", conn.public_key, reason))

    def handle_timer(self, now: float) -> None:
        self.now = now
        for conn in list(self.conns.values()):
            if now - conn.last_seen > IDLE_TIMEOUT:
                self._close(conn, "keepalive timeout", now)
        for conn in [c for c in self.online.values() if c.lost_at is not None and not c.node]:
            if now - conn.lost_at >= self.presence_debounce:
                self._went_offline(conn, "lost")
        if now - self._enforced_at >= ENFORCE_INTERVAL:
            self.enforce(now)

    # -- the cluster ---------------------------------------------------------------
    def presence_info(self, conn: Conn) -> dict:
        return {"nickname": conn.nickname, "report": conn.report, "mapping": conn.mapping,
                "candidates": [[c.kind, c.ip, c.port] for c in conn.candidates]}

    def cluster_event(self, event: tuple, now: float) -> None:
        """Apply a change another node made (see the module docstring)."""
        self.now = now
        kind = event[0]
        if kind == "up":
            _, key, node, info = event
            old = self.online.get(key)
            if old is not None and not old.node and old.lost_at is None:
                # It logged in on another node: this stream is stale. No PeerDown: it is online.
                self._out.append((old.id, M.Close(f"{M.Close.REPLACED}: this client's key logged in on server "
                                                  f"node {node}")))
                self.conns.pop(old.id, None)
            self.online[key] = Conn(None, key, ("", 0), phase="sync", nickname=str(info.get("nickname", "")),
                                    candidates=_candidates_of(info), mapping=str(info.get("mapping", "")),
                                    report=dict(info.get("report", {})), node=node, last_seen=now)
        elif kind == "down":
            _, key, node = event
            oc = self.online.get(key)
            if oc is not None and oc.node == node:
                del self.online[key]
        elif kind == "msg":
            _, key, msg = event
            oc = self.online.get(key)
            if oc is not None and oc.local and isinstance(msg, M.Close):
                # Another node's admin suspended or banned it: disconnect here, peers drop tunnels.
                self._out.append((oc.id, msg))
                self.disconnect(oc.id, now, reason="suspended")
            elif oc is not None and oc.local:
                if isinstance(msg, M.Delta):
                    oc.seq += 1
                    msg = dataclasses.replace(msg, seq=oc.seq)
                self._send(oc, msg)
        elif kind == "node_dead":
            _, dead, adopter = event
            for oc in self.online.values():
                if oc.node == dead:
                    if adopter == self.node:
                        oc.node, oc.lost_at = "", now  # ours to finish after the debounce
                    else:
                        oc.node = adopter

    # -- messages ------------------------------------------------------------------
    def receive(self, conn_id: object, msg: M.Message, now: float) -> None:
        self.now = now
        conn = self.conns.get(conn_id)
        if conn is None:
            return
        conn.last_seen = now
        if isinstance(msg, M.Ping):
            self._send(conn, M.Pong(msg.nonce))
        elif conn.phase == "login" and isinstance(msg, M.Hello):
            self._login(conn, msg, now)
        elif conn.phase == "discovery" and isinstance(msg, M.Discovery):
            self._discovery(conn, msg)
        elif conn.phase == "sync" and isinstance(msg, M.Request):
            if not self._request_limit.allow(conn.public_key, now):
                self.stats["throttled_requests"] = self.stats.get("throttled_requests", 0) + 1
                self._send(conn, M.Reply(msg.req_id, 0, "too many requests from this client; slow down"))
                return
            self._request(conn, msg)
        elif conn.phase == "sync" and isinstance(msg, M.Resync):
            if not self._request_limit.allow(conn.public_key, now):
                self.stats["throttled_requests"] = self.stats.get("throttled_requests", 0) + 1
                return
            self._send_netmap(conn)
        else:
            self.stats["protocol_errors"] += 1
            self._close(conn, f"protocol violation: {type(msg).__name__} in phase {conn.phase}", now)

    def _login(self, conn: Conn, msg: M.Hello, now: float) -> None:
        try:
            nickname = _valid_name(msg.nickname, "nickname")
        except RequestRefused as exc:
            self._close(conn, str(exc), now)
            return
        who = f"{nickname} ({encode_key(conn.public_key)[:10]}) from {conn.source[0]}"
        rec = self.store.get_client(conn.public_key)
        if rec is None:
            entry = self.deny.match(conn.source[0], "registration")
            if entry is not None:
                self.stats["refused_logins"] += 1
                self._close(conn, self.refused(P.deny_refusal(entry, "registration"), who, now), now)
                return
            if self.registration == "token" and not (msg.token and self.store.use_token(
                    self.hash_token(msg.token), now + self.wall_offset)):
                self.stats["refused_logins"] += 1
                self._close(conn, self.refused(P.Refusal(
                    "registration_token", "registration needs a valid one-time token (hamachi server token)"),
                    who, now), now)
                return
            try:
                rec = self.store.register_client(conn.public_key, nickname, now)
            except StoreError as exc:
                self._close(conn, str(exc), now)
                return
        else:
            reason = self.suspension(conn.public_key)
            if reason is not None:
                self.stats["refused_logins"] += 1
                self._close(conn, self.refused(P.suspension_refusal(reason), who, now), now)
                return
            if rec.nickname != nickname:
                self.store.set_nickname(conn.public_key, nickname)
        old = self.online.get(conn.public_key)
        if old is not None and old is not conn:  # the same client logged in again: the old stream is stale
            if old.local:
                # A client that reconnects closes its old stream first, so a live old stream that
                # gets this is another host with a copy of the key: say which one lost, and why.
                self._out.append((old.id, M.Close(
                    f"{M.Close.REPLACED}: this client's key logged in again from {conn.source[0]}; if that is "
                    "another host, it has a copy of this key: give each host its own (`hamachi client init`)")))
                self.conns.pop(old.id, None)
                if old.lost_at is None and old.source[0] != conn.source[0]:
                    log.warning("login %s: the same key was online from %s, that connection lost (two hosts "
                                "with one key?)", who, old.source[0])
            # A lingering or remote entry just goes: its peers never saw it leave.
            del self.online[conn.public_key]
        conn.nickname = nickname
        conn.phase = "discovery"
        self.stats["logins"] += 1
        log.info("login %s", who)
        self._send(conn, M.Welcome(rec.address4, rec.address6, self.prefix4, self.prefix6, SERVER_VERSION,
                                   tuple((r.name, r.udp) for r in self.relays)))

    def _discovery(self, conn: Conn, msg: M.Discovery) -> None:
        # Only what the server observed itself, or can check, reaches other members.
        conn.report = dict(msg.report)
        conn.candidates, conn.mapping = cand.derive(conn.source[0], msg.listen_port, conn.report,
                                                    msg.candidates, self.stun_observed)
        conn.phase = "sync"
        self.online[conn.public_key] = conn
        self._cluster_out.append(("up", conn.public_key, self.presence_info(conn)))
        self._send_netmap(conn)
        for other in self._peers_of(conn.public_key):
            oc = self.online.get(other)
            if oc is not None:
                self._send(oc, self._peer_up(conn.public_key, other))
                self._send(conn, self._peer_up(other, conn.public_key))
        self._push_networks(conn.public_key, [m.network for m in self.store.memberships(conn.public_key)],
                            skip=conn.public_key)

    # -- netmap -------------------------------------------------------------------
    def _member_info(self, network: str) -> tuple[M.MemberInfo, ...]:
        out = []
        for m, c in self.store.member_clients(network):
            oc = self.online.get(m.public_key)
            out.append(M.MemberInfo(m.public_key, c.nickname, c.address4, c.address6, m.state,
                                    int(oc is not None), oc.endpoint if oc else ""))
        return tuple(out)

    def _network_info(self, name: str) -> M.NetworkInfo | None:
        n = self.store.get_network(name)
        if n is None:
            return None
        settings = dict(self.store.network_settings(name))
        if n.password_hash:  # members see that it has one (never the hash)
            settings["password"] = "yes"
        return M.NetworkInfo(n.name, n.owner, n.mode, int(n.locked), int(n.approval), n.max_members,
                             self._member_info(name), tuple(settings.items()))

    @staticmethod
    def _applicant_view(info: M.NetworkInfo, key: bytes) -> M.NetworkInfo:
        """What a pending applicant sees: the network's name and its own entry, nobody's endpoint."""
        own = tuple(m for m in info.members if m.public_key == key)
        return dataclasses.replace(info, members=own, settings=())

    def _visible(self, key: bytes) -> list[str]:
        return [m.network for m in self.store.memberships(key)]

    def _send_netmap(self, conn: Conn) -> None:
        conn.seq += 1
        pending = {m.network for m in self.store.memberships(conn.public_key) if m.state == "pending"}
        nets = tuple(self._applicant_view(ni, conn.public_key) if ni.name in pending else ni
                     for ni in (self._network_info(n) for n in self._visible(conn.public_key)) if ni)
        parts = M.split_networks(nets)
        for i, part in enumerate(parts):
            self._send(conn, M.Netmap(conn.seq, part, int(i < len(parts) - 1)))

    def _send_delta(self, conn: Conn, parts: list[tuple[M.NetworkInfo, ...]], removed: str = "") -> None:
        """One Delta, in as many frames as it takes (all with the same seq; `more` on all but the last)."""
        conn.seq += 1
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            self._send(conn, M.Delta(conn.seq, part, removed if last else "", int(not last)))

    def _push_networks(self, key: bytes, networks: list[str], skip: bytes | None = None,
                       removed_for: dict[bytes, str] | None = None) -> None:
        """Send a Delta for each changed network to its online members (and removals to ex-members)."""
        for name in networks:
            info = self._network_info(name)
            if info is None:
                continue
            parts = None  # split once, sent to every online member
            for m in info.members:
                oc = self.online.get(m.public_key)
                if oc is not None and m.public_key != skip:
                    if m.state == "pending":
                        self._send_delta(oc, [(self._applicant_view(info, m.public_key),)])
                        continue
                    parts = parts or M.split_networks((info,))
                    self._send_delta(oc, parts)
        for k, name in (removed_for or {}).items():
            oc = self.online.get(k)
            if oc is not None:
                self._send_delta(oc, [()], name)

    # -- presence -----------------------------------------------------------------
    def _peers_of(self, key: bytes) -> set[bytes]:
        peers: set[bytes] = set()
        for m in self.store.memberships(key):
            if m.state != "member":
                continue
            for other in self.store.members(m.network):
                if other.state == "member" and other.public_key != key:
                    peers.add(other.public_key)
        return peers

    def _peer_up(self, key: bytes, to: bytes) -> M.PeerUp:
        """PeerUp about `key` for `to`, with the pair's tickets for every configured relay, best first."""
        c = self.store.get_client(key)
        oc = self.online.get(key)
        nat = ""
        if oc is not None and oc.mapping:
            filtering = oc.report.get("filtering", "")
            nat = f"{oc.mapping}/{filtering if filtering in cand.FILTERINGS else ''}"
        a, b = sorted((key, to))
        # The same session ids, tickets and relay order for both sides; new ones each day the pair meets.
        day = int((self.now + self.wall_offset) // TICKET_LIFETIME)
        offers = []
        if self.deny.match(oc.source[0] if oc else "", "relay") or (
                (to_conn := self.online.get(to)) is not None and self.deny.match(to_conn.source[0], "relay")):
            # A deny-listed end gets no relay: the pair may still meet directly.
            self.refusals["denied_relay"] += 1
            return M.PeerUp(key, c.nickname, c.address4, c.address6, oc.endpoint if oc else "", nat, (),
                            0 if to == a else 1)
        rate, account = self._relay_plan(a, b)
        for r in self._relays_for(key, to):
            sid = hashlib.blake2s(a + b + r.name.encode() + day.to_bytes(8, "big"), digest_size=8).digest()
            ticket = Ticket(sid, a, b, (day + 2) * int(TICKET_LIFETIME), rate, account).encode(r.ticket_key)
            offers.append(M.RelayOffer(r.name, r.udp, r.tcp, ticket))
        return M.PeerUp(key, c.nickname, c.address4, c.address6, oc.candidates if oc else (), nat, tuple(offers),
                        0 if to == a else 1)

    def _relay_plan(self, a: bytes, b: bytes) -> tuple[int, str]:
        """The pair's relay rate and the account it is charged to: the owners of the networks the
        pair shares, the most generous plan among them."""
        shared = {m.network for m in self.store.memberships(a) if m.state == "member"} & \
                 {m.network for m in self.store.memberships(b) if m.state == "member"}
        owners = [(plan, acct) for acct, plan in (self.account_of(n.owner) for n in
                  (self.store.get_network(name) for name in sorted(shared)) if n is not None)]
        if not owners:
            return 0, ""
        plan, acct = max(owners, key=lambda pa: P.generosity(pa[0]))
        return plan.relay_rate_bps, acct[:255]

    def _relays_for(self, x: bytes, y: bytes) -> list[RelayInfo]:
        """The pair's relays, best first: least summed RTT the two members measured to each (from
        their discovery reports); unmeasured relays come after, in an order stable for the pair."""
        a, b = sorted((x, y))

        def rtt(k: bytes, r: RelayInfo) -> float:
            oc = self.online.get(k)
            try:
                v = float(oc.report.get(f"rtt:{r.name}", "inf")) if oc else math.inf
            except ValueError:
                return math.inf
            return v if math.isfinite(v) and v >= 0 else math.inf

        def rank(r: RelayInfo):
            return (rtt(a, r) + rtt(b, r), hashlib.blake2s(a + b + r.name.encode(), digest_size=4).digest())

        return sorted(self.relays, key=rank)

    def _membership_changed(self, key: bytes, before: set[bytes], reason: str) -> None:
        """Tell `key` and the members it gained or lost to set up or drop tunnels."""
        after = self._peers_of(key)
        me = self.online.get(key)
        for other in after - before:
            oc = self.online.get(other)
            if oc is not None and me is not None:
                self._send(oc, self._peer_up(key, other))
                self._send(me, self._peer_up(other, key))
        for other in before - after:
            oc = self.online.get(other)
            if oc is not None:
                self._send(oc, M.PeerDown(key, reason))
            if me is not None:
                self._send(me, M.PeerDown(other, reason))

    # -- requests -----------------------------------------------------------------
    def _request(self, conn: Conn, req: M.Request) -> None:
        handler = getattr(self, f"_verb_{req.verb}", None)
        try:
            if handler is None:
                raise RequestRefused(f"unknown request {req.verb!r}")
            note = handler(conn, req)
        except RequestRefused as exc:
            if exc.args and isinstance(exc.args[0], P.Refusal):
                self._send(conn, M.Reply(req.req_id, 0, self.refused(exc.args[0], conn.nickname, self.now)))
            else:
                self._send(conn, M.Reply(req.req_id, 0, str(exc)))
            return
        except StoreError as exc:
            self._send(conn, M.Reply(req.req_id, 0, str(exc)))
            return
        # ok = 2: accepted, but not done yet (a join waiting for the owner's approval); the text says so.
        self._send(conn, M.Reply(req.req_id, 2, note) if note else M.Reply(req.req_id, 1, ""))

    def password_job(self, conn_id: object, msg: M.Message) -> tuple | None:
        """The slow hash this message needs, if any, for the I/O shell to compute off the core thread.

        ("verify", stored_hash, password) for a join that would check a password now (not while
        throttled), ("hash", password) for a create with one; None for everything else. The
        result goes back in `prepared` for the `receive` of the same message."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.phase != "sync" or not isinstance(msg, M.Request):
            return None
        password = msg.arg("password")
        if not password or len(password) > MAX_PASSWORD:
            return None
        if msg.verb == "create":
            return ("hash", password)
        if msg.verb != "join":
            return None
        net = self.store.get_network(msg.arg("network"))
        if net is None or net.password_hash is None or self._guess_wait(conn, net.name, peek=True) > 0:
            return None
        return ("verify", net.password_hash, password)

    def _guess_wait(self, conn: Conn, network: str, peek: bool = False) -> float:
        checks = ((self.guesses_by_key, conn.public_key), (self.guesses_by_net, network),
                  (self.guesses, conn.source[0]))
        if peek:  # no side effects (the global budget is spent by the real check)
            return max(t._failures.get(k, (0, 0.0))[1] - self.now for t, k in checks)
        return max(t.wait(k, self.now) for t, k in checks)

    def _verify(self, stored: bytes, password: str) -> bool:
        got = self.prepared.get(("verify", stored, password))
        return pw.verify_password(stored, password) if got is None else got

    def _hash(self, password: str) -> bytes:
        got = self.prepared.get(("hash", password))
        return pw.hash_password(password) if got is None else got

    def _network(self, req: M.Request) -> NetworkRecord:
        name = req.arg("network")
        net = self.store.get_network(name)
        if net is None:
            raise RequestRefused(f"no network named {name!r}")
        return net

    def _owned(self, conn: Conn, req: M.Request) -> NetworkRecord:
        net = self._network(req)
        if net.owner != conn.public_key:
            raise RequestRefused(f"you are not the owner of {net.name!r}")
        return net

    def _member_arg(self, net: NetworkRecord, req: M.Request) -> bytes:
        """The one member `member` names: its key or address first; a nickname only if no one else has it."""
        who = req.arg("member")
        rows = self.store.member_clients(net.name)
        for m, c in rows:
            if who in (encode_key(m.public_key), c.address4, c.address6):
                return m.public_key
        named = [m.public_key for m, c in rows if c.nickname == who]
        if len(named) > 1:
            raise RequestRefused(f"{len(named)} members of {net.name!r} are called {who!r}: name one by its "
                                 "key or address")
        if named:
            return named[0]
        raise RequestRefused(f"{who!r} is not a member of {net.name!r}")

    def _verb_create(self, conn: Conn, req: M.Request) -> None:
        name = _valid_name(req.arg("network"), "network name")
        password = req.arg("password")
        if self.store.get_network(name) is not None:
            raise RequestRefused(f"network name {name!r} is taken")
        mode = req.arg("mode", "tun")
        if mode not in ("tun", "tap"):
            raise RequestRefused("mode must be tun or tap")
        if req.arg("approval", "0") not in ("0", "1"):
            raise RequestRefused("approval must be 0 or 1")
        max_members = _count_arg(req.arg("max_members"), self.default_max_members, "max_members", MAX_MEMBERS)
        if len(password) > MAX_PASSWORD:
            raise RequestRefused(f"a network password is at most {MAX_PASSWORD} characters")
        refusal = self.plans.deny_network(self.account_of(conn.public_key)[1],
                                          len(self.store.networks_owned(conn.public_key)))
        if refusal is not None:
            raise RequestRefused(refusal)
        before = self._peers_of(conn.public_key)
        self.store.create_network(NetworkRecord(
            name, conn.public_key, self._hash(password) if password else None, mode, False,
            req.arg("approval") == "1", max_members))
        self._membership_changed(conn.public_key, before, "left")
        self._push_networks(conn.public_key, [name])

    def _verb_join(self, conn: Conn, req: M.Request) -> str | None:
        net = self._network(req)
        members = self.store.members(net.name)
        if any(m.public_key == conn.public_key and m.state == "member" for m in members):
            return
        if net.locked:
            raise RequestRefused(f"network {net.name!r} is locked")
        self._check_room(net, members)
        if any(c.nickname == conn.nickname and m.public_key != conn.public_key
               for m, c in self.store.member_clients(net.name)):
            raise RequestRefused(f"someone in {net.name!r} is already called {conn.nickname!r}; pick another "
                                 "nickname (hamachi client nick NAME)")
        if net.password_hash is not None and not req.arg("password"):
            raise RequestRefused(f"network {net.name!r} needs a password (give it with --password)")
        if net.password_hash is not None:
            source = conn.source[0]
            wait = self._guess_wait(conn, net.name)
            if wait > 0:
                self.stats["throttled_guesses"] = self.stats.get("throttled_guesses", 0) + 1
                raise RequestRefused(f"too many wrong passwords; try again in {math.ceil(wait)} s")
            if not self._verify(net.password_hash, req.arg("password")):
                earned = max(self.guesses.failed(source, self.now),
                             self.guesses_by_key.failed(conn.public_key, self.now),
                             self.guesses_by_net.failed(net.name, self.now))
                raise RequestRefused("wrong password" + (f" (next try in {math.ceil(earned)} s)" if earned else ""))
            self.guesses.succeeded(source)
            self.guesses_by_key.succeeded(conn.public_key)
        before = self._peers_of(conn.public_key)
        self.store.set_member(net.name, conn.public_key, "pending" if net.approval else "member")
        self._membership_changed(conn.public_key, before, "left")
        self._push_networks(conn.public_key, [net.name])
        if net.approval:
            return f"asked to join {net.name}; waiting for the owner's approval"
        return None

    def _check_room(self, net: NetworkRecord, members) -> None:
        n = sum(m.state == "member" for m in members)
        if n >= net.max_members:
            raise RequestRefused(f"network {net.name!r} is full ({net.max_members} members)")
        refusal = self.plans.deny_member(self.account_of(net.owner)[1], net.name, n)
        if refusal is not None:
            raise RequestRefused(refusal)

    def _verb_leave(self, conn: Conn, req: M.Request) -> None:
        net = self._network(req)
        if not any(m.public_key == conn.public_key for m in self.store.members(net.name)):
            raise RequestRefused(f"you are not a member of {net.name!r}")  # nothing changed: nobody hears of it
        self._remove(net, conn.public_key, "left")

    def _remove(self, net: NetworkRecord, key: bytes, reason: str) -> None:
        if net.owner == key:
            raise RequestRefused("the owner cannot leave: hand the network over (transfer) or delete it")
        before = self._peers_of(key)
        self.store.remove_member(net.name, key)
        self._membership_changed(key, before, reason)
        self._push_networks(key, [net.name], removed_for={key: net.name})

    def _verb_evict(self, conn: Conn, req: M.Request) -> None:
        net = self._owned(conn, req)
        self._remove(net, self._member_arg(net, req), "evicted")

    def _verb_approve(self, conn: Conn, req: M.Request) -> None:
        net = self._owned(conn, req)
        key = self._member_arg(net, req)
        self._check_room(net, self.store.members(net.name))
        before = self._peers_of(key)
        self.store.set_member(net.name, key, "member")
        self._membership_changed(key, before, "left")
        self._push_networks(key, [net.name])

    def _verb_reject(self, conn: Conn, req: M.Request) -> None:
        net = self._owned(conn, req)
        key = self._member_arg(net, req)
        if key == net.owner:
            raise RequestRefused("the owner cannot be rejected")
        before = self._peers_of(key)  # a full member being rejected loses its tunnels too
        self.store.remove_member(net.name, key)
        self._membership_changed(key, before, "evicted")
        self._push_networks(key, [net.name], removed_for={key: net.name})

    def _verb_lock(self, conn: Conn, req: M.Request) -> None:
        net = self._owned(conn, req)
        self.store.update_network(net.name, locked=True)
        self._push_networks(conn.public_key, [net.name])

    def _verb_unlock(self, conn: Conn, req: M.Request) -> None:
        net = self._owned(conn, req)
        self.store.update_network(net.name, locked=False)
        self._push_networks(conn.public_key, [net.name])

    def _verb_transfer(self, conn: Conn, req: M.Request) -> None:
        net = self._owned(conn, req)
        self.store.update_network(net.name, owner=self._member_arg(net, req))
        self._push_networks(conn.public_key, [net.name])

    def _verb_delete(self, conn: Conn, req: M.Request) -> None:
        net = self._owned(conn, req)
        members = [m.public_key for m in self.store.members(net.name)]
        befores = {k: self._peers_of(k) for k in members}
        self.store.delete_network(net.name)
        for k in members:
            self._membership_changed(k, befores[k], "left")
        self._push_networks(conn.public_key, [], removed_for={k: net.name for k in members})

    def _verb_nick(self, conn: Conn, req: M.Request) -> None:
        nickname = _valid_name(req.arg("nickname"), "nickname")
        if nickname == conn.nickname:
            return  # nothing changed: no fan-out
        for net in self._visible(conn.public_key):
            if any(c.nickname == nickname and m.public_key != conn.public_key
                   for m, c in self.store.member_clients(net)):
                raise RequestRefused(f"someone in {net!r} is already called {nickname!r}")
        self.store.set_nickname(conn.public_key, nickname)
        conn.nickname = nickname
        self._push_networks(conn.public_key, self._visible(conn.public_key))

    def _verb_broadcast(self, conn: Conn, req: M.Request) -> None:
        """Owner: broadcast/multicast on or off, and the per-sender rate limit (packets/s, bytes/s)."""
        net = self._owned(conn, req)
        values: dict[str, str | None] = {}
        state = req.arg("state")
        if state:
            if state not in ("on", "off"):
                raise RequestRefused("broadcast must be on or off")
            values["broadcast"] = state
        for key, (lo, hi) in (("pps", BROADCAST_PPS_RANGE), ("bps", BROADCAST_BPS_RANGE)):
            text = req.arg(key)
            if not text:
                continue
            if text == "default":
                values[f"broadcast_{key}"] = None
                continue
            if not text.isdigit() or not lo <= int(text) <= hi:
                raise RequestRefused(f"{key} must be a whole number from {lo} to {hi}, or 'default'")
            values[f"broadcast_{key}"] = str(int(text))
        if values:
            self.store.set_network_settings(net.name, values)
        self._push_networks(conn.public_key, [net.name])

    def _verb_bridge(self, conn: Conn, req: M.Request) -> None:
        """Owner: let a member of a TAP network bridge a LAN (its learned MACs are allowed, capped)."""
        net = self._owned(conn, req)
        if net.mode != "tap":
            raise RequestRefused(f"{net.name!r} is a TUN network; bridging needs a TAP network (--mode tap)")
        key = self._member_arg(net, req)
        state = req.arg("state")
        if state not in ("on", "off"):
            raise RequestRefused("bridge must be on or off")
        have = [k for k in self.store.network_settings(net.name).get("bridges", "").split(",") if k]
        want = [k for k in have if k != key.hex()] + ([key.hex()] if state == "on" else [])
        self.store.set_network_settings(net.name, {"bridges": ",".join(want) or None})
        self._push_networks(conn.public_key, [net.name])

    def _verb_bye(self, conn: Conn, req: M.Request) -> None:
        self._send(conn, M.Reply(req.req_id, 1, ""))
        self._close(conn, "bye", 0.0)
        raise RequestRefused("closed")  # no second reply is sent: the connection is gone
