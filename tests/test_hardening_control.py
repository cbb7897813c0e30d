"""Hardening of the control server (issue 9, items 3 and 5): what one client can no longer do to the others.

In memory, with the real core and store and a hand-advanced clock (tests/test_control_proto.World).
"""

from __future__ import annotations

import pytest

from hamachi.crypto.keys import encode_key
from hamachi.proto.control_server import REQUEST_BURST
from hamachi.wire import control as M
from tests.test_control_proto import World


def _pushes(w: World, *names: str) -> int:
    return sum(len(w.take(n, M.Delta)) + len(w.take(n, M.PeerUp)) + len(w.take(n, M.PeerDown)) for n in names)


def test_leave_from_a_non_member_and_a_repeated_nick_push_nothing():
    w = World()
    for n in ("alice", "bob", "mallory"):
        w.login(n)
    assert w.ask("alice", "create", network="lan").ok
    assert w.ask("bob", "join", network="lan").ok
    _pushes(w, "alice", "bob")
    for _ in range(10):
        assert w.ask("mallory", "leave", network="lan").error == "you are not a member of 'lan'"
        assert w.ask("bob", "nick", nickname="bob").ok
    assert _pushes(w, "alice", "bob") == 0  # the members heard nothing of it
    assert w.ask("bob", "nick", nickname="robert").ok  # a real change still reaches them
    assert len(w.take("alice", M.Delta)) == 1


def test_request_budget_refuses_a_flood_and_spares_other_clients():
    w = World()
    for n in ("alice", "mallory"):
        w.login(n)
    answers = [w.ask("mallory", "leave", network="nowhere").error for _ in range(int(REQUEST_BURST) + 30)]
    assert answers.count("too many requests from this client; slow down") >= 30
    assert w.ask("alice", "create", network="lan").ok  # another client is not affected
    w.now += 10  # the budget refills
    assert w.ask("mallory", "leave", network="nowhere").error == "no network named 'nowhere'"


def test_wrong_passwords_are_throttled_per_client_even_from_new_addresses():
    w = World()
    for n in ("alice", "mallory"):
        w.login(n)
    assert w.ask("alice", "create", network="lan", password="right").ok
    errors = []
    for i in range(8):
        w.core.conns["mallory"].source = (f"203.0.113.{i}", 4000)  # a new address every time
        errors.append(w.ask("mallory", "join", network="lan", password=f"guess{i}").error)
    assert any(e.startswith("too many wrong passwords") for e in errors)
    assert w.core.password_job("mallory", M.Request(99, "join", (("network", "lan"), ("password", "x")))) is None


def test_reject_of_a_full_member_drops_its_tunnels():
    w = World()
    for n in ("alice", "bob"):
        w.login(n)
    assert w.ask("alice", "create", network="lan").ok
    assert w.ask("bob", "join", network="lan").ok
    w.take("alice", M.PeerDown), w.take("bob", M.PeerDown)
    assert w.ask("alice", "reject", network="lan", member="bob").ok
    assert [d.public_key for d in w.take("alice", M.PeerDown)] == [w.key("bob")]
    assert [d.public_key for d in w.take("bob", M.PeerDown)] == [w.key("alice")]


def test_an_impostor_named_like_a_member_is_neither_approved_nor_given_the_network():
    w = World()
    for n in ("owner", "alice", "mallory"):
        w.login(n)
    assert w.ask("owner", "create", network="club", approval="1").ok
    assert w.ask("alice", "join", network="club").ok == 2
    # mallory cannot take alice's name in a network alice is in
    assert w.ask("mallory", "join", network="club").ok == 2
    assert "already called 'alice'" in w.ask("mallory", "nick", nickname="alice").error
    # even if two members end up with one name (renamed at login), a name never picks one of them
    w.store.set_nickname(w.key("mallory"), "alice")
    refusal = w.ask("owner", "approve", network="club", member="alice").error
    assert "2 members of 'club' are called 'alice'" in refusal
    assert "called" in w.ask("owner", "transfer", network="club", member="alice").error
    assert w.store.get_network("club").owner == w.key("owner")
    assert w.ask("owner", "approve", network="club", member=encode_key(w.key("alice"))).ok
    states = {m.public_key: m.state for m in w.store.members("club")}
    assert states[w.key("alice")] == "member" and states[w.key("mallory")] == "pending"


def test_a_pending_applicant_sees_only_the_network_name():
    w = World()
    for n in ("owner", "alice", "snoop"):
        w.login(n)
    assert w.ask("owner", "create", network="club", approval="1").ok
    assert w.ask("alice", "join", network="club").ok == 2
    assert w.ask("owner", "approve", network="club", member="alice").ok
    w.take("snoop", M.Delta)
    assert w.ask("snoop", "join", network="club").ok == 2
    seen = [ni for d in w.take("snoop", M.Delta) for ni in d.networks]
    w.core.receive("snoop", M.Resync(0), w.now)
    w.flush()
    seen += [ni for nm in w.take("snoop", M.Netmap) for ni in nm.networks]
    assert seen and all(ni.name == "club" for ni in seen)
    assert all([m.public_key for m in ni.members] == [w.key("snoop")] for ni in seen)
    # members still see the applicant (so the owner can decide)
    w.ask("owner", "lock", network="club")
    (d,) = w.take("alice", M.Delta)[-1:]
    assert w.key("snoop") in {m.public_key for m in d.networks[0].members}


# The authorization table: every owner and member verb, by each kind of caller.
OWNER_VERBS = {
    "approve": {"member": "target"}, "reject": {"member": "target"}, "evict": {"member": "target"},
    "lock": {}, "unlock": {}, "transfer": {"member": "target"}, "delete": {},
    "broadcast": {"state": "off"},
}
MEMBER_VERBS = {"leave": {}}


def _table_world(role: str) -> tuple[World, str]:
    w = World()
    w.core.default_max_members = 10
    for n in ("owner", "target", "caller"):
        w.login(n)
    assert w.ask("owner", "create", network="net", approval="1").ok
    w.ask("target", "join", network="net")
    w.ask("owner", "approve", network="net", member="target")
    if role in ("pending", "member"):
        w.ask("caller", "join", network="net")
    if role == "member":
        w.ask("owner", "approve", network="net", member="caller")
    return w, ("owner" if role == "owner" else "caller")


def _state(w: World):
    net = w.store.get_network("net")
    if net is None:
        return None
    return (net.owner, net.locked, tuple(sorted((m.public_key, m.state) for m in w.store.members("net"))),
            tuple(sorted(w.store.network_settings("net"))))


@pytest.mark.parametrize("role", ["non-member", "pending", "member", "owner"])
@pytest.mark.parametrize("verb", sorted(OWNER_VERBS) + sorted(MEMBER_VERBS))
def test_authorization_table(role, verb):
    w, caller = _table_world(role)
    args = {k: encode_key(w.key("target")) if v == "target" else v
            for k, v in {**OWNER_VERBS, **MEMBER_VERBS}[verb].items()}
    before = _state(w)
    reply = w.ask(caller, verb, network="net", **args)
    after = _state(w)
    if verb in OWNER_VERBS:
        allowed = role == "owner"
    else:  # leave: anyone in the network but its owner
        allowed = role in ("pending", "member")
    assert bool(reply.ok) == allowed, (role, verb, reply)
    if not allowed:
        assert after == before, "a refused verb changed nothing"
    elif verb == "leave":
        assert w.key("caller") not in {m[0] for m in after[2]}
    elif verb == "delete":
        assert after is None
    else:
        assert after != before or verb in ("approve", "unlock")  # already a member; already unlocked
