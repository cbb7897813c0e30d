"""The `hamachi` command: `hamachi <role> <verb>`.

The CLI never reaches into protocol internals: daemons are started through
`hamachi.roles`, and a running daemon is asked through the local API.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hamachi import __version__
from hamachi import config as C
from hamachi.cli import output, templates, views
from hamachi.cli.party import party_app
from hamachi.crypto.keys import KeyPair
from hamachi.exitcodes import ExitCode, StartupError


def _plain_metavars() -> None:
    """Help shows TEXT, PATH, INTEGER (or nothing, for a flag), never Python types like <bool>."""
    import typer.core as tc

    names = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH", "file": "FILE",
             "directory": "DIR", "bool": "", "list[str]": "TEXT", "list[path]": "PATH", "list[int]": "INTEGER"}

    def wrap(orig):
        def display_type_rich(self, ctx):
            if getattr(self, "is_flag", False) or getattr(self, "count", False):
                return None
            text = orig(self, ctx)
            if not text or self.metavar is not None:
                return text
            many = text.endswith("...")
            bare = text.removesuffix("...").strip("<>")
            plain = names.get(bare, bare.upper().replace("|", " | "))
            return (plain + ("..." if many or bare.startswith("list[") else "")) or None
        return display_type_rich

    for cls in (tc.TyperOption, tc.TyperArgument):
        cls.display_type_rich = wrap(cls.display_type_rich)

    def usage_name(self) -> str:  # NETWORK and [STATE], not {network} and [state]
        name = self.display_name_raw.upper()
        return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")

    tc.TyperArgument._usage_display_name = usage_name


_plain_metavars()

app = typer.Typer(
    name="hamachi",
    help="Open, self-hostable peer-to-peer VPN: control server, relay and client.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
server_app = typer.Typer(help="The control server: logins, networks, presence, STUN.", no_args_is_help=True)
relay_app = typer.Typer(help="The relay: end-to-end encrypted fallback when peers cannot meet directly.",
                        no_args_is_help=True)
client_app = typer.Typer(help="The client daemon and the commands that talk to it.", no_args_is_help=True)
app.add_typer(server_app, name="server")
app.add_typer(relay_app, name="relay")
app.add_typer(client_app, name="client")
app.add_typer(party_app, name="party")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="HAMACHI_CONFIG", show_envvar=False,
                 help="TOML config file (env HAMACHI_CONFIG; default /etc/hamachi/ROLE.toml for root, "
                      "else ~/.config/hamachi/ROLE.toml)."),
]


def _dir_opt(role: str) -> Any:
    return Annotated[Path | None, typer.Option(
        "--dir", help=f"Directory to write {role}.toml and {role}.key into (default: /etc/hamachi for root, "
                      "else ~/.config/hamachi).")]


def _init_target(role: str, directory: Path | None) -> Path:
    return directory if directory is not None else C.default_config_path(role).parent
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (with schema_version) instead of a table.")]
CheckOpt = Annotated[
    bool, typer.Option("--check", help="Validate the config, print the resolved settings and exit.")
]
TokenOpt = Annotated[str, typer.Option(
    "--token", help="One-time enrolment token (servers with registration = \"token\"; `hamachi server token`).")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging on stderr (-vv: debug).")]

_verbose = 0


def _version(value: bool) -> None:
    if value:
        import platform

        try:
            from hamachi._buildinfo import BUILD  # only in a built .pyz
        except ImportError:
            BUILD = (f"{platform.python_implementation()} {platform.python_version()}, "
                     f"{platform.system().lower()} {platform.machine()}")
        typer.echo(f"hamachi {__version__} ({BUILD})")
        raise typer.Exit(ExitCode.OK)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Open, self-hostable peer-to-peer VPN."""


# ---------------------------------------------------------------------------
# helpers


def _exit(code: ExitCode) -> None:
    output.refusal(int(code))
    raise typer.Exit(int(code))


def _load(role: str, path: Path | None, as_json: bool = False, need_key: bool = False) -> Any:
    """The settings; only a daemon reads its private key (`need_key`): the commands that talk to a
    running daemon do not, so a member of the API socket's group can run them without root."""
    output.json_errors = as_json
    if path is None:
        path = C.default_config_path(role)
        if not path.exists():
            output.fail(f"no config at {path} (the default): create one with `hamachi {role} init`, or pass "
                        "--config FILE (or set HAMACHI_CONFIG)")
            _exit(ExitCode.BAD_CONFIG)
    try:
        return C.load(role, path, need_key)
    except C.ConfigError as exc:
        for line in exc.problems:
            output.fail(line, prefix=False)
        _exit(ExitCode.BAD_CONFIG)


def _check_view(role: str, settings: Any, as_json: bool) -> None:
    data = {"role": role, "valid": True, "settings": C.redacted(settings)}

    output.emit(data, as_json, lambda d: views.key_values(d["settings"], f"{role} config "
                                                          f"{settings.config_path}: OK"))


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")


def _init_dir(directory: Path, files: list[str], force: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in files:
        p = directory / name
        if p.exists():
            if not force:
                output.fail(f"{p} already exists (use --force to overwrite)")
                _exit(ExitCode.FAILURE)
            p.unlink()


def _run_role(role: str, config: Path | None, check: bool, as_json: bool, verbose: int, **overrides: Any) -> None:
    """`server run`, `relay run`, `client up`: validate, or start the role's daemon in the foreground."""
    global _verbose
    _verbose = verbose
    settings = _load(role, config, as_json, need_key=True)
    overrides = {k: v for k, v in overrides.items() if v}
    if overrides:
        settings = C.with_overrides(settings, **overrides)
    if check:
        _check_view(role, settings, as_json)
        return
    import importlib

    _run_daemon(importlib.import_module(f"hamachi.roles.{role}").run, settings)


def _run_daemon(fn: Any, settings: Any) -> None:
    from hamachi.io.privilege import PrivilegeError

    output.setup_logging(max(_verbose, 1))
    try:
        code = fn(settings)
    except PrivilegeError as exc:
        output.fail(str(exc))
        _exit(ExitCode.NO_PRIVILEGE)
    except StartupError as exc:
        output.fail(str(exc))
        _exit(exc.code)
    except KeyboardInterrupt:
        code = ExitCode.OK
    _exit(ExitCode(code or 0))


def _api(settings: Any, verb: str, args: dict[str, Any] | None = None) -> Any:
    from hamachi.io import localapi

    try:
        return localapi.call(settings.api_socket, verb, args)
    except localapi.DaemonNotRunning as exc:
        role = ("server run" if hasattr(settings, "listen") else "relay run" if hasattr(settings, "listen_udp")
                else "client up")
        output.fail(f"{exc}; start it with `hamachi {role} --config {settings.config_path}`")
        _exit(ExitCode.NOT_RUNNING)
    except PermissionError:
        hint = (" (or a member of the socket's group: set [client] api_group)" if hasattr(settings, "api_group")
                else "")
        output.fail(f"permission denied on {settings.api_socket}: the local API is for root only{hint}")
        _exit(ExitCode.NO_PRIVILEGE)
    except localapi.ApiError as exc:
        output.fail(str(exc))
        _exit(ExitCode(exc.code) if exc.code in ExitCode._value2member_map_ else ExitCode.FAILURE)


# ---------------------------------------------------------------------------
# server


@server_app.command("init")
def server_init(
    public_address: Annotated[
        list[str], typer.Option("--public-address", help="A public IP of this server (give two for RFC 5780).")
    ],
    port: Annotated[int, typer.Option(help="Control port.")] = C.DEFAULT_CONTROL_PORT,
    directory: _dir_opt("server") = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a commented server config and a new key, and print what clients need."""
    directory = _init_target("server", directory)
    output.json_errors = as_json
    problems = []
    for a in public_address:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            problems.append(f"--public-address: {a!r} is not an IP address")
    if len(public_address) > 2:
        problems.append("--public-address: give at most two")
    if not 1 <= port <= 65535:
        problems.append(f"--port: {port} is out of range 1..65535")
    if problems:
        for p in problems:
            output.fail(p)
        _exit(ExitCode.USAGE)
    _init_dir(directory, ["server.toml", "server.key"], force)
    kp = KeyPair.generate()
    _write_secret(directory / "server.key", kp.private_text())
    ula = ipaddress.IPv6Network((int.from_bytes(b"\xfd" + secrets.token_bytes(5), "big") << 80, 48))
    (directory / "server.toml").write_text(templates.server_toml(public_address, port, str(ula)))
    host = public_address[0] if public_address else "SERVER_ADDRESS"
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    connect = f"hamachi client init --dir DIR --server {hostport} --server-key {kp.public_text()} --name NICK"
    data = {"config": str(directory / "server.toml"), "public_key": kp.public_text(), "connect": connect}
    output.emit(data, as_json, lambda d: (
        f"wrote {d['config']}\nserver public key: {d['public_key']}\nclients connect with:\n  {d['connect']}"))


@server_app.command("run")
def server_run(config: ConfigOpt = None, check: CheckOpt = False, as_json: JsonOpt = False,
               verbose: VerboseOpt = 0) -> None:
    """Run the control server in the foreground."""
    _run_role("server", config, check, as_json, verbose)


# ---------------------------------------------------------------------------
# relay


@relay_app.command("init")
def relay_init(
    server_key: Annotated[str, typer.Option("--server-key", help="Public key of the control server.")] = "",
    udp_port: Annotated[int, typer.Option(help="UDP port for relayed traffic.")] = C.DEFAULT_RELAY_UDP_PORT,
    tcp_port: Annotated[int, typer.Option(help="TCP port for framed relaying.")] = C.DEFAULT_RELAY_TCP_PORT,
    directory: _dir_opt("relay") = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a commented relay config and a new key, and print the server's \\[\\[relay]] entry."""
    directory = _init_target("relay", directory)
    output.json_errors = as_json
    if not server_key:
        output.fail("--server-key is required: a relay honours only the tickets of one control server "
                    "(`hamachi server init` prints its public key)")
        _exit(ExitCode.USAGE)
    try:
        C._parse_public_key(server_key)
    except ValueError as exc:
        output.fail(f"--server-key: {exc}")
        _exit(ExitCode.USAGE)
    _init_dir(directory, ["relay.toml", "relay.key"], force)
    kp = KeyPair.generate()
    _write_secret(directory / "relay.key", kp.private_text())
    (directory / "relay.toml").write_text(templates.relay_toml(server_key, udp_port, tcp_port))
    entry = (f'[[relay]]\nname = "{directory.name}"\npublic_key = "{kp.public_text()}"\n'
             f'udp = "RELAY_ADDRESS:{udp_port}"\ntcp = "RELAY_ADDRESS:{tcp_port}"')
    data = {"config": str(directory / "relay.toml"), "public_key": kp.public_text(), "server_entry": entry}
    output.emit(data, as_json, lambda d: (
        f"wrote {d['config']}\nrelay public key: {d['public_key']}\nadd to server.toml:\n{d['server_entry']}"))


@relay_app.command("run")
def relay_run(config: ConfigOpt = None, check: CheckOpt = False, as_json: JsonOpt = False,
              verbose: VerboseOpt = 0) -> None:
    """Run the relay in the foreground."""
    _run_role("relay", config, check, as_json, verbose)


# ---------------------------------------------------------------------------
# client


@client_app.command("init")
def client_init(
    server: Annotated[str, typer.Option("--server", help="Control server as HOST:PORT.")],
    server_key: Annotated[str, typer.Option("--server-key", help="The server's public key.")],
    name: Annotated[str, typer.Option("--name", help="Your nickname.")],
    interface: Annotated[str, typer.Option(help="Virtual interface name.")] = C.DEFAULT_INTERFACE,
    token: TokenOpt = "",
    directory: _dir_opt("client") = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a commented client config and a new key."""
    directory = _init_target("client", directory)
    output.json_errors = as_json
    problems = []
    try:
        C.parse_endpoint(server, C.DEFAULT_CONTROL_PORT)
    except ValueError as exc:
        problems.append(f"--server: {exc}")
    try:
        C._parse_public_key(server_key)
    except ValueError as exc:
        problems.append(f"--server-key: {exc}")
    if any(ch in token for ch in "\"\\\n"):
        problems.append("--token: not a token (it has quotes, backslashes or line breaks)")
    try:
        C._nickname(name)
        C._interface_name(interface)
    except ValueError as exc:
        problems.append(f"--name/--interface: {exc}")
    if problems:
        for p in problems:
            output.fail(p)
        _exit(ExitCode.USAGE)
    _init_dir(directory, ["client.toml", "client.key"], force)
    kp = KeyPair.generate()
    _write_secret(directory / "client.key", kp.private_text())
    (directory / "client.toml").write_text(templates.client_toml(name, server, server_key, interface, token))
    data = {"config": str(directory / "client.toml"), "public_key": kp.public_text()}
    output.emit(data, as_json, lambda d: (
        f"wrote {d['config']}\nclient public key: {d['public_key']}\n"
        f"start it with: hamachi client up --config {d['config']}"))


@client_app.command("up")
def client_up(config: ConfigOpt = None, check: CheckOpt = False, as_json: JsonOpt = False,
              verbose: VerboseOpt = 0, token: TokenOpt = "") -> None:
    """Run the client daemon in the foreground: TUN device, tunnels, control connection."""
    _run_role("client", config, check, as_json, verbose, token=token)


@client_app.command("status")
def client_status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show the running daemon: interface, each peer's path, RTT, traffic and drops."""
    settings = _load("client", config, as_json)
    result = _api(settings, "status")
    output.emit(result, as_json, views.status)


def _render_networks(d: dict[str, Any]) -> Any:
    from rich.console import Group

    if not d["networks"]:
        return "not a member of any network (create one with `hamachi client create NAME`)"
    tables = []
    for n in d["networks"]:
        flags = ", ".join(f for f, on in (("locked", n["locked"]), ("password", n.get("password")),
                                          ("approval", n["approval"])) if on) or "open"
        pending = "  -- you wait for the owner's approval" if n.get("pending") else ""
        t = Table(title=f"{n['name']}  ({n['mode']}, {flags}, max {n['max_members']}){pending}")
        for col in ("member", "address", "state", "online"):
            t.add_column(col)
        for m in n["members"]:
            t.add_row(m["nickname"] + (" (owner)" if m["owner"] else ""), m["address4"], m["state"],
                      "yes" if m["online"] else "no")
        tables.append(t)
    return Group(*tables)


@client_app.command("networks")
def client_networks(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List your networks and their members, with who is online."""
    settings = _load("client", config, as_json)
    output.emit(_api(settings, "networks"), as_json, _render_networks)


@client_app.command("peers")
def client_peers(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List the peers you have tunnels to: path, endpoint, handshake, traffic."""
    settings = _load("client", config, as_json)
    result = _api(settings, "status")
    output.emit({"peers": result["peers"]}, as_json, lambda d: views.peers_table(d["peers"]))


NetworkArg = Annotated[str, typer.Argument(help="Network name.")]
MemberArg = Annotated[str, typer.Argument(help="Member: nickname, overlay address or public key.")]


def _network_verb(verb: str, settings: Any, as_json: bool, done: str, **args: Any) -> None:
    result = _api(settings, verb, {k: v for k, v in args.items() if v is not None}) or {}
    data = {"ok": True, "verb": verb, **{k: v for k, v in args.items() if k != "password"}}
    if result.get("pending"):  # not a failure: the owner has to approve
        data.update(pending=True, note=result.get("note", ""))
        done = result.get("note") or f"waiting for the owner's approval to join {args.get('network')}"
    output.emit(data, as_json, lambda d: done)


# What each verb prints when it worked, in one voice ("created lanparty", "left lanparty").
_DONE = {"leave": "left {network}", "lock": "locked {network}", "unlock": "unlocked {network}",
         "delete": "deleted {network}", "approve": "approved {member} in {network}",
         "reject": "turned {member} away from {network}", "evict": "evicted {member} from {network}",
         "transfer": "handed {network} to {member}"}


@client_app.command("create")
def client_create(
    network: NetworkArg,
    password: Annotated[str | None, typer.Option(help="Password others must give to join.")] = None,
    approval: Annotated[bool, typer.Option(help="Joins wait for your approval.")] = False,
    mode: Annotated[str, typer.Option(help="tun (IP) or tap (Ethernet).")] = "tun",
    config: ConfigOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a network; you become its owner."""
    settings = _load("client", config, as_json)
    _network_verb("create", settings, as_json, f"created {network}", network=network, password=password,
                  approval="1" if approval else "0", mode=mode)


@client_app.command("join")
def client_join(
    network: NetworkArg,
    password: Annotated[str | None, typer.Option(help="The network's password.")] = None,
    config: ConfigOpt = None, as_json: JsonOpt = False,
) -> None:
    """Join a network (or ask to, where the owner approves joins)."""
    settings = _load("client", config, as_json)
    _network_verb("join", settings, as_json, f"joined {network}", network=network, password=password)


def _owner_verb(verb: str, help_text: str, with_member: bool):
    if with_member:
        def cmd(network: NetworkArg, member: MemberArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
            settings = _load("client", config, as_json)
            _network_verb(verb, settings, as_json, _DONE[verb].format(network=network, member=member),
                          network=network, member=member)
    else:
        def cmd(network: NetworkArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
            settings = _load("client", config, as_json)
            _network_verb(verb, settings, as_json, _DONE[verb].format(network=network), network=network)
    cmd.__doc__ = help_text
    client_app.command(verb)(cmd)


_owner_verb("leave", "Leave a network; tunnels to its members go down.", False)
_owner_verb("lock", "Owner: stop anyone new from joining.", False)
_owner_verb("unlock", "Owner: let people join again.", False)
_owner_verb("delete", "Owner: delete the network for everyone.", False)
_owner_verb("approve", "Owner: let a waiting member in.", True)
_owner_verb("reject", "Owner: turn a waiting member away.", True)
_owner_verb("evict", "Owner: remove a member.", True)
_owner_verb("transfer", "Owner: hand the network to another member.", True)


@client_app.command("broadcast")
def client_broadcast(
    network: NetworkArg,
    state: Annotated[str | None, typer.Argument(help="on or off (omit to change only the rate limit).")] = None,
    pps: Annotated[str | None, typer.Option(help="Per-sender limit in packets/s, or 'default'.")] = None,
    bps: Annotated[str | None, typer.Option(help="Per-sender limit in bytes/s, or 'default'.")] = None,
    config: ConfigOpt = None, as_json: JsonOpt = False,
) -> None:
    """Owner: turn broadcast/multicast (LAN game discovery) on or off, or set its rate limit."""
    settings = _load("client", config)
    _network_verb("broadcast", settings, as_json, f"broadcast settings of {network} changed", network=network,
                  state=state, pps=pps, bps=bps)


@client_app.command("bridge")
def client_bridge(
    network: NetworkArg, member: MemberArg,
    state: Annotated[str, typer.Argument(help="on or off.")],
    config: ConfigOpt = None, as_json: JsonOpt = False,
) -> None:
    """Owner: let a member of a TAP network bridge the LAN behind it (its LAN's MACs are allowed)."""
    settings = _load("client", config)
    _network_verb("bridge", settings, as_json, f"bridge {state}: {member} in {network}", network=network,
                  member=member, state=state)


@client_app.command("nick")
def client_nick(nickname: Annotated[str, typer.Argument(help="Your new nickname.")], config: ConfigOpt = None,
                as_json: JsonOpt = False) -> None:
    """Change your nickname."""
    settings = _load("client", config, as_json)
    _network_verb("nick", settings, as_json, f"you are now {nickname}", nickname=nickname)


@client_app.command("ping")
def client_ping(
    peer: Annotated[str, typer.Argument(help="Nickname, overlay address or public key of a peer.")],
    count: Annotated[int, typer.Option("--count", "-n", help="Echoes to send (with --until-direct: at most).")] = 5,
    until_direct: Annotated[bool, typer.Option("--until-direct", help="Keep going until the path is direct "
                                                                       "(exit 1 if it never is).")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between echoes.")] = 1.0,
    config: ConfigOpt = None, as_json: JsonOpt = False,
) -> None:
    """Ping a peer through the overlay; every reply says the path: direct (to which endpoint, LAN) or
    which relay."""
    import time

    settings = _load("client", config, as_json)
    replies = []
    count = max(1, count) if not until_direct else max(1, count if count != 5 else 30)
    for seq in range(1, count + 1):
        r = _api(settings, "ping", {"peer": peer, "seq": seq})
        replies.append(r)
        if not as_json:
            output.out.print(views.ping_reply(r), markup=False, soft_wrap=True)
        if until_direct and r["path"] == "direct" and r["rtt_ms"] is not None:
            break
        if seq < count:
            time.sleep(interval)
    got = [r for r in replies if r["rtt_ms"] is not None]
    ok = bool(got) and (not until_direct or replies[-1]["path"] == "direct")
    if as_json:
        output.emit({"replies": replies, "ok": ok}, True, lambda d: "")
    elif until_direct and not ok:
        output.fail(f"{peer}: the path did not become direct after {len(replies)} echoes "
                    "(`hamachi client doctor` says why)")
    elif not got:
        output.fail(f"{peer}: no reply to {len(replies)} echoes")
    if not ok:
        raise typer.Exit(int(ExitCode.FAILURE))


@client_app.command("doctor")
def client_doctor(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Explain in plain words: your NAT, each peer's path, and what would fix a missing one."""
    settings = _load("client", config, as_json)

    output.emit(_api(settings, "doctor"), as_json, views.doctor)


@relay_app.command("status")
def relay_status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show the running relay: sessions, forwarded messages, drops by reason."""
    settings = _load("relay", config, as_json)
    output.emit(_api(settings, "status"), as_json, views.key_values)


@server_app.command("token")
def server_token(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Mint a one-time enrolment token (for registration = "token")."""
    settings = _load("server", config, as_json)
    output.emit(_api(settings, "token"), as_json, lambda d: f"{d['token']}\n(valid {d['expires_in_days']:.0f} days, once)")


@server_app.command("status")
def server_status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show the running server: clients online, logins, drops."""
    settings = _load("server", config, as_json)
    output.emit(_api(settings, "status"), as_json, views.key_values)


from hamachi.cli import admin as _admin  # noqa: E402  (needs _load and _api above)

server_app.add_typer(_admin.build(_load, _api), name="admin")


def main() -> None:
    try:
        # One program name however it was started (python -m, the .pyz, the wheel's script), so
        # usage lines say `hamachi` and shell completion answers to _HAMACHI_COMPLETE.
        app(prog_name="hamachi")
    except KeyboardInterrupt:
        sys.exit(130)
