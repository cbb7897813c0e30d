"""Issue 9, finding 4: every field is bounded at decode, request arguments are validated, and a
netmap of 1,000 members reaches its members (in parts that each fit one frame)."""

from __future__ import annotations

import asyncio
import os

import pytest

from hamachi.crypto.keys import KeyPair
from hamachi.io.control import ControlClient
from hamachi.wire import control as M
from hamachi.wire.codec import DecodeError, Writer
from tests.test_control_proto import World

# What one frame carries after the 16-byte AEAD tag.
FRAME_PAYLOAD = M.MAX_FRAME - 16


@pytest.mark.parametrize("msg", [
    M.Request(1, "join", (("password", "x" * 2000),)),  # a value over its bound
    M.Request(1, "join", tuple((f"k{i}", "v") for i in range(40))),  # too many pairs
    M.Hello("v", "n" * 300, ""),
    M.Close("x" * 5000),
    M.PeerDown(b"k" * 32, "r" * 100),
])
def test_oversized_fields_are_refused_by_both_encoder_and_decoder(msg):
    with pytest.raises(ValueError):
        msg.encode()
    # the same bytes, written without the bounds, are a DecodeError for the receiver
    w = Writer().u8(M.VERSION).u8(msg.TYPE)
    for kind, value in zip(msg.FIELDS, (getattr(msg, f) for f in msg.__dataclass_fields__), strict=True):
        M._w(kind.split(":")[0], w, value)
    with pytest.raises(DecodeError):
        M.decode(w.getvalue())


@pytest.mark.parametrize("value, ok", [("70000", False), ("0", False), ("abc", False), ("-1", False),
                                       ("9" * 40, False), ("65535", True), ("", True)])
def test_max_members_is_validated(value, ok):
    w = World()
    w.login("alice")
    reply = w.ask("alice", "create", network="n", max_members=value)
    assert bool(reply.ok) == ok, reply.error
    if not ok:
        assert "max_members" in reply.error
    for _conn, msg in w.core.outbox():
        msg.encode()  # everything the server sends still encodes
    for msg in w.inbox["alice"]:
        msg.encode()


def test_bad_approval_and_mode_are_refused():
    w = World()
    w.login("alice")
    assert "approval" in w.ask("alice", "create", network="n", approval="yes").error
    assert "mode" in w.ask("alice", "create", network="n", mode="x" * 10).error


def test_a_thousand_members_in_one_network():
    w = World()
    w.core.default_max_members = 2000
    w.login("alice")
    assert w.ask("alice", "create", network="big").ok
    keys = [KeyPair.generate().public for _ in range(999)]
    for i, k in enumerate(keys):
        w.store.register_client(k, f"member-{i:04d}-with-a-longish-nickname", w.now)
        w.store.set_member("big", k, "member")
    w.inbox["alice"] = []
    w.core.receive("alice", M.Resync(0), w.now)  # a fresh netmap
    w.flush()
    parts = w.take("alice", M.Netmap)
    assert len(parts) > 1 and [p.more for p in parts] == [1] * (len(parts) - 1) + [0]
    assert all(len(p.encode()) <= FRAME_PAYLOAD for p in parts)
    assert len({p.seq for p in parts}) == 1

    # the client's side puts the parts back together (and they survive the wire)
    client = ControlClient(KeyPair.generate(), ("127.0.0.1", 1), os.urandom(32), "x", lambda: 1,
                           on_welcome=None, on_peer_up=None, on_peer_down=None)

    async def feed(msgs):
        for m in msgs:
            await client._dispatch(M.decode(m.encode()))

    asyncio.run(feed(parts))
    assert len(client.networks["big"].members) == 1000
    assert client.seq == parts[0].seq

    # a change (a nickname) reaches every member as one Delta, also split
    assert w.ask("alice", "nick", nickname="alice2").ok
    deltas = w.take("alice", M.Delta)
    assert len(deltas) > 1 and all(len(d.encode()) <= FRAME_PAYLOAD for d in deltas)
    asyncio.run(feed(deltas))
    assert client.seq == deltas[0].seq and len(client.networks["big"].members) == 1000
    assert "alice2" in {m.nickname for m in client.networks["big"].members}
