"""kill -9 of a server node in the middle of writes loses no change a client was told had succeeded.

    writer 0..3 (in-process ControlClients, real TCP + Noise)
        | create NAME / delete NAME, back to back; Reply ok = acknowledged
        v
    node 1 [node 2]  <-- kill -9 at a random moment, 20 times, then restarted
        |
    SQLite file | PostgreSQL (ours, tests/lab/postgres.py)

Each writer creates networks and deletes every other one it created. A kill
lands while requests are in flight (the test checks that most kills did).
Afterwards, for both stores: every acknowledged create is there unless its
delete was acknowledged too, every acknowledged delete stays deleted, and
nothing appears that was never asked for. A writer logging in again sees the
same in its netmap, which is what its user would notice.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from hamachi.crypto.keys import KeyPair, decode_key
from hamachi.io.control import ControlClient
from tests.lab.cluster import Nodes

pytestmark = pytest.mark.slow
KILLS = 20
WRITERS = 4


class Writer:
    def __init__(self, nodes: Nodes, i: int):
        self.nodes, self.i = nodes, i
        self.key = KeyPair.generate()
        self.client: ControlClient | None = None
        self.task: asyncio.Task | None = None
        self.asked: dict[str, str] = {}  # name -> last verb sent ("create" / "delete")
        self.created: set[str] = set()  # acknowledged creates
        self.deleted: set[str] = set()  # acknowledged deletes
        self.in_flight = False
        self.acks = 0
        self.n = 0

    def connect(self) -> None:
        """A fresh session on the live nodes (a restarted client, without the reconnect backoff)."""
        if self.task is not None:
            self.task.cancel()

        async def nothing(*_a):
            return None

        order = [k for k in range(len(self.nodes.procs)) if self.nodes.listening(k)]
        order = order[self.i % len(order):] + order[: self.i % len(order)]
        self.client = ControlClient(self.key, [self.nodes.endpoint(k) for k in order],
                                    decode_key(self.nodes.public_key), f"writer{self.i}", lambda: 41641,
                                    on_welcome=nothing, on_peer_up=nothing, on_peer_down=nothing)
        self.task = asyncio.create_task(self.client.run())

    async def request(self, verb: str, name: str) -> bool:
        self.asked[name] = verb
        self.in_flight = True
        try:
            r = await self.client.request(verb, timeout=5.0, network=name)
        except (ConnectionError, TimeoutError):
            return False
        finally:
            self.in_flight = False
        assert r.ok, f"{verb} {name}: {r.error}"
        self.acks += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.client.connected:
                await asyncio.sleep(0.02)
                if not self.client.connected and self.client.last_error and any(
                        self.nodes.listening(k) for k in range(len(self.nodes.procs))):
                    self.connect()  # its node died: log in again at once, to a live one
                    await asyncio.sleep(0.05)
                continue
            self.n += 1
            name = f"w{self.i}n{self.n}"
            if await self.request("create", name):
                self.created.add(name)
                if self.n % 2 == 0 and await self.request("delete", name):
                    self.deleted.add(name)

    def expected(self) -> set[str]:
        """What must exist: acknowledged creates not asked to be deleted (an unacknowledged delete may
        or may not have happened)."""
        return {n for n in self.created if self.asked[n] == "create"}

    def possible(self) -> set[str]:
        """What may exist: acknowledged and unacknowledged creates alike, minus acknowledged deletes."""
        return set(self.asked) - self.deleted


async def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _kill_during_writes(nodes: Nodes, rng: random.Random) -> dict:
    writers = [Writer(nodes, i) for i in range(WRITERS)]
    for w in writers:
        w.connect()
    await _wait(lambda: all(w.client.connected for w in writers), 20, "writers logged in")
    stop = asyncio.Event()
    runs = [asyncio.create_task(w.run(stop)) for w in writers]
    count = len(nodes.procs)
    mid_write = 0
    try:
        for k in range(KILLS):
            acks = [w.acks for w in writers]
            # Writes are flowing again everywhere (every writer acknowledged one since the last kill) ...
            await _wait(lambda acks=acks: all(w.acks > a for w, a in zip(writers, acks, strict=True)), 30,
                        f"writes flowing again before kill {k + 1}")
            await asyncio.sleep(rng.uniform(0.0, 0.25))  # ... then a random moment among them
            victim = k % count
            mid_write += any(w.in_flight for w in writers)
            nodes.kill9(victim)
            nodes.start(victim, wait=False)
            if count == 1:
                await asyncio.to_thread(nodes.wait_listening, victim)
            else:  # the writers fail over to the other node; this one must be back before its next turn
                other = (victim + 1) % count
                await asyncio.to_thread(nodes.wait_listening, other)
                await asyncio.to_thread(nodes.wait_listening, victim)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*runs, return_exceptions=True)
    # What a user notices: logging in again, each writer's netmap holds exactly its acknowledged networks.
    for w in writers:
        w.connect()
    await _wait(lambda: all(w.client.connected for w in writers), 20, "writers logged in again")
    try:
        await _wait(lambda: all(w.expected() <= set(w.client.networks) for w in writers), 10, "netmaps")
    except AssertionError:
        pass  # _check says what is missing, from the store and from the netmaps
    seen = {w.i: set(w.client.networks) for w in writers}
    for w in writers:
        w.task.cancel()
    return {"writers": writers, "seen": seen, "mid_write": mid_write}


def _check(result: dict, stored: set[str]) -> None:
    writers = result["writers"]
    assert result["mid_write"] >= KILLS // 2, f"only {result['mid_write']} of {KILLS} kills hit a write in flight"
    expected = set().union(*(w.expected() for w in writers))
    possible = set().union(*(w.possible() for w in writers))
    acked = sum(len(w.created) + len(w.deleted) for w in writers)
    assert acked >= KILLS * WRITERS, f"only {acked} acknowledged writes"
    lost = expected - stored
    assert not lost, f"acknowledged changes lost after kill -9: {sorted(lost)[:10]}"
    phantom = stored - possible
    assert not phantom, f"networks nobody asked for, or whose delete was acknowledged: {sorted(phantom)[:10]}"
    for w in writers:
        assert w.expected() <= result["seen"][w.i] <= w.possible(), (w.i, w.expected() - result["seen"][w.i])
    print(f"{KILLS} kills ({result['mid_write']} with a write in flight), {acked} acknowledged writes, "
          f"0 lost, {len(possible - expected)} unacknowledged")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill9_during_writes_loses_no_acknowledged_change(backend, request, tmp_path):
    if backend == "postgresql":
        pg = request.getfixturevalue("postgres")
        database, count = pg.new_database("dur"), 2
    else:
        database, count = str(tmp_path / "state.db"), 1
    nodes = Nodes(tmp_path / "nodes", backend, database, count=count, debounce=2.0,
                  extra='default_plan = "premium"')
    try:
        for i in range(count):
            nodes.start(i, wait=False)
        for i in range(count):
            nodes.wait_listening(i)
        t0 = time.monotonic()
        result = asyncio.run(_kill_during_writes(nodes, random.Random()))
        elapsed = time.monotonic() - t0
    finally:
        nodes.stop()
    import ipaddress

    from hamachi.store import open_store

    store = open_store(backend, database, ipaddress.IPv4Network("10.0.0.0/8"), None)
    try:
        stored = {n.name for n in store.networks()}
    finally:
        store.close()
    _check(result, stored)
    print(f"{backend}: {elapsed:.1f} s")
