"""What the control server needs from its state store. SQLite and PostgreSQL implement it.

Every method is one transaction: when it returns, the change is durable
(SQLite WAL with synchronous=FULL; a PostgreSQL commit), so a change
acknowledged to a client survives kill -9 of the server. Methods block:
the server calls them from its core thread, never from the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ClientRecord:
    public_key: bytes
    nickname: str
    address4: str
    address6: str
    created: float


@dataclass(frozen=True, slots=True)
class NetworkRecord:
    name: str
    owner: bytes
    password_hash: bytes | None
    mode: str
    locked: bool
    approval: bool
    max_members: int


@dataclass(frozen=True, slots=True)
class MemberRecord:
    network: str
    public_key: bytes
    state: str  # "member" or "pending"


@dataclass(frozen=True, slots=True)
class AccountRecord:
    name: str
    plan: str
    created: float


@dataclass(frozen=True, slots=True)
class BanRecord:
    cidr: str
    reason: str
    created: float
    actor: str


@dataclass(frozen=True, slots=True)
class SuspensionRecord:
    subject: str  # "key:<public key>" or "account:<name>"
    reason: str
    created: float
    actor: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    time: float  # wall clock (unix seconds)
    actor: str  # "uid 0 (pid 123)" for an admin, "server" for the server's own refusals
    action: str
    subject: str
    detail: str


class StoreError(Exception):
    """A refusal with a reason a user can read (name taken, no such network, ...)."""


class Store(Protocol):
    def get_client(self, public_key: bytes) -> ClientRecord | None: ...
    def register_client(self, public_key: bytes, nickname: str, now: float) -> ClientRecord: ...
    def set_nickname(self, public_key: bytes, nickname: str) -> None: ...
    def use_token(self, token_hash: bytes, now: float) -> bool: ...
    def add_token(self, token_hash: bytes, expires: float) -> None: ...

    def get_network(self, name: str) -> NetworkRecord | None: ...
    def create_network(self, rec: NetworkRecord) -> None: ...
    def update_network(self, name: str, *, locked: bool | None = None, owner: bytes | None = None) -> None: ...
    def delete_network(self, name: str) -> None: ...
    def network_settings(self, name: str) -> dict[str, str]: ...
    def set_network_settings(self, name: str, values: dict[str, str | None]) -> None: ...

    def members(self, network: str) -> list[MemberRecord]: ...
    def member_clients(self, network: str) -> list[tuple[MemberRecord, ClientRecord]]: ...
    def memberships(self, public_key: bytes) -> list[MemberRecord]: ...
    def set_member(self, network: str, public_key: bytes, state: str) -> None: ...
    def remove_member(self, network: str, public_key: bytes) -> None: ...

    def clients(self) -> list[ClientRecord]: ...
    def networks(self) -> list[NetworkRecord]: ...
    def networks_owned(self, public_key: bytes) -> list[str]: ...

    # operator state: accounts and plans, bans, suspensions, the audit log
    def create_account(self, name: str, plan: str, now: float) -> None: ...
    def get_account(self, name: str) -> AccountRecord | None: ...
    def accounts(self) -> list[AccountRecord]: ...
    def set_account_plan(self, name: str, plan: str) -> None: ...
    def attach(self, public_key: bytes, account: str) -> None: ...
    def detach(self, public_key: bytes) -> bool: ...
    def account_of(self, public_key: bytes) -> str | None: ...
    def account_keys(self, account: str) -> list[bytes]: ...
    def add_ban(self, rec: BanRecord) -> None: ...
    def remove_ban(self, cidr: str) -> bool: ...
    def bans(self) -> list[BanRecord]: ...
    def suspend(self, rec: SuspensionRecord) -> None: ...
    def resume(self, subject: str) -> bool: ...
    def suspensions(self) -> list[SuspensionRecord]: ...
    def add_audit(self, time: float, actor: str, action: str, subject: str, detail: str) -> None: ...
    def audit(self, limit: int = 100) -> list[AuditRecord]: ...

    def close(self) -> None: ...
