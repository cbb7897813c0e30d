"""The relay's sockets: UDP datagrams and TCP (2-byte length framing, port 443 by default), one table.

The UDP port also answers STUN Binding requests (mapping only), so clients can measure their RTT
to each relay; the server orders a pair's relays by it.

A slow TCP reader never stalls the relay: when its write buffer is over
MAX_BUFFER, messages to it are dropped and counted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

from hamachi.io.instance import binding
from hamachi.io.udp import UdpSocket
from hamachi.proto.relay import RelayTable
from hamachi.proto.stun_server import StunResponder
from hamachi.wire import relay as R
from hamachi.wire import stun as S

log = logging.getLogger("hamachi.relay")
MAX_BUFFER = 1 << 20
UDP_BURST = 64  # GRO reads per wake-up before the event loop gets a turn


class RelayService:
    def __init__(self, table: RelayTable):
        self.table = table
        self.udp: UdpSocket | None = None
        self.udp_addr: tuple[str, int] = ("0.0.0.0", 0)
        self.stun: StunResponder | None = None
        self.tcp: dict[int, asyncio.StreamWriter] = {}
        self.servers: list = []
        self._ids = itertools.count(1)
        self._expiry: asyncio.Task | None = None

    def deliver(self, out: list) -> None:
        """Send the table's output; datagrams to one UDP address go out as one GSO batch."""
        batches: dict[tuple, list[bytes]] = {}
        for end, data in out:
            batches.setdefault(end, []).append(data)
        for end, datas in batches.items():
            if end[0] == "udp":
                if self.udp is not None:
                    self.udp.send_batch(datas, (end[1], end[2]))
                continue
            w = self.tcp.get(end[1])
            if w is None:
                self.table.drops["peer_gone"] += len(datas)
            elif w.transport.get_write_buffer_size() > MAX_BUFFER:
                self.table.drops["slow_reader"] += len(datas)
            else:
                w.write(b"".join(len(d).to_bytes(2, "big") + d for d in datas))

    def _on_udp(self) -> None:
        """Socket readable: up to UDP_BURST GRO reads, every datagram through the table, then send."""
        now, wall = time.monotonic(), time.time()
        out: list = []
        for _ in range(UDP_BURST):
            got = self.udp.recv_batch()
            if got is None:
                break
            datagrams, addr = got
            end = ("udp", addr[0], addr[1])
            for d in datagrams:
                try:
                    # Clients measure their RTT to each relay with a STUN Binding (type 0x0001; ours are 6-9).
                    if d[:1] == b"\x00" and S.is_stun(d):
                        answer = self.stun.handle(self.udp_addr, (addr[0], addr[1]), d)
                        if answer is not None:
                            out.append((("udp", *answer[1]), answer[2]))
                        continue
                    out += self.table.handle(end, d, now, wall, addr[0])
                except Exception:  # one bad datagram must never stop the relay
                    self.table.drops["internal_error"] += 1
                    if self.table.drops["internal_error"] <= 10:
                        log.exception("relay: unexpected error (datagram dropped)")
        if out:
            self.deliver(out)

    async def start(self, udp: tuple[str, int], tcp: tuple[str, int] | None) -> None:
        loop = asyncio.get_running_loop()
        with binding("relay (UDP)", "[relay] listen_udp", udp[1]):
            self.udp = UdpSocket(udp[0], udp[1])
        self.udp_addr = udp
        self.stun = StunResponder([udp[0]], udp[1])
        loop.add_reader(self.udp.fileno(), self._on_udp)
        if tcp is not None:
            with binding("relay (TCP)", "[relay] listen_tcp", tcp[1]):
                self.servers.append(await asyncio.start_server(self._tcp_conn, tcp[0], tcp[1], limit=65536 + 2))
        self._expiry = asyncio.create_task(self._expire())
        log.info("relay on UDP %s:%d%s (GSO %s, GRO %s)", *udp, f", TCP {tcp[0]}:{tcp[1]}" if tcp else "",
                 self.udp.gso, self.udp.gro)

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(5)
            self.table.expire(time.monotonic())

    async def _tcp_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cid = next(self._ids)
        self.tcp[cid] = writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            while True:
                head = await reader.readexactly(2)
                n = int.from_bytes(head, "big")
                if n == 0 or n > R.MAX_PAYLOAD + 9:
                    self.table.drops["oversized"] += 1
                    break
                data = await reader.readexactly(n)
                self.deliver(self.table.handle(("tcp", cid), data, time.monotonic(), time.time(), peer[0]))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.tcp.pop(cid, None)
            writer.close()

    def close(self) -> None:
        if self._expiry:
            self._expiry.cancel()
        if self.udp:
            asyncio.get_running_loop().remove_reader(self.udp.fileno())
            self.udp.close()
        for s in self.servers:
            s.close()
