"""Both stores, one suite: migrations, stable unique addresses, cascades, one transaction per change.

Every test runs against SQLite (a file) and against PostgreSQL (a fresh
database in the session's throwaway cluster, see tests/lab/postgres.py).
"""

from __future__ import annotations

import ipaddress
import threading

import pytest

from hamachi.crypto.keys import KeyPair
from hamachi.store import open_store
from hamachi.store.protocol import NetworkRecord, StoreError
from hamachi.store.sqlite import SqliteStore

V4 = ipaddress.IPv4Network("100.64.0.0/10")
V6 = ipaddress.IPv6Network("fd00:1::/48")


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request, tmp_path):
    """make() -> a store; make() again -> the same database reopened (after close)."""
    if request.param == "sqlite":
        where = str(tmp_path / "s.db")
    else:
        where = request.getfixturevalue("postgres").new_database()
    opened = []

    def make():
        s = open_store(request.param, where, V4, V6, pool_size=4)
        opened.append(s)
        return s

    yield make
    for s in opened:
        try:
            s.close()
        except Exception:
            pass


def test_sqlite_pragmas(tmp_path):
    s = SqliteStore(str(tmp_path / "s.db"), V4, V6)
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_schema_and_reopen(make_store):
    s = make_store()
    version = s.schema_version()
    assert version >= 1
    k = KeyPair.generate().public
    c = s.register_client(k, "alice", 1.0)
    s.close()
    s2 = make_store()  # migrations run once; data is still there
    assert s2.schema_version() == version
    assert s2.get_client(k) == c
    assert s2.register_client(k, "renamed", 2.0).address4 == c.address4  # stable across logins


def test_addresses_are_unique_and_in_the_prefix(make_store):
    s = make_store()
    recs = [s.register_client(KeyPair.generate().public, f"c{i}", 0.0) for i in range(50)]
    assert len({r.address4 for r in recs}) == 50 and len({r.address6 for r in recs}) == 50
    assert all(ipaddress.ip_address(r.address4) in V4 for r in recs)
    assert all(ipaddress.ip_address(r.address6) in V6 for r in recs)


def test_concurrent_registrations_never_share_an_address(make_store):
    """Two stores on one database (two cluster nodes) registering at once."""
    stores = [make_store(), make_store()]
    got: list = []

    def work(s):
        got.extend(s.register_client(KeyPair.generate().public, "x", 0.0) for _ in range(20))

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.address4 for r in got}) == 40


def test_network_lifecycle_and_cascade(make_store):
    s = make_store()
    a, b = (s.register_client(KeyPair.generate().public, n, 0.0).public_key for n in ("a", "b"))
    s.create_network(NetworkRecord("lan", a, None, "tun", False, False, 10))
    with pytest.raises(StoreError, match="taken"):
        s.create_network(NetworkRecord("lan", b, None, "tun", False, False, 10))
    s.set_member("lan", b, "pending")
    s.set_member("lan", b, "member")
    assert [(m.public_key, m.state) for m in s.members("lan")] == [(a, "member"), (b, "member")]
    assert [(m.public_key, c.nickname) for m, c in s.member_clients("lan")] == [(a, "a"), (b, "b")]
    s.update_network("lan", locked=True, owner=b)
    n = s.get_network("lan")
    assert n.locked and n.owner == b and not n.approval and n.max_members == 10
    s.remove_member("lan", a)
    assert [m.network for m in s.memberships(b)] == ["lan"] and s.memberships(a) == []
    s.delete_network("lan")
    assert s.members("lan") == [] and s.memberships(b) == [] and s.get_network("lan") is None


def test_nickname_and_password_hash_round_trip(make_store):
    s = make_store()
    a = s.register_client(KeyPair.generate().public, "a", 0.0).public_key
    s.set_nickname(a, "ä-new")
    assert s.get_client(a).nickname == "ä-new"
    s.create_network(NetworkRecord("pw", a, b"\x00hash\xff", "tap", False, True, 3))
    assert s.get_network("pw") == NetworkRecord("pw", a, b"\x00hash\xff", "tap", False, True, 3)


def test_failed_transaction_changes_nothing(make_store):
    s = make_store()
    a = s.register_client(KeyPair.generate().public, "a", 0.0).public_key
    with pytest.raises(StoreError, match="no network"):
        s.set_member("no-such-network", a, "member")  # foreign key violation, rolled back
    assert s.memberships(a) == []
    with pytest.raises(StoreError, match="taken"):  # owner row is inserted only if the network is
        s.create_network(NetworkRecord("x", a, None, "tun", False, False, 10))
        s.create_network(NetworkRecord("x", a, None, "tun", False, False, 10))
    assert [m.network for m in s.memberships(a)] == ["x"]


def test_tokens_are_one_time_and_expire(make_store):
    s = make_store()
    s.add_token(b"h1", expires=100.0)
    assert s.use_token(b"h1", 50.0) and not s.use_token(b"h1", 50.0)
    s.add_token(b"h2", expires=100.0)
    assert not s.use_token(b"h2", 150.0)


def test_network_settings_survive_reopen_and_go_with_the_network(make_store):
    s = make_store()
    k = KeyPair.generate().public
    s.register_client(k, "alice", 1.0)
    s.create_network(NetworkRecord("lan", k, None, "tap", False, False, 10))
    s.set_network_settings("lan", {"broadcast": "off", "broadcast_pps": "50"})
    s.set_network_settings("lan", {"broadcast_pps": None})
    s.close()
    s = make_store()
    assert s.network_settings("lan") == {"broadcast": "off"}
    s.delete_network("lan")
    assert s.network_settings("lan") == {}


def test_operator_state_accounts_bans_suspensions_audit(make_store):
    from hamachi.store.protocol import BanRecord, SuspensionRecord

    s = make_store()
    a, b = KeyPair.generate().public, KeyPair.generate().public
    s.register_client(a, "alice", 1.0)
    s.register_client(b, "bob", 2.0)
    s.create_network(NetworkRecord("lan", a, None, "tun", False, False, 5))
    assert [c.nickname for c in s.clients()] == ["alice", "bob"]
    assert [n.name for n in s.networks()] == ["lan"] and s.networks_owned(a) == ["lan"] and s.networks_owned(b) == []
    s.create_account("club", "free", 3.0)
    with pytest.raises(StoreError, match="account 'club' exists"):
        s.create_account("club", "free", 3.0)
    s.attach(b, "club")
    s.attach(a, "club")
    assert s.account_keys("club") == [b, a] and s.account_of(a) == "club"
    s.set_account_plan("club", "premium")
    assert s.get_account("club").plan == "premium" and [x.name for x in s.accounts()] == ["club"]
    assert s.detach(a) and not s.detach(a) and s.account_of(a) is None
    s.add_ban(BanRecord("192.0.2.0/24", "spam", 4.0, "uid 0"))
    s.add_ban(BanRecord("192.0.2.0/24", "raid", 5.0, "uid 0"))
    assert [(x.cidr, x.reason) for x in s.bans()] == [("192.0.2.0/24", "raid")]
    assert s.remove_ban("192.0.2.0/24") and not s.remove_ban("192.0.2.0/24")
    s.suspend(SuspensionRecord("account:club", "unpaid", 6.0, "uid 0"))
    assert s.suspensions()[0].reason == "unpaid"
    assert s.resume("account:club") and s.suspensions() == []
    for i in range(5):
        s.add_audit(10.0 + i, "uid 0", "admin:x", "s", str(i))
    assert [r.detail for r in s.audit(3)] == ["2", "3", "4"]
    s.close()
    s2 = make_store()  # all of it survives a reopen
    assert s2.get_account("club").plan == "premium" and len(s2.audit(100)) == 5
