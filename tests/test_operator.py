"""Plans, accounts, deny-lists, suspension and the admin verbs, on the control core in memory."""

from __future__ import annotations

import ipaddress

import pytest

from hamachi import config as C
from hamachi.crypto.keys import encode_key
from hamachi.crypto.ticket import Ticket
from hamachi.proto.control_server import RelayInfo
from hamachi.proto.operator import AdminError, Operator
from hamachi.proto.policy import DenyEntry, DenyList, Plan, Plans, parse_cidr
from hamachi.wire import control as M
from tests.test_control_proto import World

ADMIN = "uid 0 pid 1"


def world(plans=C.DEFAULT_PLANS, deny=()):
    w = World()
    w.core.default_max_members = 256
    w.core.reload_policy(Plans({p.name: p for p in plans}, "free"), tuple(deny))
    return w, Operator(w.core)


def test_default_plans_mirror_the_original():
    p = {x.name: x for x in C.DEFAULT_PLANS}
    assert (p["free"].members_per_network, p["standard"].members_per_network,
            p["premium"].members_per_network) == (5, 32, 256)
    assert {x.clients_per_account for x in C.DEFAULT_PLANS} == {256}


def test_members_limit_at_the_boundary_and_plan_change_applies_at_once():
    w, op = world()
    names = [f"m{i}" for i in range(8)]
    for n in names:
        w.login(n)
    assert w.ask("m0", "create", network="lan").ok
    for n in names[1:5]:
        assert w.ask(n, "join", network="lan").ok  # 5 members: the free plan's limit
    refused = w.ask("m5", "join", network="lan")
    assert refused.error == "network 'lan' is full: the owner's plan 'free' allows 5 members"
    assert w.core.refusals["plan_members"] == 1
    # The owner's account moves to standard: the next join passes, no restart.
    op.call("account-create", {"account": "club", "plan": "free"}, ADMIN, w.now)
    op.call("account-attach", {"account": "club", "client": "m0"}, ADMIN, w.now)
    op.call("plan-set", {"account": "club", "plan": "standard"}, ADMIN, w.now)
    assert w.ask("m5", "join", network="lan").ok
    assert w.ask("m6", "join", network="lan").ok
    # Back to free: 7 members stay, nobody new gets in.
    op.call("plan-set", {"account": "club", "plan": "free"}, ADMIN, w.now)
    assert sum(m.state == "member" for m in w.store.members("lan")) == 7
    assert "allows 5 members" in w.ask("m7", "join", network="lan").error
    view = op.call("show", {"subject": "lan"}, ADMIN, w.now)["network"]
    assert (view["members"], view["limit"], view["plan"]) == (7, 5, "free")
    sets = [a for a in w.store.audit() if a.action == "admin:plan-set"]
    assert [(a.actor, a.subject, a.detail) for a in sets] == [(ADMIN, "account:club", "standard"),
                                                             (ADMIN, "account:club", "free")]


def test_networks_per_client_and_clients_per_account_at_the_boundary():
    tiny = Plan("free", members_per_network=5, networks_per_client=2, clients_per_account=2)
    w, op = world(plans=(tiny,))
    for n in ("a", "b", "c"):
        w.login(n)
    assert w.ask("a", "create", network="n1").ok and w.ask("a", "create", network="n2").ok
    assert w.ask("a", "create", network="n3").error == \
        "your plan 'free' allows 2 networks per client; delete one first"
    op.call("account-create", {"account": "acme"}, ADMIN, w.now)
    for n in ("a", "b"):
        op.call("account-attach", {"account": "acme", "client": n}, ADMIN, w.now)
    with pytest.raises(AdminError, match="account 'acme' is full: its plan 'free' allows 2 clients"):
        op.call("account-attach", {"account": "acme", "client": "c"}, ADMIN, w.now)
    op.call("account-detach", {"client": "b"}, ADMIN, w.now)
    op.call("account-attach", {"account": "acme", "client": "c"}, ADMIN, w.now)
    accts = op.call("account-list", {}, ADMIN, w.now)["accounts"]
    assert [c["nickname"] for c in accts[0]["clients"]] == ["a", "c"]


def test_suspension_disconnects_drops_tunnels_refuses_and_resumes():
    w, op = world()
    for n in ("alice", "bob"):
        w.login(n)
    w.ask("alice", "create", network="lan")
    w.ask("bob", "join", network="lan")
    w.inbox = {k: [] for k in w.inbox}
    out = op.call("suspend", {"subject": "bob", "reason": "spam"}, ADMIN, w.now)
    w.flush()
    assert out["disconnected"] == [encode_key(w.key("bob"))]
    assert w.take("bob", M.Close)[0].reason == "this client is suspended by the server operator: spam"
    (down,) = w.take("alice", M.PeerDown)
    assert (down.public_key, down.reason) == (w.key("bob"), "suspended")  # alice's client drops the tunnel
    w.login("bob")
    assert w.take("bob", M.Close)[0].reason.endswith(": spam")
    assert "bob" not in w.core.conns
    with pytest.raises(AdminError, match="--reason is required"):
        op.call("suspend", {"subject": "alice"}, ADMIN, w.now)
    op.call("resume", {"subject": "bob"}, ADMIN, w.now)
    assert isinstance(w.login("bob"), M.Welcome)
    actions = [(a.actor, a.action) for a in w.store.audit()]
    assert (ADMIN, "admin:suspend") in actions and (ADMIN, "admin:resume") in actions
    assert ("server", "refused:suspended") in actions
    # An account suspension covers every key in it.
    op.call("account-create", {"account": "team"}, ADMIN, w.now)
    op.call("account-attach", {"account": "team", "client": "alice"}, ADMIN, w.now)
    assert op.call("suspend", {"subject": "team", "reason": "unpaid"}, ADMIN, w.now)["suspended"] == "account:team"
    w.flush()
    assert w.take("alice", M.Close)[0].reason.endswith("unpaid")


def test_deny_list_login_registration_relay_and_reload():
    deny = (DenyEntry(parse_cidr("198.51.100.31/32"), ("login",), "abuse from this host"),)
    w, op = world(deny=deny)
    w.login("x")  # 198.51.100.31
    (close,) = w.take("x", M.Close)
    assert close.reason == "login refused for your address (198.51.100.31/32): abuse from this host"
    assert w.core.refusals["denied_login"] == 1
    # Reload (SIGHUP) without the entry: the same host logs in.
    w.core.reload_policy(w.core.plans, ())
    assert isinstance(w.login("x"), M.Welcome)


def test_deny_registration_relay_and_admin_ban():
    w, op = world()
    w.login("alice")
    w.login("bob")
    key = b"k" * 32
    w.core.relays = (RelayInfo("r1", "203.0.113.1:3480", "", key),)
    w.core.reload_policy(w.core.plans, (
        DenyEntry(parse_cidr("198.51.100.0/24"), ("registration",), "registration is closed"),
        DenyEntry(parse_cidr("198.51.100.32/32"), ("relay",), "relay abuse"),))
    w.core.disconnect("alice", w.now)
    assert isinstance(w.login("alice"), M.Welcome)  # known clients still log in
    (close,) = [m for m in [w.login("carol")] if m is not None]
    assert close.reason == "registration refused for your address (198.51.100.0/24): registration is closed"
    w.ask("alice", "create", network="lan")
    w.ask("bob", "join", network="lan")
    ups = w.take("alice", M.PeerUp)
    assert ups and all(u.relays == () for u in ups)  # bob's address may not use relays
    # An admin ban disconnects clients in the range now and refuses their logins.
    res = op.call("ban", {"cidr": "198.51.100.0/24", "reason": "raid"}, ADMIN, w.now)
    w.flush()
    assert len(res["disconnected"]) == 2
    assert w.take("bob", M.Close)[-1].reason.endswith(": raid")
    w.login("bob")
    assert w.take("bob", M.Close)[-1].reason == "login refused for your address (198.51.100.0/24): raid"
    assert op.call("bans", {}, ADMIN, w.now)["bans"][0]["actor"] == ADMIN
    op.call("unban", {"cidr": "198.51.100.0/24"}, ADMIN, w.now)
    w.core.reload_policy(w.core.plans, ())
    assert isinstance(w.login("bob"), M.Welcome)
    with pytest.raises(AdminError, match="not a CIDR"):
        op.call("ban", {"cidr": "nonsense", "reason": "x"}, ADMIN, w.now)


def test_relay_ticket_carries_the_owner_plan_rate():
    plans = (Plan("free", 5, 16, 256, relay_rate_bps=125_000), Plan("premium", 256, 256, 256))
    w, op = world(plans=plans)
    key = b"k" * 32
    w.core.relays = (RelayInfo("r1", "203.0.113.1:3480", "", key),)
    w.login("alice")
    w.login("bob")
    w.ask("alice", "create", network="lan")
    w.ask("bob", "join", network="lan")
    (up,) = w.take("alice", M.PeerUp)
    t = Ticket.decode(up.relays[0].ticket, key)
    assert (t.rate, t.account) == (125_000, "key:" + encode_key(w.key("alice")))


def test_admin_views_and_resolution():
    w, op = world()
    for n in ("alice", "bob"):
        w.login(n)
    w.ask("alice", "create", network="lan")
    w.ask("bob", "join", network="lan")
    online = op.call("online", {}, ADMIN, w.now)["online"]
    assert [o["nickname"] for o in online] == ["alice", "bob"]
    clients = op.call("clients", {}, ADMIN, w.now)["clients"]
    assert clients[0]["owns"] == ["lan"] and clients[1]["plan"] == "free"
    assert op.call("networks", {}, ADMIN, w.now)["networks"][0]["members"] == 2
    prefix = encode_key(w.key("bob"))[:8]
    assert op.call("show", {"subject": prefix}, ADMIN, w.now)["client"]["nickname"] == "bob"
    op.call("evict", {"network": "lan", "client": "bob"}, ADMIN, w.now)
    w.flush()
    assert any(d.reason == "evicted" for d in w.take("alice", M.PeerDown))
    with pytest.raises(AdminError, match="no client 'nobody'"):
        op.call("show", {"subject": "nobody"}, ADMIN, w.now)
    with pytest.raises(AdminError, match="unknown admin verb"):
        op.call("nuke", {}, ADMIN, w.now)


def test_deny_list_matching():
    d = DenyList([DenyEntry(parse_cidr("2001:db8::/32"), ("login",), "v6"),
                  DenyEntry(parse_cidr("192.0.2.0/24"), ("login", "relay"), "v4")])
    assert d.match("::ffff:192.0.2.7", "login").reason == "v4"  # dual-stack sockets
    assert d.match("2001:db8::1", "relay") is None
    assert d.match("not an ip", "login") is None
    assert d.match("192.0.2.1", "registration") is None
    assert ipaddress.ip_network("10.0.0.0/8") == parse_cidr("10.1.2.3/8")


def test_relay_refuses_a_deny_listed_source_after_the_ticket():
    from hamachi.crypto.ticket import shared_key
    from hamachi.proto.relay import RelayTable
    from hamachi.wire import relay as R
    from tests.test_relay_proto import A_END, RELAY, SERVER, ticket

    t = RelayTable(shared_key(RELAY, SERVER.public),
                   deny=DenyList([DenyEntry(parse_cidr("203.0.113.0/24"), ("relay",), "abuse")]))
    assert t.handle(A_END, R.Bind(0, ticket()).encode(), 1.0, 100.0, source_ip="203.0.113.1") == []
    assert t.drops["denied"] == 1 and not t.sessions
    assert t.handle(A_END, R.Bind(0, ticket()).encode(), 1.0, 100.0, source_ip="192.0.2.1")


def test_suspension_made_elsewhere_applies_within_the_enforce_interval():
    """Another cluster node (or an admin on it) wrote the suspension into the shared store."""
    from hamachi.proto.control_server import ENFORCE_INTERVAL
    from hamachi.store.protocol import SuspensionRecord

    w, _ = world()
    for n in ("alice", "bob"):
        w.login(n)
    w.ask("alice", "create", network="lan")
    w.ask("bob", "join", network="lan")
    w.store.suspend(SuspensionRecord("key:" + encode_key(w.key("bob")), "fraud", 0.0, "uid 0 on node2"))
    w.now += ENFORCE_INTERVAL
    w.core.handle_timer(w.now)
    w.flush()
    assert w.take("bob", M.Close)[0].reason.endswith("fraud")
    assert any(d.reason == "suspended" for d in w.take("alice", M.PeerDown))
