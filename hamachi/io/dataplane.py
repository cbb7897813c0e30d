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
from hamachi.proto.tunnel import Tunnel, inner_destination
from hamachi.wire.transport import TYPE_DATA

log = logging.getLogger("hamachi.dataplane")

TUN_BURST = 64  # super-packets read per wake-up before looking at the socket again
UDP_BURST = 64


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
        self._thread = threading.Thread(target=self._run, name="hamachi-dataplane", daemon=True)
        self._ep: select.epoll | None = None
        # Birthday probing (we are behind a symmetric NAT): a pool of extra sockets, each holding its
        # own NAT mapping toward the peers in `probe_targets`; the socket a peer's packet arrives on is
        # the one its traffic must leave from afterwards (`addr_sock`).
        self.pool: dict[int, UdpSocket] = {}
        self.probe_targets: set[tuple[str, int]] = set()
        self.addr_sock: dict[tuple[str, int], UdpSocket] = {}
        self.probe_deadline = 0.0

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
        return {"tun_tso": self.tun.tso, "udp_gso": self.udp.gso, "udp_gro": self.udp.gro}

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

    # -- the loop --------------------------------------------------------------
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
                        else:
                            self._run_calls(now)
                    except Exception:  # one bad packet must never stop the tunnel
                        self._internal_error()
                try:
                    if now >= next_timer:
                        tunnel.handle_timer(now)
                        if self.pool and now > self.probe_deadline:
                            self._close_losers()
                    self._flush()
                except Exception:
                    self._internal_error()
        finally:
            for sock in self.pool.values():
                sock.close()
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
        out = self.tunnel.datagrams_to_send()
        for d, addr in out:
            self._sock_for(addr).send_batch([d], addr)
            if addr in self.probe_targets and addr not in self.addr_sock:
                for sock in self.pool.values():  # one NAT mapping per pool socket
                    sock.send_batch([d], addr)

    def _from_tun(self, now: float) -> None:
        tun, tunnel, vnet = self.tun, self.tunnel, self.tun.vnet
        for _ in range(TUN_BURST):
            try:
                buf = tun.read()
            except BlockingIOError:
                return
            if vnet:
                try:
                    packets = offload.split(buf)
                except offload.OffloadError as exc:
                    self.drops[exc.reason] += 1
                    continue
            else:
                packets = [buf]
            dst = inner_destination(packets[0])
            if dst is None:
                self.drops["malformed_inner"] += 1
                continue
            peer = tunnel.route_peer(dst)
            if peer is None:
                tunnel.drops["no_route"] += 1
                continue
            sealed = tunnel.seal_for(peer, packets, now)
            if sealed:
                self._sock_for(peer.endpoint).send_batch(sealed, peer.endpoint)

    def _from_udp(self, now: float, udp: UdpSocket) -> None:
        tunnel, tun, vnet = self.tunnel, self.tun, self.tun.vnet
        pooled = udp is not self.udp
        open_ = tunnel.open
        for _ in range(UDP_BURST):
            got = udp.recv_batch()
            if got is None:
                return
            datagrams, addr = got
            if pooled and addr in self.probe_targets:
                self.addr_sock[addr] = udp  # this socket's mapping is the one the peer got through
            inner: list[bytes] = []
            for d in datagrams:
                if d and d[0] == TYPE_DATA:
                    r = open_(d, addr, now)
                    if r is not None and r[1]:
                        inner.append(r[1])
                elif d and d[0] in self.extra_handlers:
                    self.extra_handlers[d[0]](d, addr, now)
                else:
                    inner.extend(tunnel.receive(d, addr, now))
            if inner:
                if vnet:
                    for w in offload.coalesce(inner):
                        _write(tun, w, self.drops)
                else:
                    for p in inner:
                        _write(tun, p, self.drops)
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
