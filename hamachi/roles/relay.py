"""Composition root for the relay: config + ticket key + relay table + sockets + local API."""

from __future__ import annotations

import asyncio
import logging
import signal

from hamachi import config as C
from hamachi.config import RelaySettings
from hamachi.crypto.ticket import shared_key
from hamachi.io import localapi
from hamachi.io import metrics as X
from hamachi.io.instance import InstanceLock
from hamachi.io.relay import RelayService
from hamachi.proto.policy import DenyList
from hamachi.proto.relay import RelayTable
from hamachi.roles import reread_config

log = logging.getLogger("hamachi.relay")


class RelayDaemon:
    def __init__(self, settings: RelaySettings):
        if settings.server_key is None:
            raise SystemExit("relay.server_public_key is needed: the relay only honours that server's tickets")
        self.settings = settings
        self.table = RelayTable(shared_key(settings.key, settings.server_key), idle_timeout=settings.idle_timeout,
                                session_rate=settings.session_rate_bps, account_rate=settings.account_rate_bps,
                                deny=DenyList(settings.deny))
        self.service = RelayService(self.table)

    async def _api_status(self, args: dict) -> dict:
        return {"public_key": self.settings.key.public_text(), "sessions": len(self.table.sessions),
                "forwarded": self.table.forwarded, "drops": dict(self.table.drops),
                "tcp_connections": len(self.service.tcp)}

    async def _metrics(self) -> list:
        t = self.table
        quota = {"rate": t.drops.get("rate_limited", 0), "bytes_per_day": t.drops.get("quota_bytes", 0)}
        return [
            X.gauge("hamachi_relay_sessions", "Relay sessions (bound pairs and half-bound)", len(t.sessions)),
            X.gauge("hamachi_relay_tcp_connections", "Clients connected over TCP", len(self.service.tcp)),
            X.counter("hamachi_relay_forwarded_packets", "Datagrams forwarded", t.forwarded),
            X.counter("hamachi_relay_forwarded_bytes", "Bytes forwarded", t.forwarded_bytes),
            X.by_reason("hamachi_relay_quota_drops", "Datagrams dropped over a plan quota", quota, "quota"),
            X.by_reason("hamachi_relay_drops", "Datagrams dropped, by reason", dict(t.drops)),
        ]

    def reload(self) -> None:
        """SIGHUP: reread the deny-list."""
        fresh = reread_config(C.load_relay, self.settings.config_path, log)
        if fresh is None:
            return
        self.table.deny = DenyList(fresh.deny)
        log.info("reloaded %s: %d deny-list entries", self.settings.config_path, len(fresh.deny))

    async def serve(self) -> None:
        s = self.settings
        await self.service.start(s.listen_udp.as_tuple(), s.listen_tcp.as_tuple() if s.listen_tcp else None)
        api = await localapi.serve(s.api_socket, {"status": self._api_status})
        exporter = await X.serve(s.metrics, "[relay] metrics", self._metrics)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await stop.wait()
        if exporter is not None:
            exporter.close()
        api.close()
        self.service.close()


def run(settings: RelaySettings) -> int:
    lock = InstanceLock(settings.api_socket, "relay").acquire()
    try:
        asyncio.run(RelayDaemon(settings).serve())
    finally:
        lock.release()
    return 0
