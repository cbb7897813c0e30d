"""Composition root for the client: config + TUN + UDP + Tunnel core + local API.

Static peers from the config are added at start. `ClientDaemon.add_peer`,
`remove_peer` and `set_endpoint` are the seam through which the control
connection (server-driven presence) adds and drops tunnels.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import resource
import signal
import socket
import time
from typing import Any

from hamachi import _accel
from hamachi.config import ClientSettings, StaticPeer, parse_endpoint
from hamachi.crypto.keys import encode_key
from hamachi.crypto.session import AEADS
from hamachi.crypto.ticket import session_id_of
from hamachi.exitcodes import ExitCode, StartupError
from hamachi.io import discovery as nat_discovery
from hamachi.io import icmp, localapi, netconf
from hamachi.io import metrics as X
from hamachi.io import stun as stun_io
from hamachi.io.control import ControlClient
from hamachi.io.dataplane import DataPlane, RelayLink
from hamachi.io.instance import InstanceLock, binding
from hamachi.io.privilege import require_net_admin
from hamachi.io.tun import TunDevice
from hamachi.io.udp import UdpSocket
from hamachi.proto.lan import NetworkPolicy, format_mac, member_mac
from hamachi.proto.tunnel import PeerConfig, Tunnel
from hamachi.wire.control import MAX_CANDIDATES, Candidate
from hamachi.wire.lan import network_id

log = logging.getLogger("hamachi.client")
# What a member of [client] api_group may ask without root (reading state, never changing it).
READ_VERBS = frozenset({"status", "peers", "networks", "doctor", "ping", "whois"})


def fastest_first(size: int = 1400, count: int = 400) -> tuple[str, ...]:
    """Every AEAD, the fastest on this machine first (seals `count` packets with each: a few ms).

    AES-GCM wins where the CPU has AES instructions, ChaCha20-Poly1305 elsewhere; peers agree on
    one in the handshake (the initiator's preference among what both allow).
    """
    packet = bytes(size)
    nonce = bytes(12)
    timings = []
    for name, cls in AEADS.items():
        enc = cls(bytes(32)).encrypt
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(count):
                enc(nonce, packet, None)
            best = min(best, time.perf_counter() - t0)
        timings.append((best, name))
    return tuple(name for _, name in sorted(timings))


def _parse_hostport(text: str) -> tuple[str, int] | None:
    """A relay's "host:port" from the server (its config's form) -> a socket address; None if absent."""
    try:
        ep = parse_endpoint(text)
    except ValueError:
        return None
    return _resolve(ep.host), ep.port


def _resolve(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        return socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]


class ClientDaemon:
    def __init__(self, settings: ClientSettings):
        self.settings = settings
        self.tun: TunDevice | None = None
        self.udp: UdpSocket | None = None
        self.dataplane: DataPlane | None = None
        self.api_server: asyncio.AbstractServer | None = None
        self.control: ControlClient | None = None
        self.nat = None
        self.relay_rtts: dict[str, float] = {}
        self.peer_relays: dict[bytes, list[bytes]] = {}  # the relay sessions we hold for each peer
        self.overlay: list = []
        self.taps: dict[bytes, dict] = {}  # network id -> {"name", "device", "routes"}: our TAP networks
        self.handlers: dict[str, Any] = {"status": self._api_status, "peers": self._api_status,
                                         "networks": self._api_networks, "doctor": self._api_doctor,
                                         "ping": self._api_ping}
        for verb in ("create", "join", "leave", "approve", "reject", "evict", "lock", "unlock", "delete", "nick",
                     "transfer", "broadcast", "bridge"):
            self.handlers[verb] = self._forward(verb)

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        require_net_admin("creating the TUN device")
        if s.api_group:
            try:
                localapi.group_id(s.api_group)
            except ValueError as exc:
                raise StartupError(f"{s.config_path}: client.{exc}", ExitCode.BAD_CONFIG) from None
        # Birthday probing against symmetric NATs keeps hundreds of sockets open for a while.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, max(soft, 2 * s.birthday_sockets + 256))
        if want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        try:
            self.tun = TunDevice(s.interface, s.mode, offload=s.offload)
        except Exception as exc:  # pytun.Error carries (errno, text)
            if getattr(exc, "args", (None,))[0] == 16:
                raise StartupError(f"interface {s.interface} is in use by another program; set [tunnel] interface "
                                   "to another name", ExitCode.IN_USE) from None
            raise
        addrs = [a for a in (s.address4, s.address6) if a is not None]
        routes = []
        for p in s.peers:
            for a in p.addresses:
                if not any(a.network.subnet_of(x.network) for x in addrs if x.version == a.version):
                    routes.append(a.network)
        self._netconf(addrs, routes)
        with binding("data (UDP)", "[tunnel] listen_port", s.listen_port):
            self.udp = UdpSocket("0.0.0.0", s.listen_port, offload=s.offload)
        if s.server is not None and s.stun_port:
            # Before the packet loop owns the socket: learn what NAT lies on the way (RFC 5780).
            self.nat = nat_discovery.run(self.udp.sock, (_resolve(s.server.host), s.stun_port))
            log.info("discovery: %s", self.nat.summary)
        aeads = fastest_first() if s.cipher == "auto" else (s.cipher,)
        log.info("data cipher: %s", " then ".join(aeads) if len(aeads) > 1 else f"{aeads[0]} only")
        tunnel = Tunnel(s.key, time.monotonic(), os.urandom, wall_offset=time.time() - time.monotonic(), aead=aeads)
        for p in s.peers:
            tunnel.add_peer(self._peer_config(p))
        self.overlay = addrs
        self._set_directed(tunnel)
        if s.peers and s.server is None:  # static peers form one implicit network, for broadcasts too
            tunnel.lan.set_networks([NetworkPolicy("static", "tun", frozenset({s.key.public, *(
                p.public_key for p in s.peers)}))])
        self.dataplane = DataPlane(self.tun, self.udp, tunnel)
        self.dataplane.start()
        if s.server is not None:
            self.control = ControlClient(
                s.key, [(ep.host, ep.port) for ep in s.servers], s.server_key, s.name, lambda: self.udp.port,
                on_welcome=self._on_welcome, on_peer_up=self._on_peer_up, on_peer_down=self._on_peer_down,
                report=self._discovery_report, fallback_ports=(s.fallback_port,), token=s.token,
                candidates=self._own_candidates, on_networks=self._on_networks)
        log.info("interface %s up (%s), listening on UDP %d, %d static peers, offload %s",
                 self.tun.name, ", ".join(map(str, addrs)), self.udp.port, len(s.peers),
                 self.dataplane.offload_status)

    def _netconf(self, addrs, routes=()) -> None:
        s = self.settings
        netconf.configure(self.tun.name, s.mtu, addrs, routes, lan=s.mode == "tun",
                          multicast_route=s.multicast_route, broadcast_route=s.broadcast_route)

    def _set_directed(self, tunnel: Tunnel) -> None:
        """The overlay's directed broadcast address(es): group packets like 255.255.255.255 (proto/lan)."""
        tunnel.lan.directed = frozenset(a.network.broadcast_address.packed for a in self.overlay
                                        if a.version == 4 and a.network.prefixlen <= 30)

    async def _on_networks(self, networks: dict) -> None:
        """The netmap changed: the LAN policy follows (members, mode, broadcast settings, bridges)."""
        policies = [NetworkPolicy.from_settings(
            n.name, n.mode, frozenset(m.public_key for m in n.members if m.state == "member"), dict(n.settings))
            for n in networks.values()]
        names = {m.public_key: m.nickname for n in networks.values() for m in n.members}

        def apply(t, now):
            t.lan.set_networks(policies)
            return [(k, nick) for k, nick in names.items() if t.rename_peer(k, nick)]

        for key, nick in await self._in_loop(apply):
            log.info("peer %s is now called %s", encode_key(key)[:10], nick)
        await self._sync_taps(networks)

    # -- TAP networks: one device each --------------------------------------------
    def tap_name(self, network: str) -> str:
        """A TAP network's device name: stable, from the network's name (IFNAMSIZ is 16 with the NUL)."""
        return f"{self.settings.interface[:8]}t{network_id(network).hex()[:6]}"

    async def _sync_taps(self, networks: dict) -> None:
        """A device for every TAP network we are a member of, host routes to its members; gone when we leave."""
        me = self.settings.key.public
        want: dict[bytes, tuple[str, set[str]]] = {}
        for n in networks.values():
            if n.mode != "tap" or not any(m.public_key == me and m.state == "member" for m in n.members):
                continue
            addrs = {a for m in n.members if m.public_key != me and m.state == "member"
                     for a in (m.address4, m.address6) if a}
            want[network_id(n.name)] = (n.name, addrs)
        for nid in [nid for nid in self.taps if nid not in want]:
            tap = self.taps.pop(nid)
            dev = await self._in_loop(lambda t, now, nid=nid: self.dataplane.remove_tap(nid))
            if dev is not None:
                dev.close()
            log.info("left TAP network %s: device %s removed", tap["network"], tap["device"].name)
        for nid, (name, addrs) in want.items():
            tap = self.taps.get(nid)
            if tap is None:
                try:
                    dev = await asyncio.to_thread(TunDevice, self.tap_name(name), "tap", False)
                    tap = {"network": name, "device": dev, "routes": set()}
                    await asyncio.to_thread(self._configure_tap, tap)
                except Exception as exc:  # noqa: BLE001 - a device we cannot make must not stop the client
                    log.warning("TAP network %s: cannot set up its device: %s", name, exc)
                    continue
                self.taps[nid] = tap
                await self._in_loop(lambda t, now, nid=nid, dev=dev: self.dataplane.add_tap(nid, dev))
                log.info("TAP network %s on %s, MAC %s", name, dev.name, format_mac(member_mac(me)))
            old = tap["routes"]
            if addrs != old:
                await asyncio.to_thread(netconf.tap_routes, tap["device"].name, addrs - old, old - addrs)
                tap["routes"] = addrs

    def _configure_tap(self, tap: dict) -> None:
        # Room for the Ethernet header, a VLAN tag and our LAN header (wire/lan.py) within the TUN's MTU.
        netconf.configure_tap(tap["device"].name, format_mac(member_mac(self.settings.key.public)),
                              self.settings.mtu - 28, self.overlay)

    def _peer_config(self, p: StaticPeer) -> PeerConfig:
        ep = (_resolve(p.endpoint.host), p.endpoint.port) if p.endpoint else None
        return PeerConfig(p.public_key, p.addresses, ep, p.keepalive, p.name)

    def stop(self) -> None:
        if self.dataplane is not None:
            self.dataplane.stop()
        if self.udp is not None:
            self.udp.close()
        if self.tun is not None:
            self.tun.close()
        if self.api_server is not None:  # never remove a socket another daemon made
            with contextlib.suppress(FileNotFoundError):
                self.settings.api_socket.unlink()

    # -- the seam for the control plane ----------------------------------------
    async def _in_loop(self, fn):
        return await asyncio.wrap_future(self.dataplane.call(fn))

    async def add_peer(self, cfg: PeerConfig) -> None:
        await self._in_loop(lambda t, now: t.add_peer(cfg) and None)

    async def remove_peer(self, public_key: bytes) -> None:
        sids = self.peer_relays.pop(public_key, [])

        def drop(t, now):
            t.remove_peer(public_key)
            for sid in sids:
                self.dataplane.remove_relay(sid)

        await self._in_loop(drop)

    async def set_endpoint(self, public_key: bytes, endpoint: tuple[str, int]) -> None:
        await self._in_loop(lambda t, now: t.set_endpoint(public_key, endpoint))

    # -- control-plane events ---------------------------------------------------
    async def _on_welcome(self, w) -> None:
        want = [ipaddress.ip_interface(f"{w.address4}/{w.prefix4}"), ipaddress.ip_interface(f"{w.address6}/{w.prefix6}")]
        if self.settings.address4 is None and want != self.overlay:
            await asyncio.to_thread(self._netconf, want)
            self.overlay = want
            await self._in_loop(lambda t, now: self._set_directed(t))
            for tap in self.taps.values():
                await asyncio.to_thread(self._configure_tap, tap)
            log.info("overlay addresses from the server: %s", ", ".join(map(str, want)))
        targets = {}
        for name, udp in w.relays:
            addr = _parse_hostport(udp)
            if addr is not None:
                targets[name] = addr
        # Reported in Discovery: the server gives each pair its relays ordered by these.
        self.relay_rtts = await stun_io.measure_rtts(targets)
        if targets:
            log.info("relay RTTs: %s", ", ".join(f"{n} {self.relay_rtts.get(n, 'no answer')} ms" for n in targets))

    def _discovery_report(self) -> dict:
        rep = {}
        if self.nat is not None:
            rep = {k: str(v).lower() for k, v in self.nat.to_dict().items() if v is not None}
            # The server checks our public endpoint and NAT mapping against what its own STUN
            # service saw for these probes (it ignores the claims above for that).
            rep.update({f"txid:{step}": txid.hex() for step, txid in self.nat.probes.items()})
        for name, ms in self.relay_rtts.items():
            rep[f"rtt:{name}"] = str(ms)
        return rep

    def _own_candidates(self) -> tuple[Candidate, ...]:
        """Our LAN addresses and a configured port forward (the server keeps what it can check)."""
        out = []
        pf = self.settings.port_forward
        if pf.enabled and pf.public_endpoint is not None:
            with contextlib.suppress(ValueError):
                out.append(Candidate(Candidate.FORWARDED, pf.public_endpoint.host, pf.public_endpoint.port))
        for a in netconf.local_ipv4_addresses({self.tun.name}):
            with contextlib.suppress(ValueError):
                out.append(Candidate(Candidate.LAN, a, self.udp.port))
        return tuple(out[:MAX_CANDIDATES])

    async def _on_peer_up(self, p) -> None:
        # Typed IP literals from the server; only those our socket's family can reach.
        family = 6 if self.udp.sock.family == socket.AF_INET6 else 4
        usable = [c for c in p.candidates if c.version == family]
        cands = [c.addr for c in usable]
        public = next((c.addr for c in usable if c.kind == Candidate.PUBLIC), None)
        addrs = (ipaddress.ip_interface(f"{p.address4}/32"), ipaddress.ip_interface(f"{p.address6}/128"))
        spray = await self._birthday(p, public)
        for offer in p.relays:
            cands.append(await self._relay(offer, p.side))
        self.peer_relays[p.public_key] = [session_id_of(o.ticket) for o in p.relays]
        await self.add_peer(PeerConfig(p.public_key, addrs, cands[0] if cands else None, self.settings.keepalive,
                                       p.nickname, tuple(cands[1:]), spray))
        log.info("tunnel to %s (%s) at %s", p.nickname, p.address4, ", ".join(map(str, usable)) or "?")

    async def _on_peer_down(self, p) -> None:
        if p.reason == "lost":
            # The server lost it, not us: keep the tunnel; keepalives tell whether it still works.
            return
        name = await self._in_loop(lambda t, now: t.peers[p.public_key].name if p.public_key in t.peers else "")
        await self.remove_peer(p.public_key)
        log.info("tunnel to %s dropped (%s)", name or encode_key(p.public_key)[:10], p.reason)

    async def _relay(self, offer, side: int) -> tuple[str, int]:
        """Bind our side of the pair's session at one relay (UDP first, TCP 443 if UDP gets no answer)."""
        sid = session_id_of(offer.ticket)
        link = RelayLink(sid, side, offer.ticket, _parse_hostport(offer.udp), _parse_hostport(offer.tcp),
                         now=time.monotonic(), udp_blocked=self.nat is not None and self.nat.udp is False)
        link.name = offer.name
        pseudo = await self._in_loop(lambda t, now: self.dataplane.add_relay(link))
        if link.tcp_addr is not None:
            asyncio.create_task(self._relay_fallback(link))
        return pseudo

    async def _relay_fallback(self, link: RelayLink) -> None:
        """Connect the session over TCP whenever its transport policy (proto/relaypath.py) asks for it;
        ends when the session is dropped."""
        warned = False
        sid = link.sid
        started = time.monotonic()
        while (need := await self._in_loop(lambda t, now: self.dataplane.relay_tcp_wanted(sid, now))) is not None:
            if need:
                try:
                    sock = await asyncio.to_thread(socket.create_connection, link.tcp_addr, 3.0)
                except OSError as exc:
                    if not warned:
                        log.warning("relay %s unreachable over UDP and TCP: %s", link.name or link.tcp_addr, exc)
                    warned = True
                    await self._in_loop(lambda t, now: self.dataplane.relay_tcp_failed(sid, now))
                else:
                    await self._in_loop(lambda t, now, sock=sock: self.dataplane.attach_tcp(sid, sock))
                    log.info("relay session %s at %s over TCP %s:%d", sid.hex(), link.name, *link.tcp_addr)
                    warned = False
            # Quick at first (time to the first packet at an HTTPS-only site), then relaxed.
            await asyncio.sleep(0.25 if time.monotonic() - started < 5.0 else 2.0)

    async def _birthday(self, p, endpoint) -> int:
        """Birthday-paradox probing where one side is behind a symmetric NAT and the other filters.

        The symmetric side opens many sockets toward the peer's (stable) mapping; the other side
        probes as many random ports on the symmetric NAT's address. Returns how many random ports
        to probe (0: not our part).
        """
        mine = self.nat
        peer_map, _, peer_filter = (p.nat or "/").partition("/")
        if mine is None or endpoint is None or not peer_map:
            return 0
        symmetric = "address-and-port-dependent"
        if mine.mapping == symmetric and peer_map != symmetric and peer_filter != "endpoint-independent":
            n = self.settings.birthday_sockets
            if n:
                opened = await self._in_loop(lambda t, now: self.dataplane.open_probes(n, endpoint, now))
                log.info("symmetric NAT: probing %s from %d sockets", p.nickname, opened)
            return 0
        if peer_map == symmetric and mine.mapping != symmetric and mine.filtering != "endpoint-independent":
            log.info("%s is behind a symmetric NAT: probing %d random ports", p.nickname,
                     self.settings.birthday_probes)
            return self.settings.birthday_probes
        return 0

    def _forward(self, verb: str):
        async def handler(args: dict) -> dict:
            if self.control is None:
                raise localapi.ApiError("this client has no server configured (static peers only)")
            try:
                reply = await self.control.request(verb, **{k: str(v) for k, v in args.items() if v is not None})
            except (TimeoutError, ConnectionError) as exc:
                raise localapi.ApiError(f"the server did not answer: {exc}") from exc
            if not reply.ok:
                raise localapi.ApiError(reply.error)
            if reply.ok == 2:  # accepted, not done yet: a join waiting for the owner's approval
                return {"ok": True, "pending": True, "note": reply.error}
            return {"ok": True}
        return handler

    async def _api_networks(self, args: dict) -> dict:
        if self.control is None:
            return {"networks": []}
        nets = []
        for n in sorted(self.control.networks.values(), key=lambda n: n.name):
            nets.append({"name": n.name, "owner": encode_key(n.owner), "mode": n.mode, "locked": bool(n.locked),
                         "approval": bool(n.approval), "max_members": n.max_members,
                         "password": n.setting("password") == "yes",
                         "pending": any(m.public_key == self.settings.key.public and m.state == "pending"
                                        for m in n.members),
                         "members": [{"nickname": m.nickname, "public_key": encode_key(m.public_key),
                                      "address4": m.address4, "address6": m.address6, "state": m.state,
                                      "online": bool(m.online), "owner": m.public_key == n.owner}
                                     for m in n.members]})
        return {"networks": nets}

    async def _api_doctor(self, args: dict) -> dict:
        """Plain-language findings: the NAT, and for each peer its path or why there is none."""
        st = await self._api_status({})
        port = st["listen"]
        lan = netconf.local_ipv4_addresses({self.tun.name})
        here = lan[0] if lan else "this machine"
        fix_forward = (f"forward UDP {port} on your router to {here}:{port} and set [port_forward] "
                       f"enabled = true, public_endpoint = \"<your public IP>:{port}\", listen_port = {port}")
        findings = []
        nat = self.nat
        if self.control is not None and not st["server_connected"]:
            findings.append({"topic": "server", "ok": False,
                             "text": f"not connected to the server {st['server']}: {st['server_error'] or 'connecting'}"})
        elif self.control is not None:
            via = self.control.via
            text = f"connected to the server over TCP port {via[1]}"
            if via != self.control.server:
                text += (f" (port {self.control.server[1]} did not answer: this site seems to let only some "
                         "ports out)")
            findings.append({"topic": "server", "ok": True, "text": text})
        if nat is None:
            findings.append({"topic": "nat", "ok": True, "text": "no NAT discovery (static peers only)"})
        elif nat.udp is False:
            findings.append({"topic": "nat", "ok": False, "text": "UDP to the server is blocked here, so no "
                             "direct tunnel can form; allow outgoing UDP, or " + fix_forward})
        else:
            ok = nat.mapping != "address-and-port-dependent"
            text = nat.summary
            if not ok:
                text += ("; a symmetric NAT gives every peer a different port, so peers behind strict NATs "
                         "cannot reach you directly; " + fix_forward)
            findings.append({"topic": "nat", "ok": ok, "text": text})
        for p in st["peers"]:
            name = p["name"] or p["public_key"][:10]
            why = ("both sides may be behind NATs that will not let the other in (for example both symmetric, "
                   "or a firewall that lets no UDP out)" if nat is not None and nat.nat
                   else "the peer's NAT or firewall does not let our packets in")
            rtt = f"RTT {p['rtt_ms']:.1f} ms" if p["rtt_ms"] is not None else "RTT not measured yet"
            hs = p["last_handshake_ago"]
            if p["path"] == "direct":
                findings.append({"topic": name, "ok": True, "text": f"direct path via {p['endpoint']}, {rtt}, "
                                 + (f"last handshake {hs:.0f}s ago" if hs is not None else "no handshake yet")})
            elif p["path"] == "relayed":
                findings.append({"topic": name, "ok": True, "text": f"relayed via {p['relay']} (still end-to-end "
                                 f"encrypted), {rtt}: "
                                 f"no direct path because {why}; still trying direct every "
                                 f"few seconds; to go direct: {fix_forward} (on either side)"})
            else:
                findings.append({"topic": name, "ok": False,
                                 "text": f"no path yet (tried {p['endpoint'] or 'no endpoint'}): {why}; "
                                         f"fix: {fix_forward} (on either side)"})
        for n in st.get("networks") or []:
            if n.get("broadcast_rate"):
                findings.append({"topic": n["name"], "ok": False, "text": (
                    f"{n['broadcast_rate']} broadcast/multicast packets dropped by the rate limit "
                    f"({n['rate_pps']:g} packets/s, {n['rate_bps']:g} bytes/s per sender): something floods the "
                    f"network; the owner can raise it with `hamachi client broadcast {n['name']} on --pps N`")})
        return {"findings": findings, "nat": st.get("nat")}

    # -- local API -------------------------------------------------------------
    async def _api_ping(self, args: dict) -> dict:
        """One ICMP echo to a peer's overlay address, and the path the tunnel used for it."""
        who = str(args.get("peer") or "")
        st = await self._api_status({})
        peer = next((p for p in st["peers"] if who and (who == p["name"] or p["public_key"].startswith(who) or any(
            a.split("/")[0] == who for a in p["addresses"]))), None)
        if peer is None:
            raise localapi.ApiError(f"no peer {who!r} (give a nickname, an overlay address or a key; "
                                    "`hamachi client peers` lists them)")
        address = next((a.split("/")[0] for a in peer["addresses"] if ":" not in a), None)
        if address is None:
            raise localapi.ApiError(f"{who!r} has no IPv4 overlay address to ping")
        try:
            rtt = await icmp.echo(address, int(args.get("seq") or 1), float(args.get("timeout") or 2.0))
        except OSError as exc:
            raise localapi.ApiError(f"cannot send ICMP echo: {exc.strerror or exc}", 5) from None
        after = next((p for p in (await self._api_status({}))["peers"] if p["public_key"] == peer["public_key"]),
                     peer)
        lan = False
        if after["path"] == "direct" and after["endpoint"]:
            host = after["endpoint"].rsplit(":", 1)[0].strip("[]")
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(host)
                lan = any(ip in i.network for i in await asyncio.to_thread(
                    netconf.local_ipv4_interfaces, {self.tun.name}) if i.network.prefixlen < 32)
        return {"peer": after["name"] or after["public_key"][:10], "address": address,
                "rtt_ms": None if rtt is None else round(rtt * 1000, 2), "path": after["path"],
                "endpoint": after["endpoint"], "relay": after.get("relay"), "lan": lan}

    async def _api_status(self, args: dict) -> dict:
        s = self.settings
        snap, links, lan, taps = await self._in_loop(lambda t, now: (
            t.stats(now), self.dataplane.relay_links(), t.lan.stats(), self.dataplane.tap_stats()))
        for n in lan:
            n["device"] = taps.get(network_id(n["name"])) if n["mode"] == "tap" else None
            if n["mode"] == "tap":
                n["mac"] = format_mac(member_mac(s.key.public))
        by_session = {f"relay:{lk['session']}": lk for lk in links}
        for p in snap["peers"]:
            lk = by_session.get(p["endpoint"])
            p["relay"] = f"{lk['relay']} ({lk['transport']})" if lk and p["path"] == "relayed" else None
        drops = dict(snap["drops"])
        for k, v in self.dataplane.drops.items():
            drops[k] = drops.get(k, 0) + v
        if self.udp.send_errors:
            drops["send_error"] = drops.get("send_error", 0) + self.udp.send_errors
        return {
            "interface": self.tun.name,
            "mode": s.mode,
            "addresses": [str(a) for a in self.overlay],
            "public_key": s.key.public_text(),
            "listen": self.udp.port,
            "offload": self.dataplane.offload_status,
            "fastpath": "c" if _accel.fast is not None else f"python: the C fast path is {_accel.why_not}",
            "server": str(s.server) if s.server else None,
            "server_connected": bool(self.control and self.control.connected),
            "server_error": self.control.last_error if self.control else "",
            "server_port": self.control.via[1] if self.control and self.control.connected and self.control.via
            else None,
            "nat": self.nat.to_dict() if self.nat else None,
            "nat_summary": self.nat.summary if self.nat else None,
            "peers": snap["peers"],
            "relays": {"rtt_ms": self.relay_rtts, "sessions": links},
            "networks": lan,
            "drops": drops,
        }

    async def _metrics(self) -> list:
        """Tunnel bytes and packets per peer and path state, drops by reason (from `status`)."""
        st = await self._api_status({})
        peers = st["peers"]
        states: dict[str, int] = {}
        for p in peers:
            states[p["path"]] = states.get(p["path"], 0) + 1
        traffic: dict[str, list] = {"bytes": [], "packets": []}
        for p in peers:
            labels = (p["name"] or p["public_key"][:10], p["path"])
            for n, samples in traffic.items():
                samples += [(labels + (d,), p[f"{d}_{n}"]) for d in ("rx", "tx")]
        return [
            X.gauge("hamachi_client_server_connected", "1 while logged in to the control server",
                    int(st["server_connected"])),
            X.gauge("hamachi_client_peers", "Peers by path state", labels=("path",),
                    samples=(((k,), v) for k, v in sorted(states.items()))),
            *(X.counter(f"hamachi_client_tunnel_{n}", f"Tunnel {n} per peer and path state",
                        labels=("peer", "path", "direction"), samples=samples) for n, samples in traffic.items()),
            X.by_reason("hamachi_client_drops", "Packets dropped, by reason", st["drops"]),
        ]

    async def serve(self) -> None:
        self.api_server = await localapi.serve(self.settings.api_socket, self.handlers, self.settings.api_group,
                                               READ_VERBS)
        exporter = await X.serve(self.settings.metrics, "[client] metrics", self._metrics)
        control_task = asyncio.create_task(self.control.run()) if self.control else None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if control_task is not None:
            if self.control.connected:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.control.request("bye"), 2.0)
            control_task.cancel()
        if exporter is not None:
            exporter.close()
        self.api_server.close()


def run(settings: ClientSettings) -> int:
    lock = InstanceLock(settings.api_socket, "client").acquire()
    daemon = ClientDaemon(settings)
    try:
        daemon.start()
        asyncio.run(daemon.serve())
    finally:
        daemon.stop()
        lock.release()
    log.info("stopped")
    return 0
