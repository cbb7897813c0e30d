"""STUN sockets: the service (one UDP socket per address and port it answers on), and a small
client that measures the RTT to several responders at once (the client's relay RTTs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from hamachi.proto.stun_server import StunResponder
from hamachi.wire import stun as S
from hamachi.wire.codec import DecodeError

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


async def measure_rtts(targets: dict[str, tuple[str, int]], timeout: float = 0.6, tries: int = 3) -> dict[str, float]:
    """RTT in milliseconds to each STUN responder (a relay answers STUN on its UDP port), by name.

    One Binding request per target per try, `timeout` apart; the first answer counts. Targets
    that never answer are left out.
    """
    if not targets:
        return {}
    loop = asyncio.get_running_loop()
    sent: dict[bytes, tuple[str, float]] = {}
    rtts: dict[str, float] = {}
    done = asyncio.Event()

    class _Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            try:
                msg = S.StunMessage.decode(data)
            except DecodeError:
                return
            hit = sent.get(msg.txid)
            if msg.msg_type == S.BINDING_RESPONSE and hit is not None and hit[0] not in rtts:
                rtts[hit[0]] = round((time.monotonic() - hit[1]) * 1000, 3)
                if len(rtts) == len(targets):
                    done.set()

        def error_received(self, exc):
            pass

    transport, _ = await loop.create_datagram_endpoint(_Client, local_addr=("0.0.0.0", 0))
    try:
        for _ in range(tries):
            for name, addr in targets.items():
                if name not in rtts:
                    txid = os.urandom(12)
                    sent[txid] = (name, time.monotonic())
                    transport.sendto(S.binding_request(txid), addr)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
            if done.is_set():
                break
    finally:
        transport.close()
    return rtts
