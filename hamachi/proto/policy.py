"""The operator's rules, sans I/O: plans, deny-lists, suspensions, and how a refusal reads.

A plan names limits; an account groups client keys and has one plan; a client
that is not attached to an account is its own account (named ``key:<key>``)
on the default plan. Every decision here is a pure function of the settings
and store records handed in, so `admin plan set` applies at the next request:

    members per network   checked at join/approve against the network owner's plan
                          (a network over its limit keeps its members, takes no new ones)
    networks per client   checked at create
    clients per account   checked at attach
    relay rate, bytes/day written into each relay ticket (the relay enforces them)

Deny-list entries are (CIDR, scopes, reason); the first matching entry wins,
its reason is what the refused user reads. A refusal is one line:
``<what was refused>: <reason>[; retry after N s]``, and every refusal carries
a short code used for counting (metrics, status) and the audit log.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hamachi.crypto.keys import encode_key

SCOPES = ("login", "registration", "relay")


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    members_per_network: int
    networks_per_client: int
    clients_per_account: int
    relay_rate_bps: int = 0  # 0: unlimited
    relay_bytes_per_day: int = 0  # 0: unlimited


@dataclass(frozen=True, slots=True)
class DenyEntry:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    scopes: tuple[str, ...]
    reason: str
    origin: str = "config"  # "config" or "admin" (a ban made with `admin ban`)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why something was refused: a counting code, the line the user reads, and when to retry."""

    code: str
    text: str
    retry_after: float | None = None

    def line(self) -> str:
        if self.retry_after is None:
            return self.text
        return f"{self.text}; retry after {max(1, round(self.retry_after))} s"


class DenyList:
    def __init__(self, entries: tuple[DenyEntry, ...] | list[DenyEntry] = ()):
        self.entries = tuple(entries)

    def match(self, address: str, scope: str) -> DenyEntry | None:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
        for e in self.entries:
            if scope in e.scopes and ip.version == e.network.version and ip in e.network:
                return e
        return None


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR (or a bare address, meaning /32 or /128); ValueError with a readable message."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a CIDR such as 203.0.113.0/24") from exc


def key_account(public_key: bytes) -> str:
    """The implicit account of a client that is attached to none."""
    return "key:" + encode_key(public_key)


class Plans:
    """The plans from the server config, and which one applies to whom."""

    def __init__(self, plans: dict[str, Plan], default: str):
        if default not in plans:
            raise ValueError(f"default plan {default!r} is not defined")
        self.plans = dict(plans)
        self.default = default

    def get(self, name: str | None) -> Plan:
        # A plan removed from the config falls back to the default, never to "unlimited".
        return self.plans.get(name or "", self.plans[self.default])

    def deny_member(self, plan: Plan, network: str, members: int) -> Refusal | None:
        if members >= plan.members_per_network:
            return Refusal("plan_members", f"network {network!r} is full: the owner's plan {plan.name!r} "
                                           f"allows {plan.members_per_network} members")
        return None

    def deny_network(self, plan: Plan, owned: int) -> Refusal | None:
        if owned >= plan.networks_per_client:
            return Refusal("plan_networks", f"your plan {plan.name!r} allows {plan.networks_per_client} "
                                            f"networks per client; delete one first")
        return None

    def deny_client(self, plan: Plan, account: str, clients: int) -> Refusal | None:
        if clients >= plan.clients_per_account:
            return Refusal("plan_clients", f"account {account!r} is full: its plan {plan.name!r} allows "
                                           f"{plan.clients_per_account} clients")
        return None


def generosity(plan: Plan) -> tuple:
    """Orders plans by their relay allowance, most generous last (0 means unlimited and beats any
    number): a pair sharing networks owned under several plans gets the most generous one."""
    return (plan.relay_rate_bps == 0, plan.relay_rate_bps, plan.relay_bytes_per_day == 0, plan.relay_bytes_per_day)


def suspension_refusal(reason: str) -> Refusal:
    return Refusal("suspended", f"this client is suspended by the server operator: {reason}")


def deny_refusal(entry: DenyEntry, scope: str) -> Refusal:
    what = {"login": "login", "registration": "registration", "relay": "relay use"}[scope]
    return Refusal(f"denied_{scope}", f"{what} refused for your address ({entry.network}): {entry.reason}")
