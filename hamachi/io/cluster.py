"""The cluster bus: server nodes sharing one PostgreSQL database tell each other about changes.

Each node holds two async connections of its own (never the store's pool):
one LISTENs on CHANNEL, one publishes. A publish is one transaction that
updates the `presence` table and calls pg_notify, so the row and the
notification commit together and reach every node in commit order.

    node A core --cluster_outbox()--> publish() --NOTIFY--> node B listen --cluster_event()--> B core
                                         |                                   (msg: deliver to B's stream)
                                    presence table   (a node starting up reads it: who is online where)

Payload: JSON {"o": origin, "e": [event, ...]}, at most PAYLOAD_MAX bytes per
NOTIFY; an event too big for one is stored in cluster_mail and announced by
its id. Events: ["up", key, info], ["down", key], ["msg", node, key, message],
["dead", node, adopter] (keys and messages in base64).

Liveness: every node bumps its `cluster_nodes` heartbeat each HEARTBEAT
seconds. A node silent for NODE_TIMEOUT is dead; the first live node to
delete its row (one DELETE ... RETURNING, so exactly one wins) adopts its
members: they linger there for the debounce, and whoever is not back on
some node by then is announced offline, once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time

import psycopg

from hamachi.io.control import CoreThread
from hamachi.wire import control as M
from hamachi.wire.codec import DecodeError

log = logging.getLogger("hamachi.cluster")
CHANNEL = "hamachi_cluster"
PAYLOAD_MAX = 7800  # PostgreSQL's NOTIFY limit is 8000 bytes
HEARTBEAT = 1.0
NODE_TIMEOUT = 6.0


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


class ClusterBus:
    def __init__(self, dsn: str, node: str, runner: CoreThread):
        self.dsn, self.node, self.runner = dsn, node, runner
        self.core = runner.core
        self._queue: asyncio.Queue[list] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._listen: psycopg.AsyncConnection | None = None
        self._pub: psycopg.AsyncConnection | None = None
        self.stats = {"published": 0, "received": 0, "mail": 0, "bad_events": 0, "adopted_nodes": 0}

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> ClusterBus:
        self._listen = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        await self._listen.execute(f"LISTEN {CHANNEL}")
        self._pub = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        async with self._pub.transaction():
            await self._pub.execute("INSERT INTO cluster_nodes (node) VALUES (%s) ON CONFLICT (node) "
                                    "DO UPDATE SET heartbeat = now()", (self.node,))
            rows = await (await self._pub.execute(
                "SELECT public_key, node, info FROM presence")).fetchall()
        now = time.monotonic()
        mine = False
        for key, node, info in rows:
            with contextlib.suppress(ValueError):
                await self.runner.call(self.core.cluster_event, ("up", bytes(key), node, json.loads(bytes(info))),
                                       now)
                mine = mine or node == self.node
        if mine:  # leftovers of an earlier run under our name: they linger here, then go
            await self.runner.call(self.core.cluster_event, ("node_dead", self.node, self.node), now)
        self.runner.publish = self.publish
        self._tasks = [asyncio.create_task(self._listener()), asyncio.create_task(self._publisher()),
                       asyncio.create_task(self._heartbeat())]
        log.info("cluster node %s: %d members online on other nodes", self.node,
                 sum(1 for _, n, _ in rows if n != self.node))
        return self

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._pub is not None:
            with contextlib.suppress(Exception):
                await self._pub.execute("DELETE FROM cluster_nodes WHERE node = %s", (self.node,))
        for c in (self._listen, self._pub):
            if c is not None:
                with contextlib.suppress(Exception):
                    await c.close()

    # -- publishing ----------------------------------------------------------------
    def publish(self, events: list) -> None:
        self._queue.put_nowait(events)

    async def _publisher(self) -> None:
        while True:
            batch = await self._queue.get()
            while not self._queue.empty():
                batch += self._queue.get_nowait()
            try:
                await self._send(batch)
            except psycopg.Error as exc:
                log.error("cluster publish failed (%d events lost for other nodes): %s", len(batch), exc)
                await self._reconnect_pub()

    async def _reconnect_pub(self) -> None:
        with contextlib.suppress(Exception):
            await self._pub.close()
        while True:
            try:
                self._pub = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                return
            except psycopg.Error as exc:
                log.warning("cluster: cannot reach the database: %s", exc)
                await asyncio.sleep(1.0)

    def _encode(self, ev: tuple) -> list:
        kind = ev[0]
        if kind == "up":
            return ["up", _b64(ev[1]), ev[2]]
        if kind == "down":
            return ["down", _b64(ev[1])]
        if kind == "msg":
            return ["msg", ev[1], _b64(ev[2]), _b64(ev[3].encode())]
        return list(ev)

    async def _send(self, batch: list) -> None:
        payloads: list[str] = []
        chunk: list = []
        size = 0
        async with self._pub.transaction():
            for ev in batch:
                if ev[0] == "up":
                    await self._pub.execute(
                        "INSERT INTO presence (public_key, node, info) VALUES (%s, %s, %s) ON CONFLICT (public_key) "
                        "DO UPDATE SET node = excluded.node, info = excluded.info, lost_at = NULL",
                        (ev[1], self.node, json.dumps(ev[2]).encode()))
                elif ev[0] == "down":
                    await self._pub.execute("DELETE FROM presence WHERE public_key = %s AND node = %s",
                                            (ev[1], self.node))
                enc = self._encode(ev)
                text = json.dumps(enc, separators=(",", ":"))
                if len(text) > PAYLOAD_MAX - 64:
                    cur = await self._pub.execute("INSERT INTO cluster_mail (payload) VALUES (%s) RETURNING id",
                                                  (text.encode(),))
                    enc = ["mail", (await cur.fetchone())[0]]
                    text = json.dumps(enc)
                    self.stats["mail"] += 1
                if size + len(text) > PAYLOAD_MAX - 64 and chunk:
                    payloads.append(self._payload(chunk))
                    chunk, size = [], 0
                chunk.append(enc)
                size += len(text) + 1
            if chunk:
                payloads.append(self._payload(chunk))
            for p in payloads:
                await self._pub.execute("SELECT pg_notify(%s, %s)", (CHANNEL, p))
        self.stats["published"] += len(batch)

    def _payload(self, events: list) -> str:
        return json.dumps({"o": self.node, "e": events}, separators=(",", ":"))

    # -- receiving -------------------------------------------------------------------
    async def _listener(self) -> None:
        while True:
            try:
                async for n in self._listen.notifies():
                    await self._on_notify(n.payload)
            except psycopg.Error as exc:
                log.error("cluster: lost the LISTEN connection: %s; reconnecting", exc)
                with contextlib.suppress(Exception):
                    await self._listen.close()
                await asyncio.sleep(1.0)
                with contextlib.suppress(psycopg.Error):
                    self._listen = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                    await self._listen.execute(f"LISTEN {CHANNEL}")

    async def _on_notify(self, payload: str) -> None:
        try:
            doc = json.loads(payload)
            origin, events = str(doc["o"]), list(doc["e"])
        except (ValueError, KeyError, TypeError):
            self.stats["bad_events"] += 1
            return
        if origin == self.node:
            return
        for enc in events:
            try:
                if enc[0] == "mail":
                    cur = await self._pub.execute("SELECT payload FROM cluster_mail WHERE id = %s", (int(enc[1]),))
                    row = await cur.fetchone()
                    if row is None:
                        continue
                    enc = json.loads(bytes(row[0]))
                ev = self._decode(origin, enc)
            except (ValueError, KeyError, TypeError, IndexError, DecodeError, psycopg.Error):
                self.stats["bad_events"] += 1
                continue
            if ev is not None:
                self.stats["received"] += 1
                await self.runner.call(self.core.cluster_event, ev, time.monotonic())

    def _decode(self, origin: str, enc: list) -> tuple | None:
        kind = enc[0]
        if kind == "up":
            return ("up", _unb64(enc[1]), origin, dict(enc[2]))
        if kind == "down":
            return ("down", _unb64(enc[1]), origin)
        if kind == "msg":
            if enc[1] != self.node:
                return None
            return ("msg", _unb64(enc[2]), M.decode(_unb64(enc[3])))
        if kind == "dead":
            return ("node_dead", str(enc[1]), str(enc[2]))
        raise ValueError(f"unknown cluster event {kind!r}")

    # -- liveness --------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._beat()
            except psycopg.Error as exc:
                log.warning("cluster heartbeat failed: %s", exc)
                await self._reconnect_pub()

    async def _beat(self) -> None:
        db = self._pub
        cur = await db.execute("UPDATE cluster_nodes SET heartbeat = now() WHERE node = %s", (self.node,))
        if cur.rowcount == 0:
            # Another node took us for dead (we stalled) and adopted our members: say again who is here.
            log.warning("cluster: this node was declared dead by the others; announcing its members again")
            await db.execute("INSERT INTO cluster_nodes (node) VALUES (%s) ON CONFLICT DO NOTHING", (self.node,))
            mine = await self.runner.call(lambda: [(k, self.core.presence_info(c)) for k, c in
                                                   self.core.online.items() if c.local])
            self.publish([("up", k, info) for k, info in mine])
        async with db.transaction():
            cur = await db.execute("DELETE FROM cluster_nodes WHERE heartbeat < now() - make_interval(secs => %s) "
                                   "AND node <> %s RETURNING node", (NODE_TIMEOUT, self.node))
            dead = [r[0] for r in await cur.fetchall()]
            # Nodes whose rows vanished without a heartbeat row at all (crashed before their first beat).
            cur = await db.execute("SELECT DISTINCT node FROM presence WHERE node <> %s AND node NOT IN "
                                   "(SELECT node FROM cluster_nodes)", (self.node,))
            dead += [r[0] for r in await cur.fetchall() if r[0] not in dead]
            for node in dead:
                await db.execute("UPDATE presence SET node = %s, lost_at = now() WHERE node = %s", (self.node, node))
                await db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._payload([["dead", node, self.node]])))
            await db.execute("DELETE FROM cluster_mail WHERE created < now() - interval '5 minutes'")
        for node in dead:
            log.warning("cluster: node %s is silent; its members linger here until they are back", node)
            self.stats["adopted_nodes"] += 1
            await self.runner.call(self.core.cluster_event, ("node_dead", node, self.node), time.monotonic())
