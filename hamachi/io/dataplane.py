"""The packet loop: TUN <-> Tunnel core <-> UDP, in its own thread with epoll.

Per-packet asyncio callbacks cost too much (about 230 Mbit/s measured), so
the packet path runs here, in one tight loop that owns the Tunnel; asyncio
(control plane, local API) talks to it only through `call()`, which runs a
function in this thread between batches and returns a Future.

One pass of the loop:
  TUN readable -> read super-packets -> split (TSO) -> route -> seal each
                  segment -> one GSO sendmsg per peer
  UDP readable -> one GRO recvmsg -> open each datagram -> coalesce TCP runs
                  -> one TUN write per run
  timers       -> Tunnel.handle_timer(now), flush handshakes/keepalives
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from hamachi.io.tun import TunDevice
from hamachi.io.udp import UdpSocket
from hamachi.proto import offload
from hamachi.proto.relaypath import RelayTransport
from hamachi.proto.tunnel import Tunnel, inner_destination
from hamachi.wire import relay as R

REBIND_RETRY = 2.0  # an unbound relay session asks again this often (a relay may drop binds in a burst)
REBIND_REFRESH = 20.0  # a bound one re-binds this often: keeps the relay session and our NAT mapping
# alive, and binds again to a relay that restarted and forgot us


class RelayLink:
    """Our side of one relay session: bound over UDP, or over TCP 443 where UDP cannot reach the relay."""

    def __init__(self, sid: bytes, side: int, ticket: bytes, udp: tuple[str, int] | None, tcp: tuple[str, int] | None,
                 *, now: float = 0.0, udp_blocked: bool = False):
        self.sid, self.side, self.ticket, self.udp, self.tcp_addr = sid, side, ticket, udp, tcp
        self.path = RelayTransport(now, udp=udp is not None, tcp=tcp is not None, udp_blocked=udp_blocked)
        self.tcp = None
        self.buf = bytearray()
        self.bound = False
        self.pseudo = (f"relay:{sid.hex()}", 0)
        self.header = R.data_header(sid)
        self.name = ""
        self.last_bind = float("-inf")
        self.last_bound = float("-inf")
        # Spread re-binds of many sessions over time (a relay limits binds per source address).
        self.jitter = int.from_bytes(sid[:2] or b"\0\0", "big") / 65536 * REBIND_RETRY

    def bind_message(self) -> bytes:
        return R.Bind(self.side, self.ticket).encode()

log = logging.getLogger("hamachi.dataplane")

TUN_BURST = 64  # super-packets read per wake-up before looking at the socket again
UDP_BURST = 64
FLUSH_PACKETS = 128  # inner packets gathered from the TUN before they are sealed and sent


class DataPlane:
    def __init__(self, tun: TunDevice, udp: UdpSocket, tunnel: Tunnel,
                 extra_handlers: dict[int, Callable[[bytes, tuple[str, int], float], None]] | None = None):
        self.tun = tun
        self.udp = udp
        self.tunnel = tunnel
        self.drops: Counter = Counter()
        self.extra_handlers = extra_handlers or {}
        self._calls: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = False
        self._thread = threading.Thread(target=self._run_maybe_profiled, name="hamachi-dataplane", daemon=True)
        self._ep: select.epoll | None = None
        # Birthday probing (we are behind a symmetric NAT): a pool of extra sockets, each holding its
        # own NAT mapping toward the peers in `probe_targets`; the socket a peer's packet arrives on is
        # the one its traffic must leave from afterwards (`addr_sock`).
        self.pool: dict[int, UdpSocket] = {}
        self.probe_targets: set[tuple[str, int]] = set()
        self.addr_sock: dict[tuple[str, int], UdpSocket] = {}
        self.probe_deadline = 0.0
        # Relay sessions, by the pseudo-address the core uses for "this peer, through its relay".
        self.links: dict[tuple[str, int], RelayLink] = {}
        self.links_by_sid: dict[bytes, RelayLink] = {}
        self.relay_udp: set[tuple[str, int]] = set()
        self.tcp_fds: dict[int, RelayLink] = {}
        self._last_upkeep = float("-inf")
        # TAP devices, one per Ethernet network we are in (by network id, see wire/lan.py), with
        # their frame counters; added and removed through call() as the netmap changes.
        self.taps: dict[bytes, TunDevice] = {}
        self.tap_fds: dict[int, bytes] = {}
        self.tap_counters: dict[bytes, Counter] = {}

    # -- control from other threads -------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake()
        self._thread.join(timeout=5)

    def call(self, fn: Callable[[Tunnel, float], Any]) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.append((fn, fut))
        self._wake()
        return fut

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    @property
    def offload_status(self) -> dict[str, bool]:
        return {"tun_tso": self.tun.tso, "tun_uso": self.tun.uso, "udp_gso": self.udp.gso, "udp_gro": self.udp.gro}

    # -- birthday probing (runs in the loop thread, through call()) --------------------
    def open_probes(self, n: int, target: tuple[str, int], now: float, seconds: float = 60.0) -> int:
        while len(self.pool) < n:
            try:
                sock = UdpSocket("0.0.0.0", 0, offload=False)
            except OSError:  # out of file descriptors: probe with what we have
                break
            self.pool[sock.fileno()] = sock
            self._ep.register(sock.fileno(), select.EPOLLIN)
        self.probe_targets.add(target)
        self.probe_deadline = max(self.probe_deadline, now + seconds)
        return len(self.pool)

    def _close_losers(self) -> None:
        winners = {id(s) for s in self.addr_sock.values()}
        for fd, sock in list(self.pool.items()):
            if id(sock) not in winners:
                self._ep.unregister(fd)
                sock.close()
                del self.pool[fd]
        self.probe_targets.clear()

    def _sock_for(self, addr) -> UdpSocket:
        return self.addr_sock.get(addr, self.udp)

    # -- relays (loop thread) ------------------------------------------------------
    def add_relay(self, link: RelayLink) -> tuple[str, int]:
        old = self.links_by_sid.get(link.sid)
        if old is not None:
            return old.pseudo
        self.links[link.pseudo] = link
        self.links_by_sid[link.sid] = link
        if link.udp is not None:
            self.relay_udp.add(link.udp)
        self._rebind(link, time.monotonic())
        return link.pseudo

    def _rebind(self, link: RelayLink, now: float) -> None:
        link.last_bind = now
        if link.tcp is not None:
            self._tcp_send(link, link.bind_message())
        elif link.udp is not None:
            self.udp.send_batch([link.bind_message()], link.udp)

    def _relay_upkeep(self, now: float) -> None:
        for link in self.links.values():
            if link.bound and now - link.last_bound > REBIND_REFRESH + REBIND_RETRY * 2:
                link.bound = False  # no Bound for our last refresh: the relay is gone or forgot us
                link.path.unbound(now)
            if link.tcp is not None and link.path.udp_retry_due(now):
                self.udp.send_batch([link.bind_message()], link.udp)  # TCP is the last resort: is UDP back?
            due = REBIND_REFRESH if link.bound else REBIND_RETRY + link.jitter
            if now - link.last_bind >= due:
                self._rebind(link, now)

    def remove_relay(self, sid: bytes) -> None:
        link = self.links_by_sid.pop(sid, None)
        if link is None:
            return
        self.links.pop(link.pseudo, None)
        self._close_tcp(link)

    def _close_tcp(self, link: RelayLink) -> None:
        if link.tcp is not None:
            self._ep.unregister(link.tcp.fileno())
            self.tcp_fds.pop(link.tcp.fileno(), None)
            link.tcp.close()
            link.tcp = None

    def relay_links(self) -> list[dict]:
        return [{"relay": link.name, "session": link.sid.hex(), "bound": link.bound,
                 "transport": "tcp" if link.tcp is not None else "udp"} for link in self.links.values()]

    def relay_tcp_wanted(self, sid: bytes, now: float) -> bool | None:
        """Should the shell connect this session over TCP now? None: the session is gone."""
        link = self.links_by_sid.get(sid)
        if link is None:
            return None
        return link.tcp is None and link.path.tcp_wanted(now)

    def relay_tcp_failed(self, sid: bytes, now: float) -> None:
        link = self.links_by_sid.get(sid)
        if link is not None:
            link.path.tcp_failed(now)

    def attach_tcp(self, sid: bytes, sock) -> None:
        link = self.links_by_sid.get(sid)
        if link is None:
            sock.close()
            return
        sock.setblocking(False)
        link.tcp = sock
        self.tcp_fds[sock.fileno()] = link
        self._ep.register(sock.fileno(), select.EPOLLIN)
        now = time.monotonic()
        link.path.tcp_up(now)
        self._rebind(link, now)

    def _tcp_send(self, link: RelayLink, msg: bytes) -> None:
        try:
            link.tcp.send(len(msg).to_bytes(2, "big") + msg)
        except (BlockingIOError, OSError):
            self.drops["relay_tcp_full"] += 1

    # -- TAP devices (loop thread) -----------------------------------------------------
    def add_tap(self, nid: bytes, dev: TunDevice) -> None:
        old = self.taps.get(nid)
        if old is dev:
            return
        if old is not None:
            self.remove_tap(nid)
        self.taps[nid] = dev
        self.tap_fds[dev.fileno()] = nid
        self.tap_counters.setdefault(nid, Counter())
        self._ep.register(dev.fileno(), select.EPOLLIN)

    def remove_tap(self, nid: bytes) -> TunDevice | None:
        """Stop using a network's device; the caller closes it."""
        dev = self.taps.pop(nid, None)
        if dev is not None:
            self.tap_fds.pop(dev.fileno(), None)
            self._ep.unregister(dev.fileno())
        self.tap_counters.pop(nid, None)
        return dev

    def tap_stats(self) -> dict[bytes, dict]:
        return {nid: {"device": dev.name, **{k: self.tap_counters[nid][k] for k in (
            "rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "write_errors")}}
                for nid, dev in self.taps.items()}

    def _from_tap(self, nid: bytes, now: float) -> None:
        """Frames read from a TAP network's device -> switched (proto/lan.py) -> sealed per member."""
        dev = self.taps[nid]
        c = self.tap_counters[nid]
        tunnel = self.tunnel
        batches: dict = {}
        held = 0
        for _ in range(TUN_BURST):
            try:
                frame = dev.read()
            except BlockingIOError:
                break
            c["rx_frames"] += 1
            c["rx_bytes"] += len(frame)
            for peer, m in tunnel.frame_copies(nid, frame, now):
                lst = batches.get(peer)
                if lst is None:
                    batches[peer] = lst = []
                lst.append(m)
                held += 1
            if held >= FLUSH_PACKETS:
                self._seal_and_send(batches, now)
                held = 0
        self._seal_and_send(batches, now)

    def _write_frames(self) -> None:
        """Accepted frames from peers, each to its own network's device only."""
        frames = self.tunnel.frames_in
        taps, counters = self.taps, self.tap_counters
        for nid, frame in frames:
            dev = taps.get(nid)
            if dev is None:
                self.drops["tap_missing"] += 1
                continue
            c = counters[nid]
            try:
                dev.write(frame)
            except OSError:
                c["write_errors"] += 1
                self.drops["tap_write_error"] += 1
                continue
            c["tx_frames"] += 1
            c["tx_bytes"] += len(frame)
        frames.clear()

    def _send(self, datagrams: list[bytes], addr) -> None:
        """Send to one destination; whatever goes wrong with it costs only these datagrams."""
        try:
            self._send_to(datagrams, addr)
        except Exception:  # noqa: BLE001 - e.g. an unhashable or malformed address from a bug upstream
            self.drops["send_error"] += len(datagrams)
            log.debug("data plane: send to %r failed", addr, exc_info=True)

    def _send_to(self, datagrams: list[bytes], addr) -> None:
        link = self.links.get(addr)
        if link is None:
            self._sock_for(addr).send_batch(datagrams, addr)
            if addr in self.probe_targets and addr not in self.addr_sock:
                for sock in self.pool.values():  # one NAT mapping per pool socket
                    sock.send_batch(datagrams, addr)
        elif link.tcp is not None:
            for d in datagrams:
                self._tcp_send(link, link.header + d)
        elif link.udp is not None:
            self.udp.send_batch([link.header + d for d in datagrams], link.udp)

    def _from_relay(self, msg: bytes, now: float, inner: list[bytes], via_udp: bool = False) -> None:
        """A relay message (Bound or Data) -> bind state, or the carried datagram into the core."""
        if msg[0] == R.TYPE_BOUND and len(msg) >= 9:
            link = self.links_by_sid.get(msg[1:9])
            if link is not None:
                was = link.bound
                link.bound = True
                link.last_bound = now
                if link.path.on_bound(via_udp, now):
                    # UDP works again (the relay restarted, a firewall changed): leave TCP.
                    self._close_tcp(link)
                    self._rebind(link, now)
                    log.info("relay session %s back on UDP", link.sid.hex())
                if not was:
                    self.tunnel.relay_ready(link.pseudo, now)
            return
        if msg[0] != R.TYPE_DATA or len(msg) < 10:
            self.drops["relay_malformed"] += 1
            return
        link = self.links_by_sid.get(msg[1:9])
        if link is None:
            self.drops["relay_unknown_session"] += 1
            return
        self.tunnel.open_batch([msg[9:]], link.pseudo, now, inner, self._other)

    def _from_tcp(self, link: RelayLink, now: float) -> None:
        try:
            data = link.tcp.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_tcp(link)
            link.bound = False
            link.path.tcp_lost(now)
            return
        buf = link.buf
        buf += data
        inner: list[bytes] = []
        while len(buf) >= 2:
            n = int.from_bytes(buf[:2], "big")
            if len(buf) < 2 + n:
                break
            msg = bytes(buf[2 : 2 + n])
            del buf[: 2 + n]
            if msg:
                self._from_relay(msg, now, inner)
        self._write_inner(inner)

    # -- the loop --------------------------------------------------------------
    def _run_maybe_profiled(self) -> None:
        """HAMACHI_PROFILE=FILE: profile the packet loop (cProfile) and write the stats there at exit."""
        path = os.environ.get("HAMACHI_PROFILE")
        if not path:
            self._run()
            return
        import cProfile

        prof = cProfile.Profile()
        try:
            prof.runcall(self._run)
        finally:
            prof.dump_stats(path)

    def _run(self) -> None:
        ep = select.epoll()
        self._ep = ep
        tun_fd, udp_fd = self.tun.fileno(), self.udp.fileno()
        ep.register(tun_fd, select.EPOLLIN)
        ep.register(udp_fd, select.EPOLLIN)
        ep.register(self._wake_r, select.EPOLLIN)
        clock = time.monotonic
        tunnel = self.tunnel
        next_timer = 0.0
        try:
            while not self._stop:
                now = clock()
                t = tunnel.next_timer()
                next_timer = min(t, now + 1.0) if t is not None else now + 1.0
                events = ep.poll(max(0.0, next_timer - now))
                now = clock()
                for fd, _ in events:
                    try:
                        if fd == udp_fd:
                            self._from_udp(now, self.udp)
                        elif fd == tun_fd:
                            self._from_tun(now)
                        elif fd in self.pool:
                            self._from_udp(now, self.pool[fd])
                        elif fd in self.tcp_fds:
                            self._from_tcp(self.tcp_fds[fd], now)
                        elif fd in self.tap_fds:
                            self._from_tap(self.tap_fds[fd], now)
                        else:
                            self._run_calls(now)
                    except Exception:  # one bad packet must never stop the tunnel
                        self._internal_error()
                try:
                    if now >= next_timer:
                        tunnel.handle_timer(now)
                        if self.pool and now > self.probe_deadline:
                            self._close_losers()
                    if self.links and now - self._last_upkeep >= 1.0:
                        self._last_upkeep = now
                        self._relay_upkeep(now)
                    self._flush()
                except Exception:
                    self._internal_error()
        finally:
            for sock in self.pool.values():
                sock.close()
            for dev in self.taps.values():
                dev.close()
            ep.close()

    def _internal_error(self) -> None:
        self.drops["internal_error"] += 1
        if self.drops["internal_error"] <= 10:
            log.exception("data plane: unexpected error (packet dropped, loop continues)")

    def _run_calls(self, now: float) -> None:
        try:
            while True:
                os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        while self._calls:
            fn, fut = self._calls.popleft()
            try:
                fut.set_result(fn(self.tunnel, now))
            except Exception as exc:  # handed back to the caller
                fut.set_exception(exc)

    def _flush(self) -> None:
        for d, addr in self.tunnel.datagrams_to_send():
            self._send([d], addr)

    def _from_tun(self, now: float) -> None:
        """Read what the TUN has (up to TUN_BURST reads), then seal and send per peer: many small
        packets to one peer leave in one GSO sendmsg, not one syscall each."""
        tun, tunnel, vnet = self.tun, self.tunnel, self.tun.vnet
        read, single = tun.read, offload.single
        lan = tunnel.lan
        batches: dict = {}
        held = 0
        last_dst, last_peer = None, None
        for _ in range(TUN_BURST):
            try:
                buf = read()
            except BlockingIOError:
                break
            multi = None
            if vnet:
                pkt = single(buf)
                if pkt is None:
                    try:
                        multi = offload.split(buf)
                    except offload.OffloadError as exc:
                        self.drops[exc.reason] += 1
                        continue
                    pkt = multi[0]
            else:
                pkt = buf
            dst = inner_destination(pkt)
            if dst is None:
                self.drops["malformed_inner"] += 1
                continue
            if dst != last_dst:  # a burst is mostly for one peer: route once
                last_dst, last_peer = dst, tunnel.route_peer(dst)
            peer = last_peer
            if peer is None:
                if lan.is_group(pkt):  # broadcast/multicast: a copy for each co-member
                    for seg in multi or (pkt,):
                        for cp, m in tunnel.group_copies(seg, now):
                            lst = batches.get(cp)
                            if lst is None:
                                batches[cp] = lst = []
                            lst.append(m)
                            held += 1
                else:
                    tunnel.drops["no_route"] += 1
                continue
            lst = batches.get(peer)
            if lst is None:
                batches[peer] = lst = []
            if multi is None:
                lst.append(pkt)
                held += 1
            else:
                lst += multi
                held += len(multi)
            if held >= FLUSH_PACKETS:  # bulk TCP: send as we go, do not sit on megabytes
                self._seal_and_send(batches, now)
                held = 0
        self._seal_and_send(batches, now)

    def _seal_and_send(self, batches: dict, now: float) -> None:
        for peer, packets in batches.items():
            sealed = self.tunnel.seal_for(peer, packets, now)
            if sealed:
                self._send(sealed, peer.endpoint)
        batches.clear()

    def _other(self, d: bytes, addr, now: float, inner: list[bytes]) -> None:
        """Anything but a data message: a handler the role registered (STUN...), else the core."""
        if d and d[0] in self.extra_handlers:
            self.extra_handlers[d[0]](d, addr, now)
        else:
            inner.extend(self.tunnel.receive(d, addr, now))

    def _write_inner(self, inner: list[bytes]) -> None:
        if self.tunnel.frames_in:
            self._write_frames()
        if not inner:
            return
        if self.tun.vnet:
            for w in offload.coalesce(inner, udp=self.tun.uso):
                _write(self.tun, w, self.drops)
        else:
            for p in inner:
                _write(self.tun, offload.finish_tcp(p), self.drops)

    def _from_udp(self, now: float, udp: UdpSocket) -> None:
        tunnel = self.tunnel
        pooled = udp is not self.udp
        for _ in range(UDP_BURST):
            got = udp.recv_batch()
            if got is None:
                return
            datagrams, addr = got
            if pooled and addr in self.probe_targets:
                self.addr_sock[addr] = udp  # this socket's mapping is the one the peer got through
            inner: list[bytes] = []
            if addr in self.relay_udp:
                for d in datagrams:
                    if d and d[0] in (R.TYPE_DATA, R.TYPE_BOUND):
                        self._from_relay(d, now, inner, via_udp=True)
                    else:
                        tunnel.open_batch([d], addr, now, inner, self._other)
            else:
                tunnel.open_batch(datagrams, addr, now, inner, self._other)
            self._write_inner(inner)
            if tunnel._out:
                self._flush()


def _write(tun: TunDevice, data: bytes, drops: Counter) -> None:
    try:
        tun.write(data)
    except BlockingIOError:
        drops["tun_full"] += 1
    except OSError as exc:
        drops["tun_write_error"] += 1
        log.debug("tun write failed: %s", exc)
