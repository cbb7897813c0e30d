"""Composition root for the control server: config + store + control listener + local API.

With `[store] backend = "postgresql"` the node also joins the cluster bus
(io/cluster.py): every node of one database is one logical server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time

from hamachi import config as C
from hamachi.config import ServerSettings
from hamachi.crypto import password as pw
from hamachi.crypto.ticket import shared_key
from hamachi.io import localapi
from hamachi.io import metrics as X
from hamachi.io.control import ControlListener
from hamachi.io.instance import InstanceLock, binding
from hamachi.io.localapi import ApiError
from hamachi.io.stun import StunService
from hamachi.proto.control_server import ControlServer, RelayInfo
from hamachi.proto.operator import AdminError, Operator
from hamachi.proto.policy import Plans
from hamachi.roles import reread_config
from hamachi.store import open_store
from hamachi.store.protocol import StoreError

log = logging.getLogger("hamachi.server")
TOKEN_LIFETIME = 7 * 86400.0


class ServerDaemon:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        s = settings
        self.store = open_store(s.store_backend, s.database, s.overlay4, s.overlay6, pool_size=s.pool_size)
        self.node = s.node or f"{socket.gethostname()}-{os.getpid()}"
        self.core = ControlServer(self.store, time.monotonic(), registration=s.registration,
                                  prefix4=s.overlay4.prefixlen, prefix6=s.overlay6.prefixlen if s.overlay6 else 48,
                                  login_rate=s.login_rate, wall_offset=time.time() - time.monotonic(),
                                  relays=tuple(RelayInfo(r.name, str(r.udp), str(r.tcp) if r.tcp else "",
                                                         shared_key(s.key, r.public_key)) for r in s.relays),
                                  presence_debounce=s.presence_debounce, node=self.node,
                                  stun_observed=self._stun_observed,

                                  plans=Plans({p.name: p for p in s.plans}, s.default_plan), deny=s.deny)
        self.operator = Operator(self.core)
        self.listener = ControlListener(self.core, s.key)
        self.stun: StunService | None = None
        self.cluster = None
        self.listening: list[str] = []

    def _stun_observed(self, txid: bytes):
        return None if self.stun is None else self.stun.responder.observed(txid)

    async def _api_status(self, args: dict) -> dict:
        return {"public_key": self.settings.key.public_text(),
                "listen": self.listening,
                "online": len(self.core.online), "connections": len(self.core.conns),
                "stats": self.core.stats, "drops": self.listener.drops,
                "store": self.settings.store_backend, "node": self.node,
                "cluster": None if self.cluster is None else dict(self.cluster.stats),
                "refusals": dict(self.core.refusals), "logouts": dict(self.core.logouts),
                "stun": None if self.stun is None else {"answered": self.stun.responder.answered,
                                                        "drops": dict(self.stun.responder.drops)}}

    async def _metrics(self) -> list:
        """The server's Prometheus families, from a snapshot taken on the core thread."""
        core, runner = self.core, self.listener.runner

        def snap() -> dict:
            return {"online": len(core.online), "local": sum(c.local for c in core.online.values()),
                    "conns": len(core.conns), "stats": dict(core.stats), "refusals": dict(core.refusals),
                    "logouts": dict(core.logouts), "sent": dict(runner.sent), "fanout": runner.fanout.snapshot()}

        s = await runner.call(snap)
        st = s["stats"]
        return [
            X.gauge("hamachi_server_online_clients", "Clients online (in a cluster: on any node)", s["online"]),
            X.gauge("hamachi_server_local_clients", "Clients with a control connection to this node", s["local"]),
            X.gauge("hamachi_server_connections", "Authenticated control connections", s["conns"]),
            X.counter("hamachi_server_logins", "Successful logins", st.get("logins", 0)),
            X.counter("hamachi_server_lost", "Clients lost (no keepalive, stream ended)", st.get("lost", 0)),
            X.by_reason("hamachi_server_logouts", "Logouts by reason", s["logouts"]),
            X.by_reason("hamachi_server_refusals", "Refusals (logins, requests, relay tickets) by reason",
                        s["refusals"]),
            X.counter("hamachi_server_deltas_sent", "Netmap deltas sent to clients", s["sent"].get("Delta", 0)),
            X.by_reason("hamachi_server_messages_sent", "Control messages sent, by type", s["sent"], "type"),
            X.histogram("hamachi_server_fanout_latency_seconds",
                        "From a change to its last PeerUp/PeerDown/Delta handed to the transports", s["fanout"]),
            X.by_reason("hamachi_server_drops", "Control connections dropped before the core, by reason",
                        dict(self.listener.drops)),
        ]

    async def _api_token(self, args: dict) -> dict:
        token = secrets.token_urlsafe(24)
        # Wall-clock expiry: tokens outlive server restarts.
        await self.listener.runner.call(self.store.add_token, pw.hash_token(token), time.time() + TOKEN_LIFETIME)
        return {"token": token, "expires_in_days": TOKEN_LIFETIME / 86400}

    async def _api_admin(self, args: dict) -> dict:
        verb = str(args.get("verb") or "")
        try:
            # On the core thread, like every call into the core; what it sends (a suspension's
            # Close, PeerDowns) is delivered as soon as it returns.
            return await self.listener.runner.call(self.operator.call, verb, args,
                                                   args.get("_caller") or "uid ?", time.monotonic())
        except AdminError as exc:
            raise ApiError(str(exc), exc.code) from exc

    def reload(self) -> None:
        """SIGHUP: reread the config's plans and deny-list; everything else needs a restart."""
        fresh = reread_config(C.load_server, self.settings.config_path, log)
        if fresh is None:
            return
        plans = Plans({p.name: p for p in fresh.plans}, fresh.default_plan)

        def apply() -> None:
            self.core.reload_policy(plans, fresh.deny)
            self.core.audit("SIGHUP", "admin:reload", str(self.settings.config_path),
                            f"{len(fresh.deny)} deny entries, {len(fresh.plans)} plans", time.monotonic())

        self._reloading = asyncio.get_running_loop().create_task(self.listener.runner.call(apply))
        log.info("reloaded %s: %d deny-list entries, %d plans", self.settings.config_path, len(fresh.deny),
                 len(fresh.plans))

    async def serve(self) -> None:
        if self.settings.store_backend == "postgresql":
            from hamachi.io.cluster import ClusterBus

            self.cluster = await ClusterBus(self.settings.database, self.node, self.listener.runner).start()
        for ep in self.settings.listen:
            with binding("control (TCP)", "[server] listen", ep.port):
                await self.listener.listen(ep.host, ep.port)
        self.listening = [str(ep) for ep in self.settings.listen]
        https = self.settings.https_port
        if https and all(ep.port != https for ep in self.settings.listen):
            # Best effort: for clients at sites that let only HTTPS out. Taken (a relay or web server
            # on this host) or not ours to bind (no CAP_NET_BIND_SERVICE): carry on without it.
            try:
                await self.listener.listen("0.0.0.0", https)
                self.listening.append(f"0.0.0.0:{https}")
            except OSError as exc:
                log.info("not listening on TCP %d as well (%s); set [server] https_port = 0 to stop trying",
                         https, exc.strerror or exc)
        log.info("control server listening on %s", ", ".join(self.listening))
        stun = None
        if self.settings.stun_port and self.settings.public_addresses:
            port = self.settings.stun_port
            with binding("STUN (UDP)", "[server] stun_port", f"{port} or {port + 1}"):
                stun = await StunService(list(self.settings.public_addresses), port).start()
        self.stun = stun
        exporter = await X.serve(self.settings.metrics, "[server] metrics", self._metrics)
        api = await localapi.serve(self.settings.api_socket, {"status": self._api_status, "token": self._api_token,
                                                              "admin": self._api_admin})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await stop.wait()
        if stun is not None:
            stun.close()
        if exporter is not None:
            exporter.close()
        api.close()
        await self.listener.close()
        if self.cluster is not None:
            await self.cluster.close()
        self.listener.runner.close()


def run(settings: ServerSettings) -> int:
    lock = InstanceLock(settings.api_socket, "server").acquire()
    try:
        return _run(settings)
    finally:
        lock.release()


def _run(settings: ServerSettings) -> int:
    try:
        daemon = ServerDaemon(settings)
    except StoreError as exc:
        log.error("cannot open the %s store: %s", settings.store_backend, exc)
        return 1
    try:
        asyncio.run(daemon.serve())
    finally:
        daemon.store.close()
    return 0
