"""`hamachi server admin ...`: the operator's verbs, asked of the running server's local API.

Nothing here touches the database: every verb is one `admin` call on the
server's root-only socket, so changes apply to online clients at once and are
written to the audit log with the caller's uid.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hamachi.cli import output

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="HAMACHI_CONFIG", help="The server's TOML config (env HAMACHI_CONFIG)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (with schema_version) instead of a table.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why; the refused user reads it.")]


def _when(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(title: str, rows: list[dict], cols: list[tuple[str, str]]) -> Table:
    t = Table(title=title)
    for _, head in cols:
        t.add_column(head)
    for r in rows:
        t.add_row(*("-" if r.get(k) in (None, "", []) else
                    ", ".join(map(str, r[k])) if isinstance(r.get(k), list) else str(r[k]) for k, _ in cols))
    return t


def build(load: Callable[[str, Path | None], Any], api: Callable[..., Any]) -> typer.Typer:
    app = typer.Typer(help="Operator verbs on the running server (root only): clients, bans, plans, accounts.",
                      no_args_is_help=True)
    plan_app = typer.Typer(help="Plans: list them, or set an account's plan (applies at once).", no_args_is_help=True)
    account_app = typer.Typer(help="Accounts group client keys under one owner and one plan.", no_args_is_help=True)
    app.add_typer(plan_app, name="plan")
    app.add_typer(account_app, name="account")

    def call(config: Path | None, as_json: bool, verb: str, render: Callable[[dict], Any], **args: Any) -> None:
        settings = load("server", config)
        result = api(settings, "admin", {"verb": verb, **{k: v for k, v in args.items() if v is not None}})
        output.emit(result, as_json, render)

    client_cols = [("nickname", "nickname"), ("key", "key"), ("address4", "address"), ("online", "online"),
                   ("account", "account"), ("plan", "plan"), ("networks", "networks"), ("suspended", "suspended")]

    @app.command("clients")
    def clients(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Every registered client, with its account, plan and networks."""
        call(config, as_json, "clients", lambda d: _table(f"{len(d['clients'])} clients", d["clients"], client_cols))

    @app.command("online")
    def online(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Clients logged in now: from where, since when."""
        cols = [("nickname", "nickname"), ("key", "key"), ("source", "from"), ("endpoint", "endpoint"),
                ("account", "account"), ("plan", "plan")]
        call(config, as_json, "online", lambda d: _table(f"{len(d['online'])} online", d["online"], cols))

    @app.command("networks")
    def networks(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Every network: owner, plan, members against the limit."""
        cols = [("name", "network"), ("owner_nickname", "owner"), ("owner_account", "account"), ("plan", "plan"),
                ("members", "members"), ("limit", "limit"), ("pending", "pending"), ("mode", "mode"),
                ("locked", "locked")]
        call(config, as_json, "networks", lambda d: _table(f"{len(d['networks'])} networks", d["networks"], cols))

    @app.command("show")
    def show(subject: Annotated[str, typer.Argument(help="A network name, an account, or a client "
                                                         "(key, key prefix, nickname or address).")],
             config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Everything about one client, account or network."""
        def render(d: dict) -> Any:
            (kind, body), = d.items()
            lines = [f"{kind}:"] + [f"  {k}: {v}" for k, v in body.items() if not isinstance(v, list)
                                    or k in ("networks", "owns")]
            for k in ("member_list", "clients"):
                for m in body.get(k, []):
                    lines.append(f"  - {m['nickname']} {m['key']}" + (f" {m['state']}" if "state" in m else "")
                                 + (" online" if m.get("online") else ""))
            return "\n".join(lines)
        call(config, as_json, "show", render, subject=subject)

    @app.command("audit")
    def audit(limit: Annotated[int, typer.Option("--limit", help="How many of the newest entries.")] = 50,
              config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """The audit log: admin actions (who, when) and a sample of refusals."""
        def render(d: dict) -> Table:
            rows = [{**r, "time": _when(r["time"])} for r in d["audit"]]
            return _table("audit log", rows, [("time", "time"), ("actor", "who"), ("action", "action"),
                                              ("subject", "subject"), ("detail", "detail")])
        call(config, as_json, "audit", render, limit=limit)

    @app.command("ban")
    def ban(cidr: Annotated[str, typer.Argument(help="An address or range, e.g. 203.0.113.0/24.")],
            reason: ReasonOpt = "", config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Refuse logins, registration and relay use from a range; disconnects clients in it now."""
        call(config, as_json, "ban", lambda d: f"banned {d['banned']}: {d['reason']}"
             + (f" (disconnected {len(d['disconnected'])})" if d["disconnected"] else ""), cidr=cidr, reason=reason)

    @app.command("unban")
    def unban(cidr: Annotated[str, typer.Argument(help="A range banned with `admin ban`.")],
              config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Lift a ban."""
        call(config, as_json, "unban", lambda d: f"unbanned {d['unbanned']}", cidr=cidr)

    @app.command("bans")
    def bans(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Bans made here and the config's deny-list."""
        def render(d: dict) -> Table:
            rows = [{**b, "created": _when(b["created"]), "scopes": "all"} for b in d["bans"]]
            rows += [{**e, "actor": "config", "created": "-"} for e in d["config"]]
            return _table("deny-list", rows, [("cidr", "range"), ("scopes", "scopes"), ("reason", "reason"),
                                              ("actor", "by"), ("created", "since")])
        call(config, as_json, "bans", render)

    @app.command("suspend")
    def suspend(subject: Annotated[str, typer.Argument(help="A client (key, nickname, address) or an account.")],
                reason: ReasonOpt = "", config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Disconnect a client or account now and refuse its logins until `admin resume`."""
        call(config, as_json, "suspend", lambda d: f"suspended {d['suspended']}: {d['reason']} "
             f"(disconnected {len(d['disconnected'])})", subject=subject, reason=reason)

    @app.command("resume")
    def resume(subject: Annotated[str, typer.Argument(help="A suspended client or account.")],
               config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Lift a suspension."""
        call(config, as_json, "resume", lambda d: f"resumed {d['resumed']}", subject=subject)

    @app.command("evict")
    def evict(network: Annotated[str, typer.Argument(help="The network.")],
              client: Annotated[str, typer.Argument(help="The member (key, nickname or address).")],
              config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Remove a member from a network; its tunnels to the others drop."""
        call(config, as_json, "evict", lambda d: f"evicted {d['evicted']} from {d['network']}",
             network=network, client=client)

    @plan_app.command("set")
    def plan_set(account: Annotated[str, typer.Argument(help="The account.")],
                 plan: Annotated[str, typer.Argument(help="A plan from the server config.")],
                 config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Change an account's plan; its limits apply at once."""
        call(config, as_json, "plan-set", lambda d: f"account {d['account']} is now on plan {d['plan']}",
             account=account, plan=plan)

    @plan_app.command("list")
    def plan_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """The plans and their limits (0 = unlimited)."""
        cols = [("name", "plan"), ("members_per_network", "members/network"),
                ("networks_per_client", "networks/client"), ("clients_per_account", "clients/account"),
                ("relay_rate_bps", "relay B/s"), ("relay_bytes_per_day", "relay B/day")]
        call(config, as_json, "plans", lambda d: _table(f"plans (default {d['default']})", d["plans"], cols))

    @account_app.command("create")
    def account_create(name: Annotated[str, typer.Argument(help="The account's name.")],
                       plan: Annotated[str | None, typer.Option("--plan", help="Default: the default plan.")] = None,
                       config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Create an account."""
        call(config, as_json, "account-create", lambda d: f"created account {d['account']} on plan {d['plan']}",
             account=name, plan=plan)

    @account_app.command("attach")
    def account_attach(name: Annotated[str, typer.Argument(help="The account.")],
                       client: Annotated[str, typer.Argument(help="The client (key, nickname or address).")],
                       config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Put a client key under an account (and its plan)."""
        call(config, as_json, "account-attach", lambda d: f"attached {d['attached']} to {d['account']}",
             account=name, client=client)

    @account_app.command("detach")
    def account_detach(client: Annotated[str, typer.Argument(help="The client (key, nickname or address).")],
                       config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Take a client out of its account (it is its own account on the default plan again)."""
        call(config, as_json, "account-detach", lambda d: f"detached {d['detached']} from {d['account']}",
             client=client)

    @account_app.command("list")
    def account_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
        """Accounts, their plans and clients."""
        def render(d: dict) -> Table:
            rows = [{**a, "clients": [c["nickname"] for c in a["clients"]]} for a in d["accounts"]]
            return _table(f"{len(rows)} accounts", rows, [("name", "account"), ("plan", "plan"),
                                                          ("clients", "clients"), ("suspended", "suspended")])
        call(config, as_json, "account-list", render)

    return app
