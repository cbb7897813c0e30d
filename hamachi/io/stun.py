"""The STUN service's sockets: one UDP socket per (address, port) the responder listens on."""

from __future__ import annotations

import asyncio
import logging

from hamachi.proto.stun_server import StunResponder

log = logging.getLogger("hamachi.stun")


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, service: StunService, local):
        self.service, self.local = service, local

    def connection_made(self, transport):
        self.service.transports[self.local] = transport

    def datagram_received(self, data, addr):
        out = self.service.responder.handle(self.local, (addr[0], addr[1]), data)
        if out is not None:
            src, dst, payload = out
            t = self.service.transports.get(src)
            if t is not None:
                t.sendto(payload, dst)

    def error_received(self, exc):  # ICMP errors for earlier answers: nothing to do
        pass


class StunService:
    def __init__(self, addresses: list[str], port: int):
        self.responder = StunResponder(addresses, port, port + 1)
        self.transports: dict = {}

    async def start(self) -> StunService:
        loop = asyncio.get_running_loop()
        for local in self.responder.listen_on():
            await loop.create_datagram_endpoint(lambda local=local: _Proto(self, local), local_addr=local)
        log.info("STUN on %s (RFC 5780: %s)", ", ".join(f"{a}:{p}" for a, p in self.responder.listen_on()),
                 "full" if self.responder.full_rfc5780 else "one address: mapping only")
        return self

    def close(self) -> None:
        for t in self.transports.values():
            t.close()
