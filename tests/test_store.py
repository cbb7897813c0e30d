"""The SQLite store: migrations, WAL, foreign keys, stable addresses, one transaction per change."""

from __future__ import annotations

import ipaddress
import sqlite3

import pytest

from hamachi.crypto.keys import KeyPair
from hamachi.store.protocol import NetworkRecord, StoreError
from hamachi.store.sqlite import SqliteStore

V4 = ipaddress.IPv4Network("100.64.0.0/10")
V6 = ipaddress.IPv6Network("fd00:1::/48")


def test_schema_pragmas_and_reopen(tmp_path):
    path = str(tmp_path / "s.db")
    s = SqliteStore(path, V4, V6)
    assert s.schema_version() == 1
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    k = KeyPair.generate().public
    c = s.register_client(k, "alice", 1.0)
    s.close()
    s2 = SqliteStore(path, V4, V6)  # migrations run once; data is still there
    assert s2.schema_version() == 1
    assert s2.get_client(k) == c
    assert s2.register_client(k, "renamed", 2.0).address4 == c.address4  # stable across logins


def test_addresses_are_unique_and_in_the_prefix(tmp_path):
    s = SqliteStore(":memory:", V4, V6)
    recs = [s.register_client(KeyPair.generate().public, f"c{i}", 0.0) for i in range(50)]
    assert len({r.address4 for r in recs}) == 50 and len({r.address6 for r in recs}) == 50
    assert all(ipaddress.ip_address(r.address4) in V4 for r in recs)
    assert all(ipaddress.ip_address(r.address6) in V6 for r in recs)


def test_network_lifecycle_and_cascade():
    s = SqliteStore(":memory:", V4, V6)
    a, b = (s.register_client(KeyPair.generate().public, n, 0.0).public_key for n in ("a", "b"))
    s.create_network(NetworkRecord("lan", a, None, "tun", False, False, 10))
    with pytest.raises(StoreError, match="taken"):
        s.create_network(NetworkRecord("lan", b, None, "tun", False, False, 10))
    s.set_member("lan", b, "pending")
    s.set_member("lan", b, "member")
    assert [(m.public_key, m.state) for m in s.members("lan")] == [(a, "member"), (b, "member")]
    s.delete_network("lan")
    assert s.members("lan") == [] and s.memberships(b) == []


def test_failed_transaction_changes_nothing():
    s = SqliteStore(":memory:", V4, V6)
    a = s.register_client(KeyPair.generate().public, "a", 0.0).public_key
    with pytest.raises(sqlite3.IntegrityError):
        s.set_member("no-such-network", a, "member")  # foreign key violation
    assert s.memberships(a) == []


def test_tokens_are_one_time_and_expire():
    s = SqliteStore(":memory:", V4, V6)
    s.add_token(b"h1", expires=100.0)
    assert s.use_token(b"h1", 50.0) and not s.use_token(b"h1", 50.0)
    s.add_token(b"h2", expires=100.0)
    assert not s.use_token(b"h2", 150.0)
