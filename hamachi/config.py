"""TOML -> validated, typed settings. Defaults live here and nowhere else.

Every problem found becomes one line of the form ``FILE: section.key: what is
wrong``; `load()` collects all of them and raises one `ConfigError`, so a user
fixes a config in one pass. The CLI turns that into exit code 3.

Relative paths in a config (key files, databases, sockets) are resolved against
the directory that holds the config file, so a config directory can be moved
as a whole.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from hamachi.crypto.keys import KeyError_, KeyPair, decode_key
from hamachi.proto.policy import SCOPES, DenyEntry, Plan, parse_cidr

# ---------------------------------------------------------------------------
# Defaults (the only place they are written down)

DEFAULT_CONTROL_PORT = 7777
DEFAULT_STUN_PORT = 3478
# Our own: 41641 is Tailscale's, 51820 WireGuard's, 9993 ZeroTier's, 4242 Nebula's (a machine may run them too).
DEFAULT_DATA_PORT = 39393
DEFAULT_RELAY_UDP_PORT = 3480  # 3478-3479 are the STUN service (primary and RFC 5780 alternate port)
DEFAULT_RELAY_TCP_PORT = 443
# Control connections also on TCP 443 where the server can bind it, and clients try it after the
# usual port: some sites let nothing out but HTTPS.
DEFAULT_HTTPS_PORT = 443
DEFAULT_MTU = 1420
DEFAULT_KEEPALIVE = 25.0
DEFAULT_OVERLAY4 = "100.64.0.0/10"
DEFAULT_INTERFACE = "ham0"
DEFAULT_RUN_DIR = "/run/hamachi"
DEFAULT_POOL_SIZE = 8  # PostgreSQL connections per server node
# A client whose control connection drops and that is back (on any node) within this many
# seconds is never seen going offline by its peers.
DEFAULT_PRESENCE_DEBOUNCE = 10.0
# LAN (broadcast/multicast and TAP floods), per sender and network; the owner may change them
# (`client broadcast NET --pps N --bps N`). Game discovery sends a few packets a second.
DEFAULT_BROADCAST_PPS = 500
DEFAULT_BROADCAST_BPS = 2_000_000
BROADCAST_PPS_RANGE = (1, 100_000)
BROADCAST_BPS_RANGE = (1_000, 1_000_000_000)
DEFAULT_BRIDGE_MACS = 64  # MACs a bridge member may bring into a TAP network from the LAN behind it
# LAN party (`hamachi party host|join`): no config file; these are its settings.
DEFAULT_PARTY_NAME = "lan-party"
DEFAULT_PARTY_INTERFACE = "party0"
DEFAULT_PARTY_MODE = "tun"
DEFAULT_PARTY_RELAY_TCP_PORT = 7443  # the relay's TCP fallback (443 is often taken on a laptop)
PARTY_BROWSE_SECONDS = 3.0  # how long `party join` listens for announcements
PARTY_LOST_AFTER = 60.0  # a member leaves when the host's server has been unreachable this long
PARTY_STATE_ENV = "HAMACHI_PARTY_DIR"
DEFAULT_METRICS_PORT = 9477  # `metrics = true` means 127.0.0.1 on this port
# Plans mirror the original service's tiers: free 5 members, standard 32, premium 256; 256 clients
# per account. Relay limits are 0 (unlimited) until the operator sets them.
DEFAULT_PLAN = "free"
DEFAULT_PLANS = (
    Plan("free", members_per_network=5, networks_per_client=16, clients_per_account=256),
    Plan("standard", members_per_network=32, networks_per_client=64, clients_per_account=256),
    Plan("premium", members_per_network=256, networks_per_client=256, clients_per_account=256),
)
# Never hand out addresses from other people's public blocks (25/8, 5/8).
FORBIDDEN_OVERLAY4 = (ipaddress.ip_network("25.0.0.0/8"), ipaddress.ip_network("5.0.0.0/8"))


class ConfigError(Exception):
    """One or more problems in a config; `problems` holds one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# ---------------------------------------------------------------------------
# Typed settings


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def as_tuple(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True, slots=True)
class StaticPeer:
    public_key: bytes
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    endpoint: Endpoint | None = None
    name: str = ""
    keepalive: float = DEFAULT_KEEPALIVE


@dataclass(frozen=True, slots=True)
class PortForward:
    enabled: bool = False
    public_endpoint: Endpoint | None = None
    listen_port: int = 0


@dataclass(frozen=True, slots=True)
class ClientSettings:
    config_path: Path
    name: str
    key_file: Path
    key: KeyPair = field(repr=False)
    api_socket: Path
    state_dir: Path
    server: Endpoint | None
    server_key: bytes | None
    stun_port: int = DEFAULT_STUN_PORT
    # Tried after the server's usual port when that one does not answer (0: never).
    fallback_port: int = DEFAULT_HTTPS_PORT
    interface: str = DEFAULT_INTERFACE
    mode: str = "tun"
    mtu: int = DEFAULT_MTU
    listen_port: int = DEFAULT_DATA_PORT
    address4: ipaddress.IPv4Interface | None = None
    address6: ipaddress.IPv6Interface | None = None
    offload: bool = True
    keepalive: float = DEFAULT_KEEPALIVE
    # Birthday-paradox probing against symmetric NATs: sockets opened on the symmetric side,
    # random ports probed by the other side, per attempt (256 x 256 succeeds ~64% of attempts).
    birthday_sockets: int = 256
    birthday_probes: int = 256
    # The data AEAD: "auto" measures which is faster here (AES-GCM with AES instructions, else
    # ChaCha20-Poly1305) and offers both, that one first; a name allows only that one.
    cipher: str = "auto"
    # Routing options for LAN games on TUN (see README "Broadcast and multicast"): a route for
    # 224.0.0.0/4 through the overlay (multicast sent without choosing an interface goes there),
    # and a host route for 255.255.255.255 (unbound limited broadcasts go there, not to the LAN).
    multicast_route: bool = True
    broadcast_route: bool = False
    port_forward: PortForward = PortForward()
    peers: tuple[StaticPeer, ...] = ()
    # Every control server address, tried in turn (a cluster's nodes); `server` is the first.
    # A name with several A/AAAA records counts as one address per record.
    servers: tuple[Endpoint, ...] = ()
    # One-time enrolment token for a server with registration = "token" (`hamachi server token`);
    # only the first login of a new key needs it.
    token: str = field(default="", repr=False)
    metrics: Endpoint | None = None  # Prometheus exporter (off by default)
    # Members of this group may read state (status, peers, networks, doctor) through the API
    # socket without root; changes still need root. "" keeps the socket root-only.
    api_group: str = ""


@dataclass(frozen=True, slots=True)
class RelayRef:
    name: str
    public_key: bytes
    udp: Endpoint
    tcp: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    config_path: Path
    key_file: Path
    key: KeyPair = field(repr=False)
    listen: tuple[Endpoint, ...]
    public_addresses: tuple[str, ...]
    stun_port: int
    database: str
    registration: str
    overlay4: ipaddress.IPv4Network
    overlay6: ipaddress.IPv6Network | None
    api_socket: Path
    login_rate: float = 5.0
    relays: tuple[RelayRef, ...] = ()
    store_backend: str = "sqlite"  # "sqlite": `database` is a file; "postgresql": `database` is a DSN
    pool_size: int = DEFAULT_POOL_SIZE
    node: str = ""  # this node's name in a cluster; "" = host name and process id
    presence_debounce: float = DEFAULT_PRESENCE_DEBOUNCE
    # Also listen for control connections on this TCP port when it is free and we may bind it
    # (skipped with a log line otherwise; 0: never).
    https_port: int = DEFAULT_HTTPS_PORT
    plans: tuple[Plan, ...] = DEFAULT_PLANS
    default_plan: str = DEFAULT_PLAN
    deny: tuple[DenyEntry, ...] = ()
    metrics: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class RelaySettings:
    config_path: Path
    key_file: Path
    key: KeyPair = field(repr=False)
    server_key: bytes | None
    listen_udp: Endpoint
    listen_tcp: Endpoint | None
    api_socket: Path = Path(DEFAULT_RUN_DIR) / "relay.sock"
    idle_timeout: float = 60.0
    session_rate_bps: int = 0
    account_rate_bps: int = 0
    deny: tuple[DenyEntry, ...] = ()
    metrics: Endpoint | None = None


# ---------------------------------------------------------------------------
# The validating reader


class _Section:
    """Reads one TOML table, remembering every problem and every key it looked at."""

    def __init__(self, loader: _Loader, name: str, table: Any):
        self.loader = loader
        self.name = name
        self.seen: set[str] = set()
        if table is None:
            table = {}
        if not isinstance(table, dict):
            loader.problem(name, f"must be a table, got {type(table).__name__}")
            table = {}
        self.table = table

    def problem(self, key: str, msg: str) -> None:
        self.loader.problem(f"{self.name}.{key}" if key else self.name, msg)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        self.seen.add(key)
        if key not in self.table:
            if required:
                self.problem(key, "is required")
            return default
        value = self.table[key]
        # bool is an int in Python; a TOML `true` is never a valid number.
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            self.problem(key, f"must be a number, got a boolean ({value!r})")
            return default
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.problem(key, f"must be {_article(want)}, got {_toml_type(value)} ({value!r})")
            return default
        return value

    def convert(self, key: str, raw: Any, fn: Callable[[Any], Any], default: Any = None) -> Any:
        if raw is None:
            return default
        try:
            return fn(raw)
        except (ValueError, TypeError) as exc:
            self.problem(key, f"{exc}")
            return default

    def port(self, key: str, default: int | None, allow_zero: bool = False) -> int | None:
        value = self.get(key, int, default)
        if value is None:
            return None
        lo = 0 if allow_zero else 1
        if not lo <= value <= 65535:
            self.problem(key, f"port {value} is out of range {lo}..65535")
            return default
        return value

    def number(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self.get(key, float, default)
        if not lo <= value <= hi:
            self.problem(key, f"{value} is out of range {lo:g}..{hi:g}")
            return default
        return value

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.get(key, int, default)
        if not lo <= value <= hi:
            self.problem(key, f"{value} is out of range {lo}..{hi}")
            return default
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            self.problem(key, f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def endpoint(self, key: str, default: str | None = None, required: bool = False,
                 default_port: int | None = None) -> Endpoint | None:
        raw = self.get(key, str, default, required=required)
        return self.convert(key, raw, lambda r: parse_endpoint(r, default_port))

    def public_key(self, key: str, required: bool = False) -> bytes | None:
        raw = self.get(key, str, None, required=required)
        return self.convert(key, raw, _parse_public_key)

    def path(self, key: str, default: str | None = None, required: bool = False) -> Path | None:
        raw = self.get(key, str, default, required=required)
        if raw is None:
            return None
        p = Path(raw).expanduser()
        if not p.is_absolute():
            p = self.loader.base / p
        return p

    def key_file(self, key: str = "key_file") -> tuple[Path | None, KeyPair | None]:
        path = self.path(key, required=True)
        if path is None:
            return None, None
        return path, self.loader.read_key(f"{self.name}.{key}", path)

    def finish(self) -> None:
        for key in self.table:
            if key not in self.seen:
                hint = difflib.get_close_matches(key, sorted(self.seen), n=1, cutoff=0.6)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.problem(key, f"unknown key{extra}")


class _Loader:
    def __init__(self, path: Path, data: dict[str, Any], need_key: bool = True):
        # need_key=False: commands that only talk to a running daemon (status, peers) never read
        # the private key, so a user in the API socket's group can run them without root.
        self.need_key = need_key
        self.path = path
        self.base = path.parent
        self.data = data
        self.problems: list[str] = []
        self.sections_seen: set[str] = set()

    def problem(self, where: str, msg: str) -> None:
        self.problems.append(f"{self.path}: {where}: {msg}")

    def section(self, name: str, required: bool = False) -> _Section:
        self.sections_seen.add(name)
        if required and name not in self.data:
            self.problem(name, "section is required")
        return _Section(self, name, self.data.get(name))

    def array(self, name: str) -> list[_Section]:
        self.sections_seen.add(name)
        raw = self.data.get(name, [])
        if not isinstance(raw, list):
            self.problem(name, "must be an array of tables ([[" + name + "]])")
            return []
        return [_Section(self, f"{name}[{i}]", t) for i, t in enumerate(raw)]

    def read_key(self, where: str, path: Path) -> KeyPair | None:
        if not self.need_key:
            return None
        try:
            st = path.stat()
        except FileNotFoundError:
            self.problem(where, f"key file {path} does not exist (create it with `hamachi ... init`)")
            return None
        except OSError as exc:
            self.problem(where, f"key file {path} cannot be read: {exc.strerror}")
            return None
        if stat.S_IMODE(st.st_mode) & 0o077:
            self.problem(
                where,
                f"key file {path} has loose permissions {stat.S_IMODE(st.st_mode):04o}; run: chmod 600 {path}",
            )
            return None
        try:
            return KeyPair.from_text(path.read_text())
        except (KeyError_, OSError, UnicodeDecodeError) as exc:
            self.problem(where, f"key file {path} does not hold a private key: {exc}")
            return None

    def finish(self) -> None:
        for key in self.data:
            if key not in self.sections_seen:
                hint = difflib.get_close_matches(key, sorted(self.sections_seen), n=1, cutoff=0.6)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.problem(key, f"unknown section{extra}")
        if self.problems:
            raise ConfigError(self.problems)


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _toml_type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _parse_public_key(text: str) -> bytes:
    try:
        return decode_key(text)
    except KeyError_ as exc:
        raise ValueError(f"not a public key: {exc}") from exc


def parse_endpoint(text: str, default_port: int | None = None) -> Endpoint:
    """Parse ``host:port``, ``[v6]:port``, or a bare host when a default port is given."""
    text = text.strip()
    host, port_s = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r} is not host:port (unclosed '[')")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not host:port")
            port_s = rest[1:]
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    elif text.count(":") > 1:
        raise ValueError(f"{text!r}: write IPv6 endpoints as [addr]:port")
    if not host:
        raise ValueError(f"{text!r} has no host")
    if port_s is None:
        if default_port is None:
            raise ValueError(f"{text!r} has no port (write host:port)")
        port = default_port
    else:
        if not port_s.isdigit():
            raise ValueError(f"{text!r}: port {port_s!r} is not a number")
        port = int(port_s)
        if not 0 <= port <= 65535:
            raise ValueError(f"{text!r}: port {port} is out of range 0..65535")
    _check_host(host, text)
    return Endpoint(host, port)


def _check_host(host: str, text: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    ok = all(lab and len(lab) <= 63 and lab.replace("-", "").isalnum() and not lab.startswith("-")
             for lab in labels)
    if not ok or len(host) > 253 or host.replace(".", "").isdigit():
        raise ValueError(f"{text!r}: {host!r} is neither an IP address nor a host name")


def _interface4(text: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IPv4 address/prefix: {exc}") from exc
    return iface


def _interface6(text: str) -> ipaddress.IPv6Interface:
    try:
        return ipaddress.IPv6Interface(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IPv6 address/prefix: {exc}") from exc


def _interface_any(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IP address/prefix") from exc


def _overlay4(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IPv4 network: {exc}") from exc
    for bad in FORBIDDEN_OVERLAY4:
        if net.overlaps(bad):
            raise ValueError(f"{text} overlaps {bad}, a public block that belongs to others")
    if net.prefixlen > 30:
        raise ValueError(f"{text} is too small for an overlay (use /30 or larger)")
    return net


def _overlay6(text: str) -> ipaddress.IPv6Network:
    try:
        net = ipaddress.IPv6Network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IPv6 network: {exc}") from exc
    if not net.subnet_of(ipaddress.IPv6Network("fc00::/7")):
        raise ValueError(f"{text} is not a unique local (fc00::/7) prefix")
    if net.prefixlen > 64:
        raise ValueError(f"{text} is too small for an overlay (use /64 or larger)")
    return net


def _interface_name(text: str) -> str:
    if not 1 <= len(text) <= 15 or "/" in text or " " in text:
        raise ValueError(f"{text!r} is not a valid interface name (1-15 characters, no '/' or space)")
    return text


def _nickname(text: str) -> str:
    if not 1 <= len(text) <= 64 or not text.isprintable():
        raise ValueError(f"{text!r} is not a valid name (1-64 printable characters)")
    return text


# ---------------------------------------------------------------------------
# Per-role readers


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file does not exist"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a config file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None


def load_client(path: str | os.PathLike[str], need_key: bool = True) -> ClientSettings:
    path = Path(path).resolve()
    ld = _Loader(path, _read_toml(path), need_key)
    c = ld.section("client", required=True)
    name = c.convert("name", c.get("name", str, required=True), _nickname, "")
    key_file, key = c.key_file()
    api_socket = c.path("api_socket", None)
    api_group = c.get("api_group", str, "")
    state_dir = c.path("state_dir", ".")

    s = ld.section("server")
    server_given = "address" in s.table
    raw_addr = s.get("address", (str, list), None)
    servers = []
    for i, item in enumerate(raw_addr if isinstance(raw_addr, list) else [raw_addr] if raw_addr else []):
        where = f"address[{i}]" if isinstance(raw_addr, list) else "address"
        if not isinstance(item, str):
            s.problem(where, f"must be a string, got {_toml_type(item)}")
            continue
        ep = s.convert(where, item, lambda r: parse_endpoint(r, DEFAULT_CONTROL_PORT))
        if ep is not None:
            servers.append(ep)
    if isinstance(raw_addr, list) and not raw_addr:
        s.problem("address", "lists no server")
    server = servers[0] if servers else None
    server_key = s.public_key("public_key", required=server_given)
    client_stun_port = s.port("stun_port", DEFAULT_STUN_PORT, allow_zero=True)
    fallback_port = s.port("fallback_port", DEFAULT_HTTPS_PORT, allow_zero=True)
    token = s.get("token", str, "")
    s.finish()

    t = ld.section("tunnel")
    interface = t.convert("interface", t.get("interface", str, DEFAULT_INTERFACE), _interface_name,
                          DEFAULT_INTERFACE)
    mode = t.choice("mode", "tun", ("tun", "tap"))
    mtu = t.integer("mtu", DEFAULT_MTU, 576, 9000)
    listen_port = t.port("listen_port", DEFAULT_DATA_PORT, allow_zero=True)
    address4 = t.convert("address", t.get("address", str), _interface4)
    address6 = t.convert("address6", t.get("address6", str), _interface6)
    offload = t.get("offload", bool, True)
    birthday_sockets = t.integer("birthday_sockets", 256, 0, 4096)
    birthday_probes = t.integer("birthday_probes", 256, 0, 4096)
    keepalive = t.number("keepalive", DEFAULT_KEEPALIVE, 0, 3600)
    cipher = t.choice("cipher", "auto", ("auto", "chacha20poly1305", "aes256gcm"))
    multicast_route = t.get("multicast_route", bool, True)
    broadcast_route = t.get("broadcast_route", bool, False)
    t.finish()

    f = ld.section("port_forward")
    pf = PortForward(
        enabled=f.get("enabled", bool, False),
        public_endpoint=f.endpoint("public_endpoint"),
        listen_port=f.port("listen_port", 0, allow_zero=True),
    )
    if pf.enabled and pf.public_endpoint is None:
        f.problem("public_endpoint", "is required when port_forward.enabled is true")
    f.finish()

    peers = []
    for p in ld.array("peer"):
        pk = p.public_key("public_key", required=True)
        addrs_raw = p.get("addresses", list, [], required=True)
        addrs = []
        for i, a in enumerate(addrs_raw):
            if not isinstance(a, str):
                p.problem(f"addresses[{i}]", f"must be a string, got {_toml_type(a)}")
                continue
            v = p.convert(f"addresses[{i}]", a, _interface_any)
            if v is not None:
                addrs.append(v)
        ep = p.endpoint("endpoint")
        pname = p.get("name", str, "")
        pka = p.number("keepalive", keepalive, 0, 3600)
        p.finish()
        if pk is not None:
            peers.append(StaticPeer(pk, tuple(addrs), ep, pname, pka))
    client_metrics = _metrics(c)
    c.finish()
    if not server_given and not peers:
        ld.problem("server.address", "is required unless static [[peer]] entries are given")
    ld.finish()
    if api_socket is None:
        api_socket = Path(DEFAULT_RUN_DIR) / f"client-{interface}.sock"
    return ClientSettings(
        config_path=path, name=name, key_file=key_file, key=key, api_socket=api_socket, api_group=api_group,
        state_dir=state_dir, server=server, server_key=server_key, stun_port=client_stun_port,
        fallback_port=fallback_port,
        interface=interface, mode=mode,
        mtu=mtu, listen_port=listen_port, address4=address4, address6=address6, offload=offload,
        birthday_sockets=birthday_sockets, birthday_probes=birthday_probes, cipher=cipher,
        multicast_route=multicast_route, broadcast_route=broadcast_route,
        keepalive=keepalive, port_forward=pf, peers=tuple(peers), servers=tuple(servers), token=token,
        metrics=client_metrics,
    )


def load_server(path: str | os.PathLike[str], need_key: bool = True) -> ServerSettings:
    path = Path(path).resolve()
    ld = _Loader(path, _read_toml(path), need_key)
    s = ld.section("server", required=True)
    key_file, key = s.key_file()
    listen_raw = s.get("listen", list, [f"0.0.0.0:{DEFAULT_CONTROL_PORT}"])
    listen = []
    for i, item in enumerate(listen_raw):
        if not isinstance(item, str):
            s.problem(f"listen[{i}]", f"must be a string, got {_toml_type(item)}")
            continue
        ep = s.convert(f"listen[{i}]", item, lambda r: parse_endpoint(r, DEFAULT_CONTROL_PORT))
        if ep is not None:
            listen.append(ep)
    pubs_raw = s.get("public_addresses", list, [])
    pubs = []
    for i, item in enumerate(pubs_raw):
        try:
            pubs.append(str(ipaddress.ip_address(item if isinstance(item, str) else "")))
        except ValueError:
            s.problem(f"public_addresses[{i}]", f"{item!r} is not an IP address")
    if len(pubs) > 2:
        s.problem("public_addresses", "at most two addresses (RFC 5780 needs exactly two)")
    stun_port = s.port("stun_port", DEFAULT_STUN_PORT, allow_zero=True)
    database = s.get("database", str, "state.db")
    registration = s.choice("registration", "open", ("open", "token"))
    overlay4 = s.convert("overlay_prefix", s.get("overlay_prefix", str, DEFAULT_OVERLAY4), _overlay4,
                         ipaddress.IPv4Network(DEFAULT_OVERLAY4))
    overlay6 = s.convert("overlay_prefix6", s.get("overlay_prefix6", str), _overlay6)
    api_socket = s.path("api_socket", None) or Path(DEFAULT_RUN_DIR) / "server.sock"
    login_rate = s.number("login_rate", 5.0, 0.1, 10000)
    node = s.get("node", str, "")
    debounce = s.number("presence_debounce", DEFAULT_PRESENCE_DEBOUNCE, 0, 300)
    https_port = s.port("https_port", DEFAULT_HTTPS_PORT, allow_zero=True)
    default_plan = s.get("default_plan", str, DEFAULT_PLAN)
    metrics = _metrics(s)
    s.finish()
    st = ld.section("store")
    legacy_pg = database.startswith(("postgresql://", "postgres://"))
    backend = st.choice("backend", "postgresql" if legacy_pg else "sqlite", ("sqlite", "postgresql"))
    if backend == "sqlite":
        if "dsn" in st.table:
            st.seen.add("dsn")
            st.problem("dsn", 'is for backend = "postgresql"; SQLite takes `path`')
        raw = st.get("path", str, "state.db" if legacy_pg else database)
        db_path = Path(raw).expanduser()
        database = str(db_path if db_path.is_absolute() else ld.base / db_path)
    else:
        database = st.get("dsn", str, database if legacy_pg else None, required=not legacy_pg) or ""
        if "path" in st.table:
            st.seen.add("path")
            st.problem("path", 'is for backend = "sqlite"; PostgreSQL takes `dsn`')
    pool_size = st.integer("pool_size", DEFAULT_POOL_SIZE, 1, 256)
    st.finish()
    plans = _plans(ld)
    if default_plan not in {p.name for p in plans}:
        ld.problem("server.default_plan", f"{default_plan!r} is not a plan (have: {', '.join(p.name for p in plans)})")
    deny = _deny(ld)
    relays = []
    for r in ld.array("relay"):
        rname = r.get("name", str, "")
        rk = r.public_key("public_key", required=True)
        udp = r.endpoint("udp", required=True, default_port=DEFAULT_RELAY_UDP_PORT)
        tcp = r.endpoint("tcp", default_port=DEFAULT_RELAY_TCP_PORT)
        r.finish()
        if rk is not None and udp is not None:
            relays.append(RelayRef(rname or str(udp), rk, udp, tcp))
    ld.finish()
    return ServerSettings(
        config_path=path, key_file=key_file, key=key, listen=tuple(listen), public_addresses=tuple(pubs),
        stun_port=stun_port, database=database, registration=registration, overlay4=overlay4,
        overlay6=overlay6, api_socket=api_socket, login_rate=login_rate, relays=tuple(relays),
        store_backend=backend, pool_size=pool_size, node=node, presence_debounce=debounce,
        https_port=https_port,
        plans=plans, default_plan=default_plan, deny=deny, metrics=metrics,
    )


def load_relay(path: str | os.PathLike[str], need_key: bool = True) -> RelaySettings:
    path = Path(path).resolve()
    ld = _Loader(path, _read_toml(path), need_key)
    r = ld.section("relay", required=True)
    key_file, key = r.key_file()
    server_key = r.public_key("server_public_key")
    listen_udp = r.endpoint("listen_udp", f"0.0.0.0:{DEFAULT_RELAY_UDP_PORT}",
                            default_port=DEFAULT_RELAY_UDP_PORT)
    tcp_raw = r.get("listen_tcp", str, f"0.0.0.0:{DEFAULT_RELAY_TCP_PORT}")
    listen_tcp = None if tcp_raw == "" else r.convert(
        "listen_tcp", tcp_raw, lambda x: parse_endpoint(x, DEFAULT_RELAY_TCP_PORT))
    relay_api = r.path("api_socket", None) or Path(DEFAULT_RUN_DIR) / "relay.sock"
    idle = r.number("idle_timeout", 60.0, 1, 86400)
    srate = r.integer("session_rate_bps", 0, 0, 10**12)
    arate = r.integer("account_rate_bps", 0, 0, 10**12)
    metrics = _metrics(r)
    r.finish()
    deny = _deny(ld, scopes=("relay",))
    ld.finish()
    return RelaySettings(
        config_path=path, key_file=key_file, key=key, server_key=server_key, listen_udp=listen_udp,
        listen_tcp=listen_tcp, api_socket=relay_api, idle_timeout=idle, session_rate_bps=srate, account_rate_bps=arate,
        deny=deny, metrics=metrics,
    )


def _metrics(sec: _Section) -> Endpoint | None:
    """`metrics`: off (default, or false), true (127.0.0.1:DEFAULT_METRICS_PORT), or "HOST:PORT"."""
    raw = sec.get("metrics", (bool, str), False)
    if raw is False or raw == "":
        return None
    if raw is True:
        return Endpoint("127.0.0.1", DEFAULT_METRICS_PORT)
    return sec.convert("metrics", raw, lambda r: parse_endpoint(r, DEFAULT_METRICS_PORT))


def _plans(ld: _Loader) -> tuple[Plan, ...]:
    """[plans.NAME] tables; a name the config does not mention keeps its default (free, standard,
    premium), and a key a plan table omits takes the value of the default plan of that name, or of free."""
    raw = ld.section("plans").table
    plans = {p.name: p for p in DEFAULT_PLANS}
    for name in raw:
        sec = _Section(ld, f"plans.{name}", raw[name])
        if not isinstance(name, str) or not 1 <= len(name) <= 32 or not name.replace("-", "").replace("_", "").isalnum():
            sec.problem("", "a plan name is 1-32 letters, digits, - or _")
            continue
        base = plans.get(name, plans[DEFAULT_PLAN])
        plans[name] = Plan(
            name,
            members_per_network=sec.integer("members_per_network", base.members_per_network, 1, 65535),
            networks_per_client=sec.integer("networks_per_client", base.networks_per_client, 0, 1 << 20),
            clients_per_account=sec.integer("clients_per_account", base.clients_per_account, 1, 1 << 20),
            relay_rate_bps=sec.integer("relay_rate_bps", base.relay_rate_bps, 0, 10**12),
            relay_bytes_per_day=sec.integer("relay_bytes_per_day", base.relay_bytes_per_day, 0, 10**15),
        )
        sec.finish()
    return tuple(plans.values())


def _deny(ld: _Loader, scopes: tuple[str, ...] = SCOPES) -> tuple[DenyEntry, ...]:
    """[[deny]] entries: cidr, reason (shown to the refused user), scopes (default: all of `scopes`)."""
    out = []
    for d in ld.array("deny"):
        net = d.convert("cidr", d.get("cidr", str, required=True), parse_cidr)
        reason = d.get("reason", str, "", required=True).strip()
        if not reason and "reason" in d.table:
            d.problem("reason", "must say why (the refused user reads it)")
        got = d.get("scopes", list, list(scopes))
        bad = [x for x in got if x not in scopes]
        if bad:
            d.problem("scopes", f"{bad[0]!r} is not one of {', '.join(scopes)}")
        d.finish()
        if net is not None and reason and not bad:
            out.append(DenyEntry(net, tuple(got), reason))
    return tuple(out)


LOADERS = {"client": load_client, "server": load_server, "relay": load_relay}


def load(role: str, path: str | os.PathLike[str], need_key: bool = True):
    try:
        return LOADERS[role](path, need_key)
    except ConfigError:
        other = _config_role(Path(path))
        if other is not None and other != role:
            verb = {"client": "client up", "server": "server run", "relay": "relay run"}[other]
            raise ConfigError([f"{Path(path).resolve()}: this is a {other} config, not a {role} config "
                               f"(it is for `hamachi {verb}`)"]) from None
        raise


def _config_role(path: Path) -> str | None:
    """Which role a config file is for, judged by its main section (None: unreadable or none)."""
    try:
        data = _read_toml(path)
    except ConfigError:
        return None
    found = [r for r in LOADERS if r in data]
    return found[0] if len(found) == 1 else None


# ---------------------------------------------------------------------------
# Rendering resolved settings (for --check), with secrets redacted


def redacted(settings: Any) -> Any:
    """A JSON-ready view of settings; private keys and database passwords never appear."""
    if isinstance(settings, Endpoint):
        return str(settings)
    if is_dataclass(settings) and not isinstance(settings, type):
        out = {}
        for f in fields(settings):
            value = getattr(settings, f.name)
            if isinstance(value, KeyPair):
                out[f.name] = {"public": value.public_text(), "private": "<redacted>"}
            elif f.name == "token":
                out[f.name] = "<redacted>" if value else "(none)"
            else:
                out[f.name] = redacted(value)
        return out
    if isinstance(settings, (list, tuple)):
        return [redacted(v) for v in settings]
    if isinstance(settings, bytes):
        from hamachi.crypto.keys import encode_key

        return encode_key(settings) if len(settings) == 32 else settings.hex()
    if isinstance(settings, str) and settings.startswith("postgres") and "@" in settings:
        scheme, _, rest = settings.partition("://")
        cred, _, host = rest.rpartition("@")
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:<redacted>@{host}"
    if isinstance(settings, str) and "password=" in settings:  # a key=value DSN
        return " ".join("password=<redacted>" if w.startswith("password=") else w for w in settings.split())
    if isinstance(settings, (str, int, float, bool)) or settings is None:
        return settings
    return str(settings)


def with_overrides(settings: Any, **changes: Any) -> Any:
    return replace(settings, **changes)


def default_config_path(role: str) -> Path:
    """Where `init` writes and every command looks without --config: /etc/hamachi/ROLE.toml for
    root, else $XDG_CONFIG_HOME/hamachi/ROLE.toml (~/.config/hamachi/ROLE.toml)."""
    if os.geteuid() == 0:
        return Path("/etc/hamachi") / f"{role}.toml"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hamachi" / f"{role}.toml"


def party_state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where `hamachi party` keeps keys, configs and its database (identity survives restarts).

    --state-dir, else $HAMACHI_PARTY_DIR, else /var/lib/hamachi/party for root, else
    $XDG_STATE_HOME/hamachi/party (~/.local/state/hamachi/party).
    """
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.environ.get(PARTY_STATE_ENV):
        return Path(os.environ[PARTY_STATE_ENV]).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/hamachi/party")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hamachi" / "party"
