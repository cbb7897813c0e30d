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

from hamachi.proto.relay import RelayTable
from hamachi.proto.stun_server import StunResponder
from hamachi.wire import relay as R
from hamachi.wire import stun as S

log = logging.getLogger("hamachi.relay")
MAX_BUFFER = 1 << 20


class RelayService:
    def __init__(self, table: RelayTable):
        self.table = table
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: dict[int, asyncio.StreamWriter] = {}
        self.servers: list = []
        self._ids = itertools.count(1)
        self._expiry: asyncio.Task | None = None

    def deliver(self, out: list) -> None:
        for end, data in out:
            if end[0] == "udp":
                if self.udp is not None:
                    self.udp.sendto(data, (end[1], end[2]))
            else:
                w = self.tcp.get(end[1])
                if w is None:
                    self.table.drops["peer_gone"] += 1
                elif w.transport.get_write_buffer_size() > MAX_BUFFER:
                    self.table.drops["slow_reader"] += 1
                else:
                    w.write(len(data).to_bytes(2, "big") + data)

    async def start(self, udp: tuple[str, int], tcp: tuple[str, int] | None) -> None:
        loop = asyncio.get_running_loop()
        service = self

        stun = StunResponder([udp[0]], udp[1])

        class Udp(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                # Clients measure their RTT to each relay with a STUN Binding (type 0x0001; ours are 6-9).
                if data[:1] == b"\x00" and S.is_stun(data):
                    out = stun.handle(udp, (addr[0], addr[1]), data)
                    if out is not None:
                        service.udp.sendto(out[2], out[1])
                    return
                now = time.monotonic()
                service.deliver(service.table.handle(("udp", addr[0], addr[1]), data, now, time.time(), addr[0]))

            def error_received(self, exc):
                pass

        self.udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=udp)
        if tcp is not None:
            self.servers.append(await asyncio.start_server(self._tcp_conn, tcp[0], tcp[1], limit=65536 + 2))
        self._expiry = asyncio.create_task(self._expire())
        log.info("relay on UDP %s:%d%s", *udp, f", TCP {tcp[0]}:{tcp[1]}" if tcp else "")

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
            self.udp.close()
        for s in self.servers:
            s.close()
