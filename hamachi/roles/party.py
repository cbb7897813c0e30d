"""Composition root for `hamachi party host|join`: a LAN party with no config.

The host runs a supervised group of three processes it starts and stops by
PID (control server, relay, its own client), each from a config it writes into
the party state directory, then creates the party network (its password is the
code's admission proof), announces it over mDNS and shows who joins. A joiner
browses mDNS, checks each announcement against the code (proto/party.py),
writes a client config for the party it accepted, runs that client and joins.

Ending: SIGINT/SIGTERM on the host deletes the party network (every member's
client hears it in a Delta, and each joiner then stops its client, so the
party interface goes away everywhere), withdraws the announcement and stops
its processes. The children die with the supervisor (PR_SET_PDEATHSIG) even
if it is killed. Keys, configs and the server's database stay in the state
directory, so identities and addresses are the same on the next run.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from hamachi import __version__
from hamachi import config as C
from hamachi.crypto.keys import KeyPair, encode_key
from hamachi.crypto.partycode import JoinCode, admission_password, make_code
from hamachi.io import localapi, mdns, netconf
from hamachi.io.privilege import require_net_admin
from hamachi.proto.party import Announcement, Invite, Refusal, choose, classify_path

log = logging.getLogger("hamachi.party")
SCHEMA = 1


class PartyError(Exception):
    """Something the user must hear about as one line; the CLI exits 1 (or `code`)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------
# the state directory


@dataclass
class State:
    dir: Path

    def __post_init__(self):
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.dir / "logs").mkdir(exist_ok=True)

    def path(self, name: str) -> Path:
        return self.dir / name

    def key(self, name: str) -> KeyPair:
        """The key in `name`, made on first use (so identities survive restarts)."""
        p = self.path(name)
        if p.exists():
            return KeyPair.from_text(p.read_text())
        kp = KeyPair.generate()
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(kp.private_text() + "\n")
        return kp

    def memo(self) -> dict[str, Any]:
        p = self.path("party-state.json")
        return json.loads(p.read_text()) if p.exists() else {}

    def remember(self, **kv: Any) -> None:
        m = self.memo()
        m.update(kv)
        self.path("party-state.json").write_text(json.dumps(m, indent=1))

    def write_toml(self, name: str, data: dict[str, Any]) -> Path:
        p = self.path(name)
        p.write_text("# Written by `hamachi party`; rewritten on every run.\n" + tomli_w.dumps(data))
        return p

    # -- the running party ---------------------------------------------------
    def running(self) -> dict[str, Any] | None:
        p = self.path("party.json")
        if not p.exists():
            return None
        try:
            info = json.loads(p.read_text())
            os.kill(int(info["pid"]), 0)
        except (ValueError, KeyError, ProcessLookupError, json.JSONDecodeError):
            return None
        except PermissionError:
            pass
        return info

    def publish(self, info: dict[str, Any]) -> None:
        tmp = self.path("party.json.tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(self.path("party.json"))

    def unpublish(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path("party.json").unlink()


def lan_interfaces() -> list[ipaddress.IPv4Interface]:
    return [i for i in netconf.local_ipv4_interfaces({C.DEFAULT_PARTY_INTERFACE}) if not i.ip.is_loopback]


# ---------------------------------------------------------------------------
# supervised processes


def _hamachi_cmd() -> list[str]:
    if sys.argv and sys.argv[0].endswith(".pyz"):
        return [sys.executable, sys.argv[0]]
    return [sys.executable, "-m", "hamachi"]


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG = 1: the kernel sends SIGTERM to the child when the supervisor dies.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


class Group:
    """Child processes started and stopped by PID, in their own session (Ctrl-C reaches only us)."""

    def __init__(self, state: State, verbose: bool):
        self.state = state
        self.verbose = verbose
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log_path = self.state.path(f"logs/{name}.log")
        out = None if self.verbose else open(log_path, "ab")  # noqa: SIM115 - kept by the child
        cmd = [*_hamachi_cmd(), *args, "-v"]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                             preexec_fn=_die_with_parent)
        if out is not None:
            out.close()
        self.procs[name] = p
        log.info("started %s (pid %d): %s", name, p.pid, " ".join(cmd))
        return p

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def log_tail(self, name: str, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.state.path(f"logs/{name}.log").read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:])
        return ""

    def stop(self, name: str, timeout: float = 8.0) -> None:
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def stop_all(self) -> None:
        for name in list(reversed(self.procs)):
            self.stop(name)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, alive: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        with contextlib.suppress(localapi.DaemonNotRunning, ConnectionError, OSError):
            v = pred()
            if v:
                return v
        if time.monotonic() > deadline:
            raise PartyError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


class Stop:
    """SIGINT/SIGTERM set a flag; the supervisor loop ends the party in order."""

    def __init__(self):
        self.flag = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._set)

    def _set(self, signum, frame) -> None:
        self.flag = True

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.flag and time.monotonic() < deadline:
            time.sleep(0.1)


# ---------------------------------------------------------------------------
# the member list


@dataclass
class Members:
    """Who is in the party and the path to each, as last shown; `changes` yields lines to print."""

    shown: dict[str, tuple] = field(default_factory=dict)

    @staticmethod
    def rows(networks: dict, status: dict, party: str) -> list[dict[str, Any]]:
        lan = [i.network for i in lan_interfaces()]
        peers = {p["public_key"]: p for p in status.get("peers", [])}
        me = status.get("public_key")
        rows = []
        for n in networks.get("networks", []):
            if n["name"] != party:
                continue
            for m in n["members"]:
                p = peers.get(m["public_key"])
                if m["public_key"] == me:
                    path = "(you)"
                elif p is None:
                    path = "-"
                else:
                    path = classify_path(p.get("path", ""), p.get("endpoint"), lan)
                endpoint = (p.get("relay") or p.get("endpoint")) if p else None
                rows.append({"nickname": m["nickname"], "address": m["address4"], "online": bool(m["online"]),
                             "host": bool(m["owner"]), "path": path, "endpoint": endpoint or "",
                             "rtt_ms": p.get("rtt_ms") if p else None, "public_key": m["public_key"]})
        return rows

    def changes(self, rows: list[dict[str, Any]]) -> list[str]:
        lines = []
        now = {r["public_key"]: (r["nickname"], r["address"], r["online"], r["path"]) for r in rows}
        for k, (nick, addr, online, path) in now.items():
            before = self.shown.get(k)
            if before is None:
                lines.append(f"+ {nick} joined: {addr}, {'online' if online else 'offline'}, path {path}")
            elif before != (nick, addr, online, path):
                lines.append(f"~ {nick}: {addr}, {'online' if online else 'offline'}, path {path}")
        for k, (nick, addr, _, _) in self.shown.items():
            if k not in now:
                lines.append(f"- {nick} left ({addr})")
        self.shown = now
        return lines


# ---------------------------------------------------------------------------
# host


@dataclass
class HostOptions:
    name: str = C.DEFAULT_PARTY_NAME
    mode: str = C.DEFAULT_PARTY_MODE
    nickname: str = ""
    public_address: str | None = None
    state_dir: str | None = None
    verbose: bool = False


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _client_toml(state: State, nickname: str, server: str, server_key: str, mode: str,
                 public_endpoint: str | None = None, role: str = "host") -> Path:
    client: dict[str, Any] = {"name": nickname, "key_file": "client.key", "api_socket": "client.sock",
                              "state_dir": "."}
    data: dict[str, Any] = {"client": client, "server": {"address": server, "public_key": server_key},
                            "tunnel": {"interface": C.DEFAULT_PARTY_INTERFACE, "mode": mode}}
    if public_endpoint:
        data["port_forward"] = {"enabled": True, "public_endpoint": public_endpoint,
                                "listen_port": C.DEFAULT_DATA_PORT}
    return state.write_toml(f"client-{role}.toml", data)


def _prepare_host(state: State, opts: HostOptions, lan_ip: str) -> tuple[KeyPair, Path, Path, Path]:
    server_key = state.key("server.key")
    relay_key = state.key("relay.key")
    state.key("client.key")
    memo = state.memo()
    if "overlay6" not in memo:
        ula = ipaddress.IPv6Network((int.from_bytes(b"\xfd" + os.urandom(5), "big") << 80, 48))
        state.remember(overlay6=str(ula))
        memo = state.memo()
    relay_host = opts.public_address or lan_ip
    server = state.write_toml("server.toml", {"server": {
        "key_file": "server.key", "listen": [f"0.0.0.0:{C.DEFAULT_CONTROL_PORT}"],
        "public_addresses": [lan_ip], "stun_port": C.DEFAULT_STUN_PORT, "database": "server.db",
        "registration": "open", "overlay_prefix": C.DEFAULT_OVERLAY4, "overlay_prefix6": memo["overlay6"],
        "api_socket": "server.sock",
        # A party is the host's own server: no free-plan cap of 5 on how many friends come.
        "default_plan": "premium"},
        "relay": [{"name": "party", "public_key": relay_key.public_text(),
                   "udp": _endpoint(relay_host, C.DEFAULT_RELAY_UDP_PORT),
                   "tcp": _endpoint(relay_host, C.DEFAULT_PARTY_RELAY_TCP_PORT)}]})
    relay = state.write_toml("relay.toml", {"relay": {
        "key_file": "relay.key", "server_public_key": server_key.public_text(),
        "listen_udp": f"0.0.0.0:{C.DEFAULT_RELAY_UDP_PORT}",
        "listen_tcp": f"0.0.0.0:{C.DEFAULT_PARTY_RELAY_TCP_PORT}", "api_socket": "relay.sock"}})
    pf = _endpoint(opts.public_address, C.DEFAULT_DATA_PORT) if opts.public_address else None
    client = _client_toml(state, opts.nickname, _endpoint(lan_ip, C.DEFAULT_CONTROL_PORT),
                          server_key.public_text(), opts.mode, pf)
    return server_key, server, relay, client


def _nickname(given: str) -> str:
    nick = given or socket.gethostname().split(".")[0] or "player"
    return nick[:64]


def _fresh_state(state_dir) -> State:
    """The party state directory, refusing when a party already runs from it or on this machine."""
    state = State(C.party_state_dir(state_dir))
    if (info := state.running()) is not None:
        raise PartyError(f"a party ({info['role']} of {info['name']!r}, pid {info['pid']}) is already running "
                         f"from {state.dir}; end it with `hamachi party leave`")
    if netconf.link_exists(C.DEFAULT_PARTY_INTERFACE):
        raise PartyError(f"interface {C.DEFAULT_PARTY_INTERFACE} already exists: another party or hamachi "
                         "client runs here")
    return state


def host(opts: HostOptions, say: Callable[[str], None]) -> int:
    """Run a party until SIGINT/SIGTERM. `say` prints one line for the user (stdout)."""
    require_net_admin("a party (its client creates the party interface)")
    state = _fresh_state(opts.state_dir)
    lans = lan_interfaces()
    if not lans:
        raise PartyError("this machine has no LAN IPv4 address to host a party on")
    lan_ip = str(lans[0].ip)
    opts.nickname = _nickname(opts.nickname)
    server_key, server_cfg, relay_cfg, client_cfg = _prepare_host(state, opts, lan_ip)
    code = make_code(server_key.public, os.urandom(4))
    stop = Stop()
    group = Group(state, opts.verbose)
    announcer = None
    members = Members()

    def alive() -> None:
        dead = group.dead()
        if dead:
            raise PartyError(f"the party's {dead[0]} stopped: {group.log_tail(dead[0])}")

    try:
        group.start("server", "server", "run", "--config", str(server_cfg))
        group.start("relay", "relay", "run", "--config", str(relay_cfg))
        wait_for(lambda: localapi.call(state.path("server.sock"), "status", timeout=2), 20, "the control server",
                 alive)
        group.start("client", "client", "up", "--config", str(client_cfg))
        api = state.path("client.sock")
        wait_for(lambda: localapi.call(api, "status", timeout=5)["server_connected"], 30,
                 "the host's client to log in", alive)
        password = admission_password(code, server_key.public)
        try:
            localapi.call(api, "create", {"network": opts.name, "password": password, "mode": opts.mode})
        except localapi.ApiError as exc:
            if "taken" not in str(exc):
                raise PartyError(f"could not create the party network: {exc}") from None
            # Left over from a party that was killed: start it afresh with the new code.
            localapi.call(api, "delete", {"network": opts.name})
            localapi.call(api, "create", {"network": opts.name, "password": password, "mode": opts.mode})
        ann = Announcement(opts.name, server_key.public, lan_ip, C.DEFAULT_CONTROL_PORT, opts.mode, 1,
                           __version__, opts.nickname)
        lan_addrs = [str(i.ip) for i in lans]
        instance = f"{opts.name} on {opts.nickname} {encode_key(server_key.public)[:6]}"
        announcer = mdns.Announcer(ann, lan_addrs, instance.replace(".", "-"))
        invite_host = opts.public_address or lan_ip
        invite = Invite(Announcement(opts.name, server_key.public, invite_host, C.DEFAULT_CONTROL_PORT), code)
        state.publish({"schema_version": SCHEMA, "role": "host", "pid": os.getpid(), "name": opts.name,
                       "code": str(code), "invite": str(invite), "api_socket": str(api), "mode": opts.mode})
        say(f"party {opts.name!r} is on: {opts.mode} mode, hosted by {opts.nickname} at {lan_ip}")
        say(f"join code: {code}")
        say(f"on this LAN:   hamachi party join {opts.name}   (then type the code)")
        say(f"from anywhere: hamachi party join '{invite}'")
        if not opts.public_address:
            say("(for friends outside this LAN, run with --public-address YOUR_PUBLIC_IP and forward TCP "
                f"{C.DEFAULT_CONTROL_PORT}, UDP {C.DEFAULT_STUN_PORT}, {C.DEFAULT_RELAY_UDP_PORT} and "
                f"{C.DEFAULT_DATA_PORT} to {lan_ip})")
        say("Ctrl-C ends the party for everyone.")
        count = 1
        while not stop.flag:
            alive()
            try:
                rows = Members.rows(localapi.call(api, "networks", timeout=5),
                                    localapi.call(api, "status", timeout=5), opts.name)
            except (localapi.DaemonNotRunning, localapi.ApiError, OSError) as exc:
                log.debug("member list: %s", exc)
                rows = None
            if rows is not None:
                for line in members.changes([r for r in rows if r["path"] != "(you)"]):
                    say(line)
                if len(rows) != count and rows:
                    count = len(rows)
                    announcer.update(Announcement(opts.name, server_key.public, lan_ip, C.DEFAULT_CONTROL_PORT,
                                                  opts.mode, count, __version__, opts.nickname), lan_addrs)
            stop.sleep(1.0)
        say(f"ending the party: telling {max(0, count - 1)} member(s)")
        with contextlib.suppress(localapi.DaemonNotRunning, localapi.ApiError, OSError):
            localapi.call(api, "delete", {"network": opts.name}, timeout=10)
            time.sleep(0.5)  # let the server's Deltas leave before it stops
        return 0
    finally:
        if announcer is not None:
            with contextlib.suppress(Exception):
                announcer.close()
        group.stop_all()
        state.unpublish()


# ---------------------------------------------------------------------------
# join


@dataclass
class JoinOptions:
    target: str | None = None  # a party name or an invite
    code: str | None = None
    nickname: str = ""
    state_dir: str | None = None
    verbose: bool = False
    browse_seconds: float = C.PARTY_BROWSE_SECONDS


def discover(seconds: float) -> list[Announcement]:
    addrs = [str(i.ip) for i in lan_interfaces()]
    if not addrs:
        raise PartyError("this machine has no LAN IPv4 address to look for parties on")
    found, bad = mdns.browse(addrs, seconds)
    if bad:
        log.info("ignored %d malformed announcement(s)", bad)
    return found


def pick(found: list[Announcement], code: JoinCode, name: str | None) -> tuple[Announcement, list[Refusal]]:
    """The announcement to join, or a PartyError that names every refusal."""
    chosen, refused = choose(found, code, name)
    if chosen is None:
        if not found:
            raise PartyError("no party found on this LAN" + (f" named {name!r}" if name else "")
                             + " (is the host on the same network? From outside, use the invite line)")
        reasons = "; ".join(r.reason for r in refused) or "no party of that name"
        raise PartyError(f"refused: {reasons}")
    if name is None:  # other parties are not refusals, only impostors of the chosen one are
        refused = [r for r in refused if r.announcement.name == chosen.name]
    return chosen, refused


def join(opts: JoinOptions, code: JoinCode, chosen: Announcement, say: Callable[[str], None]) -> int:
    """Run a client in the party `chosen` until it ends or SIGINT/SIGTERM; the code is already checked."""
    require_net_admin("joining a party (the client creates the party interface)")
    state = _fresh_state(opts.state_dir)
    state.key("client.key")
    nick = _nickname(opts.nickname)
    cfg = _client_toml(state, nick, _endpoint(chosen.address, chosen.port), encode_key(chosen.server_key),
                       chosen.mode, role="join")
    stop = Stop()
    group = Group(state, opts.verbose)
    api = state.path("client.sock")

    def alive() -> None:
        if group.dead():
            raise PartyError(f"the party client stopped: {group.log_tail('client')}")

    try:
        group.start("client", "client", "up", "--config", str(cfg))

        def logged_in():
            st = localapi.call(api, "status", timeout=5)
            if not st["server_connected"] and st.get("server_error"):
                log.info("party server: %s", st["server_error"])
            return st["server_connected"]

        wait_for(logged_in, 30, f"the party server at {_endpoint(chosen.address, chosen.port)}", alive)
        try:
            localapi.call(api, "join", {"network": chosen.name,
                                        "password": admission_password(code, chosen.server_key)})
        except localapi.ApiError as exc:
            text = str(exc).replace("wrong password", "wrong join code").replace("passwords", "join codes")
            raise PartyError(f"the party refused: {text}") from None
        status = localapi.call(api, "status")
        state.publish({"schema_version": SCHEMA, "role": "member", "pid": os.getpid(), "name": chosen.name,
                       "api_socket": str(api), "server": _endpoint(chosen.address, chosen.port),
                       "mode": chosen.mode})
        say(f"joined party {chosen.name!r} hosted by {chosen.host or chosen.address} as {nick}, "
            f"{', '.join(status['addresses'])} on {status['interface']}")
        say("Ctrl-C (or `hamachi party leave`) leaves the party.")
        members = Members()
        seen = False
        lost_since = None
        while not stop.flag:
            alive()
            try:
                nets = localapi.call(api, "networks", timeout=5)
                status = localapi.call(api, "status", timeout=5)
            except (localapi.DaemonNotRunning, localapi.ApiError, OSError) as exc:
                log.debug("member list: %s", exc)
                stop.sleep(1.0)
                continue
            present = any(n["name"] == chosen.name for n in nets["networks"])
            if present:
                seen = True
            elif seen and status["server_connected"]:
                say(f"the party {chosen.name!r} has ended (the host closed it)")
                return 0
            if status["server_connected"]:
                lost_since = None
            else:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > C.PARTY_LOST_AFTER:
                    say(f"lost the party host for {C.PARTY_LOST_AFTER:.0f} s: leaving")
                    return 1
            for line in members.changes([r for r in Members.rows(nets, status, chosen.name)
                                         if r["path"] != "(you)"]):
                say(line)
            stop.sleep(1.0)
        with contextlib.suppress(localapi.DaemonNotRunning, localapi.ApiError, OSError):
            localapi.call(api, "leave", {"network": chosen.name}, timeout=5)
        say(f"left the party {chosen.name!r}")
        return 0
    finally:
        group.stop_all()
        state.unpublish()


# ---------------------------------------------------------------------------
# status and leave


def status(state_dir: str | None) -> dict[str, Any]:
    state = State(C.party_state_dir(state_dir))
    info = state.running()
    if info is None:
        raise PartyError(f"no party is running from {state.dir}", code=4)
    api = Path(info["api_socket"])
    try:
        st = localapi.call(api, "status", timeout=5)
        nets = localapi.call(api, "networks", timeout=5)
    except (localapi.DaemonNotRunning, OSError) as exc:
        raise PartyError(f"the party's client does not answer: {exc}", code=4) from None
    out = {"role": info["role"], "name": info["name"], "pid": info["pid"], "mode": info.get("mode"),
           "interface": st["interface"], "addresses": st["addresses"], "server_connected": st["server_connected"],
           "members": Members.rows(nets, st, info["name"])}
    if info["role"] == "host":
        out["code"] = info.get("code")
        out["invite"] = info.get("invite")
    return out


def leave(state_dir: str | None, timeout: float = 20.0) -> dict[str, Any]:
    state = State(C.party_state_dir(state_dir))
    info = state.running()
    if info is None:
        raise PartyError(f"no party is running from {state.dir}", code=4)
    pid = int(info["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return {"role": info["role"], "name": info["name"], "pid": pid}
        time.sleep(0.1)
    raise PartyError(f"the party process {pid} did not stop within {timeout:.0f} s")
