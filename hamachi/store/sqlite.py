"""The embedded default store: SQLite in WAL mode, foreign keys on, numbered migrations.

Each public method runs in its own transaction (`with self._tx()`), and
`synchronous=FULL` makes a committed transaction survive a crash of the
process or the machine. Overlay addresses are handed out here, inside the
same transaction that registers the client, so two logins can never get the
same address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import sqlite3
import threading

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
    # 1: the first schema
    """
    CREATE TABLE clients (
        public_key BLOB PRIMARY KEY,
        nickname TEXT NOT NULL,
        address4 TEXT NOT NULL UNIQUE,
        address6 TEXT NOT NULL UNIQUE,
        created REAL NOT NULL
    );
    CREATE TABLE networks (
        name TEXT PRIMARY KEY,
        owner BLOB NOT NULL REFERENCES clients(public_key),
        password_hash BLOB,
        mode TEXT NOT NULL DEFAULT 'tun',
        locked INTEGER NOT NULL DEFAULT 0,
        approval INTEGER NOT NULL DEFAULT 0,
        max_members INTEGER NOT NULL
    );
    CREATE TABLE members (
        network TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE ON UPDATE CASCADE,
        public_key BLOB NOT NULL REFERENCES clients(public_key),
        state TEXT NOT NULL CHECK (state IN ('member', 'pending')),
        PRIMARY KEY (network, public_key)
    );
    CREATE INDEX members_by_client ON members(public_key);
    CREATE TABLE tokens (
        token_hash BLOB PRIMARY KEY,
        expires REAL NOT NULL,
        used INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 2: per-network options set by the owner (LAN: broadcast on/off, rate limit, bridges)
    """
    CREATE TABLE network_settings (
        network TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE ON UPDATE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (network, key)
    );
    """,
    # 3: the operator's state (accounts and plans, bans, suspensions, audit log)
    """
    CREATE TABLE accounts (
        name TEXT PRIMARY KEY,
        plan TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE account_keys (
        public_key BLOB PRIMARY KEY REFERENCES clients(public_key),
        account TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE
    );
    CREATE INDEX account_keys_by_account ON account_keys(account);
    CREATE TABLE bans (
        cidr TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        created REAL NOT NULL,
        actor TEXT NOT NULL
    );
    CREATE TABLE suspensions (
        subject TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        created REAL NOT NULL,
        actor TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    """,
]


class SqliteStore:
    def __init__(self, path: str, overlay4: ipaddress.IPv4Network, overlay6: ipaddress.IPv6Network | None):
        self.overlay4 = overlay4
        self.overlay6 = overlay6 or ipaddress.IPv6Network("fd00:6861:6d61::/48")
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, applied REAL)")
            done = {r[0] for r in db.execute("SELECT version FROM migrations")}
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version not in done:
                    for stmt in filter(str.strip, sql.split(";")):
                        db.execute(stmt)
                    db.execute("INSERT INTO migrations VALUES (?, julianday('now'))", (version,))

    @contextlib.contextmanager
    def _tx(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def schema_version(self) -> int:
        return self._db.execute("SELECT max(version) FROM migrations").fetchone()[0]

    # -- clients ---------------------------------------------------------------
    def get_client(self, public_key: bytes) -> ClientRecord | None:
        r = self._db.execute("SELECT public_key, nickname, address4, address6, created FROM clients "
                             "WHERE public_key = ?", (public_key,)).fetchone()
        return ClientRecord(*r) if r else None

    def register_client(self, public_key: bytes, nickname: str, now: float) -> ClientRecord:
        with self._tx() as db:
            r = db.execute("SELECT public_key, nickname, address4, address6, created FROM clients "
                           "WHERE public_key = ?", (public_key,)).fetchone()
            if r:
                return ClientRecord(*r)
            n = db.execute("SELECT count(*) FROM clients").fetchone()[0]
            hosts = self.overlay4.num_addresses - 2
            if n >= hosts - 1:
                raise StoreError("the server's overlay address space is full")
            # Next free host address (skipping network and broadcast); index 1 is kept for the server.
            i = n + 2
            while True:
                a4 = str(self.overlay4.network_address + i)
                if not db.execute("SELECT 1 FROM clients WHERE address4 = ?", (a4,)).fetchone():
                    break
                i += 1
            a6 = str(self.overlay6.network_address + (int.from_bytes(public_key[:8], "big") or 2))
            while db.execute("SELECT 1 FROM clients WHERE address6 = ?", (a6,)).fetchone():
                a6 = str(ipaddress.IPv6Address(a6) + 1)
            db.execute("INSERT INTO clients VALUES (?, ?, ?, ?, ?)", (public_key, nickname, a4, a6, now))
            return ClientRecord(public_key, nickname, a4, a6, now)

    def set_nickname(self, public_key: bytes, nickname: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE clients SET nickname = ? WHERE public_key = ?", (nickname, public_key))

    def add_token(self, token_hash: bytes, expires: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO tokens (token_hash, expires) VALUES (?, ?)", (token_hash, expires))

    def use_token(self, token_hash: bytes, now: float) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE tokens SET used = 1 WHERE token_hash = ? AND used = 0 AND expires > ?",
                             (token_hash, now))
            return cur.rowcount == 1

    # -- networks ----------------------------------------------------------------
    def get_network(self, name: str) -> NetworkRecord | None:
        r = self._db.execute("SELECT name, owner, password_hash, mode, locked, approval, max_members "
                             "FROM networks WHERE name = ?", (name,)).fetchone()
        return NetworkRecord(r[0], r[1], r[2], r[3], bool(r[4]), bool(r[5]), r[6]) if r else None

    def create_network(self, rec: NetworkRecord) -> None:
        with self._tx() as db:
            try:
                db.execute("INSERT INTO networks VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (rec.name, rec.owner, rec.password_hash, rec.mode, int(rec.locked), int(rec.approval),
                            rec.max_members))
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"network name {rec.name!r} is taken") from exc
            db.execute("INSERT INTO members VALUES (?, ?, 'member')", (rec.name, rec.owner))

    def update_network(self, name: str, *, locked: bool | None = None, owner: bytes | None = None) -> None:
        with self._tx() as db:
            if locked is not None:
                db.execute("UPDATE networks SET locked = ? WHERE name = ?", (int(locked), name))
            if owner is not None:
                db.execute("UPDATE networks SET owner = ? WHERE name = ?", (owner, name))

    def delete_network(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM networks WHERE name = ?", (name,))

    def network_settings(self, name: str) -> dict[str, str]:
        rows = self._db.execute("SELECT key, value FROM network_settings WHERE network = ? ORDER BY key",
                                (name,)).fetchall()
        return dict(rows)

    def set_network_settings(self, name: str, values: dict[str, str | None]) -> None:
        """Set (or, with None, clear) options of a network, all in one transaction."""
        with self._tx() as db:
            for k, v in values.items():
                if v is None:
                    db.execute("DELETE FROM network_settings WHERE network = ? AND key = ?", (name, k))
                else:
                    db.execute("INSERT INTO network_settings VALUES (?, ?, ?) ON CONFLICT (network, key) "
                               "DO UPDATE SET value = excluded.value", (name, k, v))

    # -- members ---------------------------------------------------------------
    def members(self, network: str) -> list[MemberRecord]:
        rows = self._db.execute("SELECT network, public_key, state FROM members WHERE network = ? "
                                "ORDER BY rowid", (network,)).fetchall()
        return [MemberRecord(*r) for r in rows]

    def member_clients(self, network: str) -> list[tuple[MemberRecord, ClientRecord]]:
        rows = self._db.execute("SELECT m.network, m.state, c.public_key, c.nickname, c.address4, c.address6, "
                                "c.created FROM members m JOIN clients c ON c.public_key = m.public_key "
                                "WHERE m.network = ? ORDER BY m.rowid", (network,)).fetchall()
        return [(MemberRecord(r[0], r[2], r[1]), ClientRecord(*r[2:])) for r in rows]

    def memberships(self, public_key: bytes) -> list[MemberRecord]:
        rows = self._db.execute("SELECT network, public_key, state FROM members WHERE public_key = ? "
                                "ORDER BY network", (public_key,)).fetchall()
        return [MemberRecord(*r) for r in rows]

    def set_member(self, network: str, public_key: bytes, state: str) -> None:
        try:
            with self._tx() as db:
                db.execute("INSERT INTO members VALUES (?, ?, ?) ON CONFLICT (network, public_key) "
                           "DO UPDATE SET state = excluded.state", (network, public_key, state))
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"no network named {network!r}") from exc

    def remove_member(self, network: str, public_key: bytes) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM members WHERE network = ? AND public_key = ?", (network, public_key))

    # -- listings (admin) --------------------------------------------------------
    def clients(self) -> list[ClientRecord]:
        rows = self._db.execute("SELECT public_key, nickname, address4, address6, created FROM clients "
                                "ORDER BY created").fetchall()
        return [ClientRecord(*r) for r in rows]

    def networks(self) -> list[NetworkRecord]:
        rows = self._db.execute("SELECT name FROM networks ORDER BY name").fetchall()
        return [n for n in (self.get_network(r[0]) for r in rows) if n is not None]

    def networks_owned(self, public_key: bytes) -> list[str]:
        rows = self._db.execute("SELECT name FROM networks WHERE owner = ? ORDER BY name", (public_key,))
        return [r[0] for r in rows]

    # -- accounts and plans ------------------------------------------------------
    def create_account(self, name: str, plan: str, now: float) -> None:
        with self._tx() as db:
            try:
                db.execute("INSERT INTO accounts VALUES (?, ?, ?)", (name, plan, now))
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"account {name!r} exists") from exc

    def get_account(self, name: str) -> AccountRecord | None:
        r = self._db.execute("SELECT name, plan, created FROM accounts WHERE name = ?", (name,)).fetchone()
        return AccountRecord(*r) if r else None

    def accounts(self) -> list[AccountRecord]:
        return [AccountRecord(*r) for r in self._db.execute("SELECT name, plan, created FROM accounts ORDER BY name")]

    def set_account_plan(self, name: str, plan: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE accounts SET plan = ? WHERE name = ?", (plan, name))

    def attach(self, public_key: bytes, account: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO account_keys VALUES (?, ?) ON CONFLICT (public_key) "
                       "DO UPDATE SET account = excluded.account", (public_key, account))

    def detach(self, public_key: bytes) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM account_keys WHERE public_key = ?", (public_key,)).rowcount == 1

    def account_of(self, public_key: bytes) -> str | None:
        r = self._db.execute("SELECT account FROM account_keys WHERE public_key = ?", (public_key,)).fetchone()
        return r[0] if r else None

    def account_keys(self, account: str) -> list[bytes]:
        rows = self._db.execute("SELECT public_key FROM account_keys WHERE account = ? ORDER BY rowid", (account,))
        return [r[0] for r in rows]

    # -- bans, suspensions, audit --------------------------------------------------
    def add_ban(self, rec: BanRecord) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO bans VALUES (?, ?, ?, ?) ON CONFLICT (cidr) DO UPDATE SET "
                       "reason = excluded.reason, created = excluded.created, actor = excluded.actor",
                       (rec.cidr, rec.reason, rec.created, rec.actor))

    def remove_ban(self, cidr: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM bans WHERE cidr = ?", (cidr,)).rowcount == 1

    def bans(self) -> list[BanRecord]:
        return [BanRecord(*r) for r in self._db.execute("SELECT cidr, reason, created, actor FROM bans ORDER BY cidr")]

    def suspend(self, rec: SuspensionRecord) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO suspensions VALUES (?, ?, ?, ?) ON CONFLICT (subject) DO UPDATE SET "
                       "reason = excluded.reason, created = excluded.created, actor = excluded.actor",
                       (rec.subject, rec.reason, rec.created, rec.actor))

    def resume(self, subject: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM suspensions WHERE subject = ?", (subject,)).rowcount == 1

    def suspensions(self) -> list[SuspensionRecord]:
        rows = self._db.execute("SELECT subject, reason, created, actor FROM suspensions ORDER BY subject")
        return [SuspensionRecord(*r) for r in rows]

    def add_audit(self, time: float, actor: str, action: str, subject: str, detail: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO audit (time, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
                       (time, actor, action, subject, detail))

    def audit(self, limit: int = 100) -> list[AuditRecord]:
        rows = self._db.execute("SELECT id, time, actor, action, subject, detail FROM audit "
                                "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [AuditRecord(*r) for r in reversed(rows)]

    def close(self) -> None:
        self._db.close()
