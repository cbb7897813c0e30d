"""`hamachi party host|join|status|leave`: a LAN party with no config file."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from hamachi import config as C
from hamachi.cli import output
from hamachi.crypto.partycode import CodeError, parse_code
from hamachi.exitcodes import ExitCode

party_app = typer.Typer(help="A LAN party with no config: host one, or join one found on the LAN.",
                        no_args_is_help=True)

StateOpt = Annotated[str | None, typer.Option(
    "--state-dir", envvar=C.PARTY_STATE_ENV,
    help="Where keys and state live (default: /var/lib/hamachi/party for root, else XDG state dir).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (with schema_version) instead of a table.")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging on stderr.")]
NickOpt = Annotated[str, typer.Option("--nick", help="Your name in the party (default: the host name).")]


def _say(line: str) -> None:
    print(line, flush=True)


def _run(fn, *args: Any) -> None:
    from hamachi.io.privilege import PrivilegeError
    from hamachi.roles import party

    try:
        code = fn(*args)
    except PrivilegeError as exc:
        output.fail(str(exc))
        raise typer.Exit(int(ExitCode.NO_PRIVILEGE)) from None
    except party.PartyError as exc:
        output.fail(str(exc))
        raise typer.Exit(exc.code) from None
    raise typer.Exit(int(code or 0))


@party_app.command("host")
def party_host(
    name: Annotated[str, typer.Option("--name", help="The party's name, as friends will see it.")] = C.DEFAULT_PARTY_NAME,
    mode: Annotated[str, typer.Option("--mode", help="tun (IP) or tap (Ethernet, for games that need it).")] = C.DEFAULT_PARTY_MODE,
    nick: NickOpt = "",
    public_address: Annotated[str | None, typer.Option(
        "--public-address", help="Your public IP, for the invite line (forward the ports it prints).")] = None,
    state_dir: StateOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Host a party here: server, relay and your client, announced on the LAN. Ctrl-C ends it."""
    import ipaddress

    problems = []
    if mode not in ("tun", "tap"):
        problems.append(f"--mode: {mode!r} is not tun or tap")
    if not 1 <= len(name) <= 64 or not name.isprintable():
        problems.append("--name: 1-64 printable characters")
    if public_address is not None:
        try:
            ipaddress.IPv4Address(public_address)
        except ValueError:
            problems.append(f"--public-address: {public_address!r} is not an IPv4 address")
    if problems:
        for p in problems:
            output.fail(p)
        raise typer.Exit(int(ExitCode.USAGE))
    from hamachi.roles import party

    output.setup_logging(verbose)
    opts = party.HostOptions(name=name, mode=mode, nickname=nick, public_address=public_address,
                             state_dir=state_dir, verbose=verbose > 1)
    _run(party.host, opts, _say)


def _render_found(found: list) -> Table:
    t = Table(title="parties on this LAN")
    for col in ("party", "host", "address", "members", "mode"):
        t.add_column(col)
    for a in found:
        t.add_row(a.name, a.host, f"{a.address}:{a.port}", str(a.members), a.mode)
    return t


def _read_code(given: str | None):
    if given is None:
        if sys.stdin.isatty():
            given = typer.prompt("join code")
        else:
            given = sys.stdin.readline().strip()
            if not given:
                output.fail("no join code: pass --code, type it, or give it on stdin")
                raise typer.Exit(int(ExitCode.USAGE))
    try:
        return parse_code(given)
    except CodeError as exc:
        output.fail(f"join code: {exc}")
        raise typer.Exit(int(ExitCode.USAGE)) from None


@party_app.command("join")
def party_join(
    target: Annotated[str | None, typer.Argument(
        help="The party's name, or an invite line (party:NAME@HOST:PORT/KEY/CODE). Default: the only one.")] = None,
    code: Annotated[str | None, typer.Option("--code", help="The join code (else asked, or read from stdin).")] = None,
    nick: NickOpt = "",
    browse: Annotated[float, typer.Option("--browse", help="Seconds to listen for parties.")] = C.PARTY_BROWSE_SECONDS,
    state_dir: StateOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Find a party on the LAN (or use an invite), check it against the code, and join it."""
    from hamachi.proto.party import InviteError, is_invite, parse_invite
    from hamachi.roles import party

    output.setup_logging(verbose)
    opts = party.JoinOptions(target=target, code=code, nickname=nick, state_dir=state_dir,
                             verbose=verbose > 1, browse_seconds=browse)
    if target is not None and is_invite(target):
        try:
            inv = parse_invite(target)
        except InviteError as exc:
            output.fail(f"invite: {exc}")
            raise typer.Exit(int(ExitCode.USAGE)) from None
        join_code = inv.code if code is None else _read_code(code)
        found, name = [inv.announcement], inv.announcement.name
    else:
        name = target
        try:
            found = party.discover(browse)
        except party.PartyError as exc:
            output.fail(str(exc))
            raise typer.Exit(exc.code) from None
        if found:
            output.err.print(_render_found(found))
        join_code = _read_code(code)
    try:
        chosen, refused = party.pick(found, join_code, name)
    except party.PartyError as exc:
        output.fail(str(exc))
        raise typer.Exit(exc.code) from None
    for r in refused:
        output.err.print(f"refused: {r.reason}", markup=False, highlight=False)
    _run(party.join, opts, join_code, chosen, _say)


def _render_status(d: dict[str, Any]) -> Any:
    from rich.console import Group

    head = Table.grid(padding=(0, 2))
    head.add_row("party", d["name"], "you are", d["role"])
    head.add_row("interface", d["interface"], "addresses", ", ".join(d["addresses"]))
    if d.get("code"):
        head.add_row("join code", d["code"], "invite", d.get("invite") or "")
    t = Table(title="members")
    for col in ("member", "address", "online", "path", "via", "rtt"):
        t.add_column(col)
    for m in d["members"]:
        t.add_row(m["nickname"] + (" (host)" if m["host"] else ""), m["address"], "yes" if m["online"] else "no",
                  m["path"], m["endpoint"] or "-", f"{m['rtt_ms']:.1f} ms" if m.get("rtt_ms") is not None else "-")
    return Group(head, t)


@party_app.command("status")
def party_status(state_dir: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Show the running party: members, their addresses and the path to each (LAN, direct, relay)."""
    from hamachi.roles import party

    try:
        data = party.status(state_dir)
    except party.PartyError as exc:
        output.fail(str(exc))
        raise typer.Exit(exc.code) from None
    output.emit(data, as_json, _render_status)


@party_app.command("leave")
def party_leave(state_dir: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Leave the party (a member), or end it for everyone (the host)."""
    from hamachi.roles import party

    try:
        data = party.leave(state_dir)
    except party.PartyError as exc:
        output.fail(str(exc))
        raise typer.Exit(exc.code) from None
    output.emit(data, as_json, lambda d: f"{'ended' if d['role'] == 'host' else 'left'} the party {d['name']!r}")
