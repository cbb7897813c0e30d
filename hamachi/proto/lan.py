"""LAN policy: who gets a broadcast copy or a frame, rate limits, MAC learning. Sans I/O.

Theory of operation. The server tells each client which networks it is in,
with their members, mode (tun/tap) and LAN settings (`NetworkPolicy`). This
module turns that into decisions; the I/O shell only carries them out.

TUN networks (IP). A packet read from the interface whose destination is the
limited broadcast 255.255.255.255, the overlay's directed broadcast, IPv4
multicast 224.0.0.0/4 or IPv6 multicast ff00::/8 is a *group* packet.
`group_copies()` gives one copy per online member that shares a TUN network
with us whose broadcast is on, each copy tagged with that network (the first
such network in name order), under the network's per-sender rate limit.

TAP networks (Ethernet). `frame_out()` switches a frame read from the
network's TAP device: a known unicast MAC goes to its member only;
broadcast, multicast and unknown unicast are flooded to the network's
online members, under the same rate limit. Every member's own MAC is known
from the start (it is derived from the member's key, `member_mac`); a bridge
member's other MACs are learned from what it sends, up to `bridge_macs`.

Receiving (`accept_group`, `accept_frame`). A copy is accepted only if its
network is one of ours, the sender is a member of it, broadcast is on there,
and the sender is within its rate limit; a frame's source MAC must be the
sender's own (or, for a bridge, a MAC it may own). Accepted traffic goes to
the local interface only: nothing received is ever sent on to another peer,
so there are no loops and no amplification.

Rate limits are token buckets, in packets/s and bytes/s, with one second of
burst. The sender enforces its own (`broadcast_rate` on the way out) and every
receiver enforces it again per sender, with twice the burst so that timing
jitter between two honest ends drops nothing.

                  local interface
    group packet / frame ──► group_copies / frame_out ──► [(member key, sealed-later message)]
    peer's LanMessage    ──► accept_group / accept_frame ──► write to the network's interface | drop(reason)
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from hamachi.config import DEFAULT_BRIDGE_MACS, DEFAULT_BROADCAST_BPS, DEFAULT_BROADCAST_PPS
from hamachi.proto import drops as D
from hamachi.wire import lan as L

MAC_AGE = 300.0  # a learned MAC is forgotten after this long without a frame from it
BROADCAST_MAC = b"\xff" * 6


def member_mac(public_key: bytes) -> bytes:
    """A member's stable MAC on every TAP network: locally administered, unicast, from its key."""
    h = hashlib.blake2s(b"hamachi mac " + public_key).digest()
    return bytes([(h[0] & 0xFC) | 0x02]) + h[1:6]


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def is_group_ip(packet: bytes, directed: frozenset[bytes] = frozenset()) -> bool:
    """Is an IP packet's destination a broadcast or multicast address (RFC 1112 §4, RFC 4291 §2.7)?"""
    if not packet:
        return False
    v = packet[0] >> 4
    if v == 4 and len(packet) >= 20:
        dst = packet[16:20]
        return dst == b"\xff\xff\xff\xff" or 224 <= dst[0] <= 239 or dst in directed
    if v == 6 and len(packet) >= 40:
        return packet[24] == 0xFF
    return False


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """One network as the server describes it, with its LAN settings."""

    name: str
    mode: str = "tun"  # "tun" or "tap"
    members: frozenset[bytes] = frozenset()  # public keys of approved members (us included)
    broadcast: bool = True
    pps: float = DEFAULT_BROADCAST_PPS
    bps: float = DEFAULT_BROADCAST_BPS
    bridges: frozenset[bytes] = frozenset()  # members allowed to bridge a LAN behind them
    bridge_macs: int = DEFAULT_BRIDGE_MACS

    @property
    def nid(self) -> bytes:
        return L.network_id(self.name)

    @classmethod
    def from_settings(cls, name: str, mode: str, members: frozenset[bytes],
                      settings: dict[str, str]) -> NetworkPolicy:
        """From the server's text settings (wire.control.NetworkInfo.settings); bad values -> defaults."""
        def num(key: str, default: float) -> float:
            try:
                v = float(settings.get(key, ""))
            except ValueError:
                return default
            return v if v > 0 else default

        bridges = set()
        for item in settings.get("bridges", "").split(","):
            try:
                k = bytes.fromhex(item.strip())
            except ValueError:
                continue
            if len(k) == 32:
                bridges.add(k)
        return cls(name, mode, members, settings.get("broadcast", "on") != "off",
                   num("broadcast_pps", DEFAULT_BROADCAST_PPS), num("broadcast_bps", DEFAULT_BROADCAST_BPS),
                   frozenset(bridges) & members)


class Buckets:
    """Token buckets in packets and bytes per key, driven by `now`; one second of burst times `slack`."""

    def __init__(self, pps: float, bps: float, slack: float = 1.0, max_keys: int = 4096):
        self.pps, self.bps, self.slack, self.max_keys = pps, bps, slack, max_keys
        self._b: dict[object, list[float]] = {}

    def allow(self, key: object, size: int, now: float) -> bool:
        b = self._b.get(key)
        cap_p, cap_b = self.pps * self.slack, self.bps * self.slack
        if b is None:
            if len(self._b) >= self.max_keys:
                self._b.clear()  # bounded: a reset only ever forgives, it never blocks anyone longer
            b = self._b[key] = [cap_p, cap_b, now]
        else:
            dt = max(0.0, now - b[2])
            b[0] = min(cap_p, b[0] + dt * self.pps)
            b[1] = min(cap_b, b[1] + dt * self.bps)
            b[2] = now
        if b[0] < 1.0 or b[1] < size:
            return False
        b[0] -= 1.0
        b[1] -= size
        return True


@dataclass(slots=True)
class _Net:
    policy: NetworkPolicy
    nid: bytes
    header_group: bytes
    header_frame: bytes
    out_limit: Buckets
    in_limit: Buckets
    macs: dict[bytes, bytes] = field(default_factory=dict)  # MAC -> member key (own MACs and learned)
    learned: dict[bytes, float] = field(default_factory=dict)  # learned MAC -> last seen
    counters: Counter = field(default_factory=Counter)


class Lan:
    """Every network of one client; see the module docstring."""

    def __init__(self, local_key: bytes):
        self.local_key = local_key
        self.local_mac = member_mac(local_key)
        self.nets: dict[bytes, _Net] = {}
        self.directed: frozenset[bytes] = frozenset()  # our overlay's directed broadcast address(es)
        self._tun_order: list[_Net] = []

    # -- configuration ---------------------------------------------------------
    def set_networks(self, policies: list[NetworkPolicy]) -> None:
        """Replace the network set (from a netmap); MACs learned in networks that stay are kept."""
        new: dict[bytes, _Net] = {}
        for p in sorted(policies, key=lambda p: p.name):
            if self.local_key not in p.members:
                continue  # pending, or not ours
            nid = p.nid
            old = self.nets.get(nid)
            net = _Net(p, nid, L.header(L.KIND_GROUP, nid), L.header(L.KIND_FRAME, nid),
                       Buckets(p.pps, p.bps), Buckets(p.pps, p.bps, slack=2.0))
            if old is not None:
                net.counters = old.counters
                if old.policy.pps == p.pps and old.policy.bps == p.bps:
                    net.out_limit, net.in_limit = old.out_limit, old.in_limit
                net.learned = {m: t for m, t in old.learned.items() if old.macs.get(m) in p.bridges}
            for k in p.members:
                if k != self.local_key:
                    net.macs[member_mac(k)] = k
            for m in net.learned:
                net.macs.setdefault(m, old.macs[m])
            new[nid] = net
        self.nets = new
        self._tun_order = [n for n in new.values() if n.policy.mode == "tun"]

    def network(self, name: str) -> _Net | None:
        return self.nets.get(L.network_id(name))

    # -- TUN: group packets ------------------------------------------------------
    def is_group(self, packet: bytes) -> bool:
        return is_group_ip(packet, self.directed)

    def group_copies(self, packet: bytes, online, now: float) -> tuple[list[tuple[bytes, bytes]], str | None]:
        """A group packet from our interface -> [(member key, message)], and a drop reason if none."""
        out: list[tuple[bytes, bytes]] = []
        seen: set[bytes] = set()
        reason = D.NO_ROUTE
        for net in self._tun_order:
            p = net.policy
            if not p.broadcast:
                reason = D.BROADCAST_OFF if reason == D.NO_ROUTE else reason
                continue
            targets = [k for k in p.members if k not in seen and k != self.local_key and k in online]
            if not targets:
                continue
            if not net.out_limit.allow(None, len(packet), now):
                net.counters[D.BROADCAST_RATE] += 1
                reason = D.BROADCAST_RATE
                continue
            msg = net.header_group + packet
            net.counters["tx_group"] += 1
            for k in targets:
                seen.add(k)
                out.append((k, msg))
        return out, (None if out else reason)

    def accept_group(self, sender: bytes, msg: L.LanMessage, now: float) -> str | None:
        """A group copy from a peer: None to deliver it to the TUN, else the drop reason."""
        net = self.nets.get(msg.network)
        if net is None or net.policy.mode != "tun":
            return D.LAN_UNKNOWN_NETWORK
        if sender not in net.policy.members:
            return self._count(net, D.LAN_NOT_MEMBER)
        if not net.policy.broadcast:
            return self._count(net, D.BROADCAST_OFF)
        if not self.is_group(msg.body):
            return self._count(net, D.LAN_NOT_GROUP)  # unicast goes the cryptokey-routed way only
        if not net.in_limit.allow(sender, len(msg.body), now):
            return self._count(net, D.BROADCAST_RATE)
        net.counters["rx_group"] += 1
        return None

    # -- TAP: frames -------------------------------------------------------------
    def frame_out(self, nid: bytes, frame: bytes, online, now: float) -> tuple[list[tuple[bytes, bytes]], str | None]:
        """A frame read from a TAP network's device -> [(member key, message)], and a drop reason if none."""
        net = self.nets.get(nid)
        if net is None or len(frame) < L.ETH_HEADER_LEN:
            return [], D.MALFORMED_INNER
        dst = frame[:6]
        if not dst[0] & 1:
            k = net.macs.get(dst)
            if k is not None and k in online:
                if k == self.local_key:
                    return [], D.NO_ROUTE
                net.counters["tx_unicast"] += 1
                return [(k, net.header_frame + frame)], None
        p = net.policy
        if not p.broadcast:
            return [], self._count(net, D.BROADCAST_OFF)
        targets = [k for k in p.members if k != self.local_key and k in online]
        if not targets:
            return [], D.NO_ROUTE
        if not net.out_limit.allow(None, len(frame), now):
            return [], self._count(net, D.BROADCAST_RATE)
        net.counters["tx_flood"] += 1
        msg = net.header_frame + frame
        return [(k, msg) for k in targets], None

    def accept_frame(self, sender: bytes, msg: L.LanMessage, now: float) -> str | None:
        """A frame from a peer: None to write it to the network's TAP device, else the drop reason."""
        net = self.nets.get(msg.network)
        if net is None or net.policy.mode != "tap":
            return D.LAN_UNKNOWN_NETWORK
        p = net.policy
        if sender not in p.members:
            return self._count(net, D.LAN_NOT_MEMBER)
        frame = msg.body
        src = frame[6:12]
        own = src == member_mac(sender)
        if not own and (sender not in p.bridges or not self._learn(net, sender, src, now)):
            return self._count(net, D.SPOOFED_MAC)
        dst = frame[:6]
        if dst[0] & 1:  # broadcast or multicast: under the sender's rate limit
            if not p.broadcast:
                return self._count(net, D.BROADCAST_OFF)
            if not net.in_limit.allow(sender, len(frame), now):
                return self._count(net, D.BROADCAST_RATE)
        elif dst != self.local_mac and self.local_key not in p.bridges:
            return self._count(net, D.LAN_NOT_FOR_US)  # flooded unknown unicast for someone else
        net.counters["rx_frames"] += 1
        return None

    def _learn(self, net: _Net, sender: bytes, src: bytes, now: float) -> bool:
        """A bridge's source MAC: its own, one it already has, or a new one within its cap."""
        if src[0] & 1:
            return False  # a group address is never a source
        if src == member_mac(sender):
            return True
        owner = net.macs.get(src)
        if owner is not None:
            if owner != sender:
                return False  # another member's MAC (or one a different bridge holds)
            net.learned[src] = now
            return True
        if src == self.local_mac:
            return False
        mine = [m for m in net.learned if net.macs.get(m) == sender]
        if len(mine) >= net.policy.bridge_macs:
            # Forget this bridge's stale MACs first; a full, fresh table refuses newcomers.
            for m in mine:
                if now - net.learned[m] >= MAC_AGE:
                    del net.learned[m]
                    net.macs.pop(m, None)
            if sum(1 for m in net.learned if net.macs.get(m) == sender) >= net.policy.bridge_macs:
                return False
        net.learned[src] = now
        net.macs[src] = sender
        net.counters["learned"] = len(net.learned)
        return True

    def expire(self, now: float) -> None:
        for net in self.nets.values():
            for m, t in list(net.learned.items()):
                if now - t >= MAC_AGE:
                    del net.learned[m]
                    net.macs.pop(m, None)

    @staticmethod
    def _count(net: _Net, reason: str) -> str:
        net.counters[reason] += 1
        return reason

    # -- introspection ---------------------------------------------------------
    def stats(self) -> list[dict]:
        out = []
        for net in self.nets.values():
            p = net.policy
            c = net.counters
            out.append({
                "name": p.name, "mode": p.mode, "broadcast": p.broadcast,
                "rate_pps": p.pps, "rate_bps": p.bps,
                "tx": c["tx_group"] + c["tx_flood"] + c["tx_unicast"],
                "rx": c["rx_group"] + c["rx_frames"],
                "broadcast_rate": c[D.BROADCAST_RATE], "spoofed_mac": c[D.SPOOFED_MAC],
                "drops": {k: v for k, v in c.items() if not k.startswith(("tx_", "rx_")) and k != "learned"},
                "learned_macs": len(net.learned) if p.mode == "tap" else 0,
                "bridges": len(p.bridges),
            })
        return out
