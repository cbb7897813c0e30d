"""The operator's verbs (`hamachi server admin ...`), sans I/O, on a running ControlServer.

The daemon's local API hands each verb its arguments, the caller (who, from
SO_PEERCRED) and `now`; the verb reads or changes the store through the core,
so a change applies at once to online clients (a suspension disconnects, a plan
change is checked at the next join), and every change is written to the audit
log with who made it. Results are JSON-ready dicts; a bad argument raises
AdminError with one line for the operator.

Subjects: a client is named by its public key (or a unique prefix of at least
6 characters), a unique nickname, or its overlay IPv4 address; an account by
its name. `key:...` and `account:...` force one reading.
"""

from __future__ import annotations

import logging

from hamachi.crypto.keys import encode_key
from hamachi.proto import policy as P
from hamachi.proto.control_server import ControlServer, RequestRefused, _valid_name
from hamachi.store.protocol import BanRecord, ClientRecord, StoreError, SuspensionRecord

log = logging.getLogger("hamachi.server")
MAX_REASON = 200


class AdminError(Exception):
    """A bad admin command: one line, exit code 1 (or 2 for usage)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _reason(args: dict) -> str:
    reason = str(args.get("reason") or "").strip()
    if not reason:
        raise AdminError("--reason is required (the refused user reads it)", 2)
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise AdminError(f"--reason must be 1-{MAX_REASON} printable characters", 2)
    return reason


class Operator:
    def __init__(self, core: ControlServer):
        self.core = core
        self.store = core.store

    def call(self, verb: str, args: dict, actor: str, now: float):
        fn = getattr(self, "v_" + verb.replace("-", "_"), None)
        if fn is None:
            raise AdminError(f"unknown admin verb {verb!r}", 2)
        try:
            return fn(args, actor, now)
        except StoreError as exc:
            raise AdminError(str(exc)) from exc

    def _log(self, actor: str, action: str, subject: str, detail: str, now: float) -> None:
        log.info("admin %s: %s %s %s", actor, action, subject, detail)
        self.core.audit(actor, "admin:" + action, subject, detail, now)

    # -- resolving names --------------------------------------------------------------
    def client(self, text: str) -> ClientRecord:
        text = (text or "").strip()
        if text.startswith("key:"):
            text = text[4:]
        if not text:
            raise AdminError("name a client: its key, a unique nickname or its address", 2)
        clients = self.store.clients()
        exact = [c for c in clients if encode_key(c.public_key) == text or c.address4 == text]
        if exact:
            return exact[0]
        hits = [c for c in clients if c.nickname == text]
        if not hits and len(text) >= 6:
            hits = [c for c in clients if encode_key(c.public_key).startswith(text)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise AdminError(f"{text!r} names {len(hits)} clients; give the key")
        raise AdminError(f"no client {text!r}")

    def subject(self, text: str) -> tuple[str, list[bytes]]:
        """('account:NAME' | 'key:KEY', the keys it covers)."""
        text = (text or "").strip()
        name = text[8:] if text.startswith("account:") else text
        if not text.startswith("key:") and self.store.get_account(name) is not None:
            return "account:" + name, self.store.account_keys(name)
        if text.startswith("account:"):
            raise AdminError(f"no account {name!r}")
        c = self.client(text)
        return "key:" + encode_key(c.public_key), [c.public_key]

    # -- views ------------------------------------------------------------------------
    def _client_view(self, c: ClientRecord) -> dict:
        acct, plan = self.core.account_of(c.public_key)
        oc = self.core.online.get(c.public_key)
        return {"key": encode_key(c.public_key), "nickname": c.nickname, "address4": c.address4,
                "address6": c.address6, "online": oc is not None, "source": oc.source[0] if oc else None,
                "account": acct, "plan": plan.name, "suspended": self.core.suspension(c.public_key),
                "networks": [m.network for m in self.store.memberships(c.public_key)],
                "owns": self.store.networks_owned(c.public_key)}

    def _network_view(self, name: str, members: bool) -> dict:
        n = self.store.get_network(name)
        acct, plan = self.core.account_of(n.owner)
        owner = self.store.get_client(n.owner)
        ms = self.store.members(name)
        out = {"name": n.name, "owner": encode_key(n.owner), "owner_nickname": owner.nickname if owner else "",
               "owner_account": acct, "plan": plan.name, "mode": n.mode, "locked": n.locked,
               "approval": n.approval, "members": sum(m.state == "member" for m in ms),
               "pending": sum(m.state == "pending" for m in ms),
               "limit": min(n.max_members, plan.members_per_network)}
        if members:
            out["member_list"] = [{"key": encode_key(m.public_key), "nickname": c.nickname if c else "",
                                   "state": m.state, "online": m.public_key in self.core.online}
                                  for m in ms for c in [self.store.get_client(m.public_key)]]
        return out

    def v_clients(self, args, actor, now):
        return {"clients": [self._client_view(c) for c in self.store.clients()]}

    def v_online(self, args, actor, now):
        out = []
        for key, oc in sorted(self.core.online.items(), key=lambda kv: kv[1].nickname):
            acct, plan = self.core.account_of(key)
            out.append({"key": encode_key(key), "nickname": oc.nickname, "source": f"{oc.source[0]}:{oc.source[1]}",
                        "endpoint": oc.endpoint, "since": round(self.core.wall(oc.since), 3),
                        "account": acct, "plan": plan.name})
        return {"online": out}

    def v_networks(self, args, actor, now):
        return {"networks": [self._network_view(n.name, False) for n in self.store.networks()]}

    def v_show(self, args, actor, now):
        what = str(args.get("subject") or "")
        if self.store.get_network(what) is not None:
            return {"network": self._network_view(what, True)}
        acct = what[8:] if what.startswith("account:") else what
        if not what.startswith("key:") and self.store.get_account(acct) is not None:
            return {"account": self._account_view(acct)}
        return {"client": self._client_view(self.client(what))}

    def v_audit(self, args, actor, now):
        try:
            limit = max(1, min(10000, int(args.get("limit") or 50)))
        except (TypeError, ValueError) as exc:
            raise AdminError("--limit must be a number", 2) from exc
        return {"audit": [{"id": r.id, "time": r.time, "actor": r.actor, "action": r.action,
                           "subject": r.subject, "detail": r.detail} for r in self.store.audit(limit)]}

    # -- bans -------------------------------------------------------------------------
    def v_bans(self, args, actor, now):
        return {"bans": [{"cidr": b.cidr, "reason": b.reason, "created": b.created, "actor": b.actor}
                         for b in self.store.bans()],
                "config": [{"cidr": str(e.network), "scopes": list(e.scopes), "reason": e.reason}
                           for e in self.core._config_deny]}

    def v_ban(self, args, actor, now):
        try:
            net = P.parse_cidr(str(args.get("cidr") or ""))
        except ValueError as exc:
            raise AdminError(str(exc), 2) from exc
        reason = _reason(args)
        self.store.add_ban(BanRecord(str(net), reason, self.core.wall(now), actor))
        self.core.reload_policy(self.core.plans, self.core._config_deny)
        kicked = []
        for key, oc in list(self.core.online.items()):
            entry = self.core.deny.match(oc.source[0], "login")
            if entry is not None and entry.origin == "admin":
                self.core.kick(key, self.core.refused(P.deny_refusal(entry, "login"), oc.nickname, now),
                               "banned", now)
                kicked.append(encode_key(key))
        self._log(actor, "ban", str(net), reason, now)
        return {"banned": str(net), "reason": reason, "disconnected": kicked}

    def v_unban(self, args, actor, now):
        try:
            net = str(P.parse_cidr(str(args.get("cidr") or "")))
        except ValueError as exc:
            raise AdminError(str(exc), 2) from exc
        if not self.store.remove_ban(net):
            raise AdminError(f"{net} is not banned (bans from the config file change there, then SIGHUP)")
        self.core.reload_policy(self.core.plans, self.core._config_deny)
        self._log(actor, "unban", net, "", now)
        return {"unbanned": net}

    # -- suspensions ------------------------------------------------------------------
    def v_suspend(self, args, actor, now):
        subject, keys = self.subject(str(args.get("subject") or ""))
        reason = _reason(args)
        self.store.suspend(SuspensionRecord(subject, reason, self.core.wall(now), actor))
        line = self.core.refused(P.suspension_refusal(reason), subject, now)
        kicked = [encode_key(k) for k in keys if self.core.kick(k, line, "suspended", now)]
        self._log(actor, "suspend", subject, reason, now)
        return {"suspended": subject, "reason": reason, "disconnected": kicked}

    def v_resume(self, args, actor, now):
        subject, _ = self.subject(str(args.get("subject") or ""))
        if not self.store.resume(subject):
            raise AdminError(f"{subject} is not suspended")
        self._log(actor, "resume", subject, "", now)
        return {"resumed": subject}

    # -- plans and accounts -----------------------------------------------------------
    def v_plans(self, args, actor, now):
        return {"default": self.core.plans.default,
                "plans": [{"name": p.name, "members_per_network": p.members_per_network,
                           "networks_per_client": p.networks_per_client,
                           "clients_per_account": p.clients_per_account, "relay_rate_bps": p.relay_rate_bps,
                           "relay_bytes_per_day": p.relay_bytes_per_day} for p in self.core.plans.plans.values()]}

    def _plan_name(self, args) -> str:
        plan = str(args.get("plan") or "")
        if plan not in self.core.plans.plans:
            raise AdminError(f"no plan {plan!r} (have: {', '.join(self.core.plans.plans)})", 2)
        return plan

    def v_plan_set(self, args, actor, now):
        name = str(args.get("account") or "")
        if self.store.get_account(name) is None:
            raise AdminError(f"no account {name!r} (a client's own plan changes by attaching it to an account: "
                             f"admin account create NAME --plan PLAN; admin account attach NAME KEY)")
        plan = self._plan_name(args)
        self.store.set_account_plan(name, plan)
        self._log(actor, "plan-set", "account:" + name, plan, now)
        return {"account": name, "plan": plan}

    def _account_view(self, name: str) -> dict:
        a = self.store.get_account(name)
        keys = self.store.account_keys(name)
        return {"name": a.name, "plan": self.core.plans.get(a.plan).name, "created": a.created,
                "clients": [{"key": encode_key(k), "nickname": c.nickname if c else "", "online": k in self.core.online}
                            for k in keys for c in [self.store.get_client(k)]],
                "suspended": next((s.reason for s in self.store.suspensions() if s.subject == "account:" + name), None)}

    def v_account_list(self, args, actor, now):
        return {"accounts": [self._account_view(a.name) for a in self.store.accounts()]}

    def v_account_create(self, args, actor, now):
        try:
            name = _valid_name(str(args.get("account") or ""), "account name")
        except RequestRefused as exc:
            raise AdminError(str(exc), 2) from exc
        if name.startswith(("key:", "account:")) or ":" in name:
            raise AdminError("an account name has no ':'", 2)
        plan = self._plan_name({"plan": args.get("plan") or self.core.plans.default})
        self.store.create_account(name, plan, self.core.wall(now))
        self._log(actor, "account-create", "account:" + name, plan, now)
        return {"account": name, "plan": plan}

    def v_account_attach(self, args, actor, now):
        name = str(args.get("account") or "")
        acct = self.store.get_account(name)
        if acct is None:
            raise AdminError(f"no account {name!r}")
        c = self.client(str(args.get("client") or ""))
        if self.store.account_of(c.public_key) == name:
            return {"account": name, "attached": encode_key(c.public_key)}
        refusal = self.core.plans.deny_client(self.core.plans.get(acct.plan), name, len(self.store.account_keys(name)))
        if refusal is not None:
            raise AdminError(self.core.refused(refusal, "account:" + name, now))
        self.store.attach(c.public_key, name)
        self._log(actor, "account-attach", "account:" + name, encode_key(c.public_key), now)
        return {"account": name, "attached": encode_key(c.public_key)}

    def v_account_detach(self, args, actor, now):
        c = self.client(str(args.get("client") or ""))
        name = self.store.account_of(c.public_key)
        if name is None or not self.store.detach(c.public_key):
            raise AdminError(f"{c.nickname} is not attached to an account")
        self._log(actor, "account-detach", "account:" + name, encode_key(c.public_key), now)
        return {"account": name, "detached": encode_key(c.public_key)}

    # -- networks -------------------------------------------------------------------
    def v_evict(self, args, actor, now):
        name = str(args.get("network") or "")
        net = self.store.get_network(name)
        if net is None:
            raise AdminError(f"no network {name!r}")
        c = self.client(str(args.get("client") or ""))
        if not any(m.public_key == c.public_key for m in self.store.members(name)):
            raise AdminError(f"{c.nickname} is not a member of {name!r}")
        try:
            self.core._remove(net, c.public_key, "evicted")
        except RequestRefused as exc:
            raise AdminError(str(exc)) from exc
        self._log(actor, "evict", name, encode_key(c.public_key), now)
        return {"network": name, "evicted": encode_key(c.public_key)}

