"""The cluster store: PostgreSQL through psycopg 3 and a psycopg_pool connection pool.

N server nodes share one database. Every public method borrows a pooled
connection and runs in exactly one transaction (`with self._tx()`): when it
returns, PostgreSQL has committed it, so a change a client was told had
succeeded survives kill -9 of any node. Numbered migrations run once, under
an advisory lock, so nodes that start together do not race. Overlay
addresses are handed out inside the registering transaction under a second
advisory lock: two nodes can never give out the same address.

The cluster's own tables (presence, nodes) and LISTEN/NOTIFY live in
io/cluster.py; this module only keeps the repository the control server
reads and writes.
"""

from __future__ import annotations

import contextlib
import ipaddress

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool

from hamachi.store.protocol import (
    AccountRecord,
    AuditRecord,
    BanRecord,
    ClientRecord,
    MemberRecord,
    NetworkRecord,
    StoreError,
    SuspensionRecord,
)

MIGRATIONS = [
    # 1: the first schema (the same tables as the SQLite store)
    """
    CREATE TABLE clients (
        public_key BYTEA PRIMARY KEY,
        nickname TEXT NOT NULL,
        address4 TEXT NOT NULL UNIQUE,
        address6 TEXT NOT NULL UNIQUE,
        created DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE networks (
        name TEXT PRIMARY KEY,
        owner BYTEA NOT NULL REFERENCES clients(public_key),
        password_hash BYTEA,
        mode TEXT NOT NULL DEFAULT 'tun',
        locked BOOLEAN NOT NULL DEFAULT false,
        approval BOOLEAN NOT NULL DEFAULT false,
        max_members INTEGER NOT NULL
    );
    CREATE TABLE members (
        network TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE ON UPDATE CASCADE,
        public_key BYTEA NOT NULL REFERENCES clients(public_key),
        state TEXT NOT NULL CHECK (state IN ('member', 'pending')),
        joined BIGINT GENERATED ALWAYS AS IDENTITY,
        PRIMARY KEY (network, public_key)
    );
    CREATE INDEX members_by_client ON members(public_key);
    CREATE TABLE tokens (
        token_hash BYTEA PRIMARY KEY,
        expires DOUBLE PRECISION NOT NULL,
        used BOOLEAN NOT NULL DEFAULT false
    );
    """,
    # 2: the cluster: live nodes, who is online on which node, and fan-out too big for a NOTIFY
    """
    CREATE TABLE cluster_nodes (
        node TEXT PRIMARY KEY,
        heartbeat TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE presence (
        public_key BYTEA PRIMARY KEY,
        node TEXT NOT NULL,
        info BYTEA NOT NULL,
        lost_at TIMESTAMPTZ
    );
    CREATE INDEX presence_by_node ON presence(node);
    CREATE TABLE cluster_mail (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        payload BYTEA NOT NULL,
        created TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    """,
    # 3: per-network options set by the owner (LAN: broadcast on/off, rate limit, bridges)
    """
    CREATE TABLE network_settings (
        network TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE ON UPDATE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (network, key)
    );
    """,
    # 4: the operator's state (accounts and plans, bans, suspensions, audit log), as in SQLite's 3
    """
    CREATE TABLE accounts (
        name TEXT PRIMARY KEY,
        plan TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE account_keys (
        public_key BYTEA PRIMARY KEY REFERENCES clients(public_key),
        account TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
        attached BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX account_keys_by_account ON account_keys(account);
    CREATE TABLE bans (
        cidr TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        actor TEXT NOT NULL
    );
    CREATE TABLE suspensions (
        subject TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        actor TEXT NOT NULL
    );
    CREATE TABLE audit (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time DOUBLE PRECISION NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    """,
]
MIGRATION_LOCK = 0x68616D31  # "ham1": pg_advisory_xact_lock key for migrations
ADDRESS_LOCK = 0x68616D32  # "ham2": serialises overlay address allocation across nodes
_CLIENT_COLS = "public_key, nickname, address4, address6, created"


def _client(r) -> ClientRecord:
    return ClientRecord(bytes(r[0]), r[1], r[2], r[3], r[4])


class PostgresStore:
    def __init__(self, dsn: str, overlay4: ipaddress.IPv4Network, overlay6: ipaddress.IPv6Network | None, *,
                 pool_size: int = 8, timeout: float = 10.0):
        self.dsn = dsn
        self.overlay4 = overlay4
        self.overlay6 = overlay6 or ipaddress.IPv6Network("fd00:6861:6d61::/48")
        try:
            self.pool = ConnectionPool(dsn, min_size=1, max_size=max(1, pool_size), timeout=timeout, open=False,
                                       name="hamachi-store")
            self.pool.open(wait=True, timeout=timeout)
        except (psycopg.Error, Exception) as exc:
            with contextlib.suppress(Exception):
                self.pool.close()
            raise StoreError(f"cannot reach the PostgreSQL database: {exc}") from None
        self._migrate()

    @contextlib.contextmanager
    def _tx(self):
        # pool.connection() commits on a clean exit and rolls back on an exception: one transaction.
        with self.pool.connection() as db:
            yield db

    def _migrate(self) -> None:
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, "
                       "applied TIMESTAMPTZ NOT NULL DEFAULT now())")
            done = {r[0] for r in db.execute("SELECT version FROM migrations")}
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version not in done:
                    db.execute(sql)
                    db.execute("INSERT INTO migrations (version) VALUES (%s)", (version,))

    def schema_version(self) -> int:
        with self._tx() as db:
            return db.execute("SELECT max(version) FROM migrations").fetchone()[0]

    # -- clients ---------------------------------------------------------------
    def get_client(self, public_key: bytes) -> ClientRecord | None:
        with self._tx() as db:
            r = db.execute(f"SELECT {_CLIENT_COLS} FROM clients WHERE public_key = %s", (public_key,)).fetchone()
        return _client(r) if r else None

    def get_clients(self, public_keys: list[bytes]) -> dict[bytes, ClientRecord]:
        with self._tx() as db:
            rows = db.execute(f"SELECT {_CLIENT_COLS} FROM clients WHERE public_key = ANY(%s)",
                              (list(public_keys),)).fetchall()
        return {bytes(r[0]): _client(r) for r in rows}

    def register_client(self, public_key: bytes, nickname: str, now: float) -> ClientRecord:
        with self._tx() as db:
            r = db.execute(f"SELECT {_CLIENT_COLS} FROM clients WHERE public_key = %s", (public_key,)).fetchone()
            if r:
                return _client(r)
            db.execute("SELECT pg_advisory_xact_lock(%s)", (ADDRESS_LOCK,))
            r = db.execute(f"SELECT {_CLIENT_COLS} FROM clients WHERE public_key = %s", (public_key,)).fetchone()
            if r:  # another node registered it while we waited for the lock
                return _client(r)
            n = db.execute("SELECT count(*) FROM clients").fetchone()[0]
            hosts = self.overlay4.num_addresses - 2
            if n >= hosts - 1:
                raise StoreError("the server's overlay address space is full")
            i = n + 2  # index 1 is kept for the server, as in the SQLite store
            while True:
                a4 = str(self.overlay4.network_address + i)
                if not db.execute("SELECT 1 FROM clients WHERE address4 = %s", (a4,)).fetchone():
                    break
                i += 1
            a6 = str(self.overlay6.network_address + (int.from_bytes(public_key[:8], "big") or 2))
            while db.execute("SELECT 1 FROM clients WHERE address6 = %s", (a6,)).fetchone():
                a6 = str(ipaddress.IPv6Address(a6) + 1)
            db.execute("INSERT INTO clients VALUES (%s, %s, %s, %s, %s)", (public_key, nickname, a4, a6, now))
            return ClientRecord(public_key, nickname, a4, a6, now)

    def set_nickname(self, public_key: bytes, nickname: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE clients SET nickname = %s WHERE public_key = %s", (nickname, public_key))

    def add_token(self, token_hash: bytes, expires: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO tokens (token_hash, expires) VALUES (%s, %s)", (token_hash, expires))

    def use_token(self, token_hash: bytes, now: float) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE tokens SET used = true WHERE token_hash = %s AND NOT used AND expires > %s",
                             (token_hash, now))
            return cur.rowcount == 1

    # -- networks ----------------------------------------------------------------
    def get_network(self, name: str) -> NetworkRecord | None:
        with self._tx() as db:
            r = db.execute("SELECT name, owner, password_hash, mode, locked, approval, max_members "
                           "FROM networks WHERE name = %s", (name,)).fetchone()
        if not r:
            return None
        return NetworkRecord(r[0], bytes(r[1]), None if r[2] is None else bytes(r[2]), r[3], r[4], r[5], r[6])

    def create_network(self, rec: NetworkRecord) -> None:
        try:
            with self._tx() as db:
                db.execute("INSERT INTO networks VALUES (%s, %s, %s, %s, %s, %s, %s)",
                           (rec.name, rec.owner, rec.password_hash, rec.mode, rec.locked, rec.approval,
                            rec.max_members))
                db.execute("INSERT INTO members (network, public_key, state) VALUES (%s, %s, 'member')",
                           (rec.name, rec.owner))
        except errors.UniqueViolation as exc:
            raise StoreError(f"network name {rec.name!r} is taken") from exc

    def update_network(self, name: str, *, locked: bool | None = None, owner: bytes | None = None) -> None:
        with self._tx() as db:
            if locked is not None:
                db.execute("UPDATE networks SET locked = %s WHERE name = %s", (locked, name))
            if owner is not None:
                db.execute("UPDATE networks SET owner = %s WHERE name = %s", (owner, name))

    def delete_network(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM networks WHERE name = %s", (name,))

    def network_settings(self, name: str) -> dict[str, str]:
        with self._tx() as db:
            rows = db.execute("SELECT key, value FROM network_settings WHERE network = %s ORDER BY key",
                              (name,)).fetchall()
        return dict(rows)

    def set_network_settings(self, name: str, values: dict[str, str | None]) -> None:
        """Set (or, with None, clear) options of a network, all in one transaction."""
        with self._tx() as db:
            for k, v in values.items():
                if v is None:
                    db.execute("DELETE FROM network_settings WHERE network = %s AND key = %s", (name, k))
                else:
                    db.execute("INSERT INTO network_settings VALUES (%s, %s, %s) ON CONFLICT (network, key) "
                               "DO UPDATE SET value = excluded.value", (name, k, v))

    # -- members ---------------------------------------------------------------
    def members(self, network: str) -> list[MemberRecord]:
        with self._tx() as db:
            rows = db.execute("SELECT network, public_key, state FROM members WHERE network = %s ORDER BY joined",
                              (network,)).fetchall()
        return [MemberRecord(r[0], bytes(r[1]), r[2]) for r in rows]

    def member_clients(self, network: str) -> list[tuple[MemberRecord, ClientRecord]]:
        with self._tx() as db:
            rows = db.execute(f"SELECT m.network, m.state, {', '.join('c.' + c for c in _CLIENT_COLS.split(', '))} "
                              "FROM members m JOIN clients c USING (public_key) WHERE m.network = %s "
                              "ORDER BY m.joined", (network,)).fetchall()
        return [(MemberRecord(r[0], bytes(r[2]), r[1]), _client(r[2:])) for r in rows]

    def memberships(self, public_key: bytes) -> list[MemberRecord]:
        with self._tx() as db:
            rows = db.execute("SELECT network, public_key, state FROM members WHERE public_key = %s "
                              "ORDER BY network", (public_key,)).fetchall()
        return [MemberRecord(r[0], bytes(r[1]), r[2]) for r in rows]

    def set_member(self, network: str, public_key: bytes, state: str) -> None:
        try:
            with self._tx() as db:
                db.execute("INSERT INTO members (network, public_key, state) VALUES (%s, %s, %s) "
                           "ON CONFLICT (network, public_key) DO UPDATE SET state = excluded.state",
                           (network, public_key, state))
        except errors.ForeignKeyViolation as exc:
            raise StoreError(f"no network named {network!r}") from exc

    def remove_member(self, network: str, public_key: bytes) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM members WHERE network = %s AND public_key = %s", (network, public_key))

    # -- listings (admin) --------------------------------------------------------
    def _rows(self, sql: str, args: tuple = ()) -> list:
        with self._tx() as db:
            return db.execute(sql, args).fetchall()

    def clients(self) -> list[ClientRecord]:
        return [_client(r) for r in self._rows(f"SELECT {_CLIENT_COLS} FROM clients ORDER BY created")]

    def networks(self) -> list[NetworkRecord]:
        names = [r[0] for r in self._rows("SELECT name FROM networks ORDER BY name")]
        return [n for n in map(self.get_network, names) if n is not None]

    def networks_owned(self, public_key: bytes) -> list[str]:
        return [r[0] for r in self._rows("SELECT name FROM networks WHERE owner = %s ORDER BY name", (public_key,))]

    # -- accounts and plans ------------------------------------------------------
    def create_account(self, name: str, plan: str, now: float) -> None:
        try:
            with self._tx() as db:
                db.execute("INSERT INTO accounts VALUES (%s, %s, %s)", (name, plan, now))
        except errors.UniqueViolation as exc:
            raise StoreError(f"account {name!r} exists") from exc

    def get_account(self, name: str) -> AccountRecord | None:
        rows = self._rows("SELECT name, plan, created FROM accounts WHERE name = %s", (name,))
        return AccountRecord(*rows[0]) if rows else None

    def accounts(self) -> list[AccountRecord]:
        return [AccountRecord(*r) for r in self._rows("SELECT name, plan, created FROM accounts ORDER BY name")]

    def set_account_plan(self, name: str, plan: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE accounts SET plan = %s WHERE name = %s", (plan, name))

    def attach(self, public_key: bytes, account: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO account_keys (public_key, account) VALUES (%s, %s) ON CONFLICT (public_key) "
                       "DO UPDATE SET account = excluded.account", (public_key, account))

    def detach(self, public_key: bytes) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM account_keys WHERE public_key = %s", (public_key,)).rowcount == 1

    def account_of(self, public_key: bytes) -> str | None:
        rows = self._rows("SELECT account FROM account_keys WHERE public_key = %s", (public_key,))
        return rows[0][0] if rows else None

    def account_keys(self, account: str) -> list[bytes]:
        return [bytes(r[0]) for r in self._rows("SELECT public_key FROM account_keys WHERE account = %s "
                                                "ORDER BY attached", (account,))]

    # -- bans, suspensions, audit --------------------------------------------------
    def add_ban(self, rec: BanRecord) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO bans VALUES (%s, %s, %s, %s) ON CONFLICT (cidr) DO UPDATE SET "
                       "reason = excluded.reason, created = excluded.created, actor = excluded.actor",
                       (rec.cidr, rec.reason, rec.created, rec.actor))

    def remove_ban(self, cidr: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM bans WHERE cidr = %s", (cidr,)).rowcount == 1

    def bans(self) -> list[BanRecord]:
        return [BanRecord(*r) for r in self._rows("SELECT cidr, reason, created, actor FROM bans ORDER BY cidr")]

    def suspend(self, rec: SuspensionRecord) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO suspensions VALUES (%s, %s, %s, %s) ON CONFLICT (subject) DO UPDATE SET "
                       "reason = excluded.reason, created = excluded.created, actor = excluded.actor",
                       (rec.subject, rec.reason, rec.created, rec.actor))

    def resume(self, subject: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM suspensions WHERE subject = %s", (subject,)).rowcount == 1

    def suspensions(self) -> list[SuspensionRecord]:
        return [SuspensionRecord(*r) for r in
                self._rows("SELECT subject, reason, created, actor FROM suspensions ORDER BY subject")]

    def add_audit(self, time: float, actor: str, action: str, subject: str, detail: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO audit (time, actor, action, subject, detail) VALUES (%s, %s, %s, %s, %s)",
                       (time, actor, action, subject, detail))

    def audit(self, limit: int = 100) -> list[AuditRecord]:
        rows = self._rows("SELECT id, time, actor, action, subject, detail FROM audit ORDER BY id DESC LIMIT %s",
                          (limit,))
        return [AuditRecord(*r) for r in reversed(rows)]

    def close(self) -> None:
        self.pool.close()
