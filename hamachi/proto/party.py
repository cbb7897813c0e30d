"""LAN party: what a party announces, the invite line, and which announcement a joiner accepts.

Theory of operation. The host announces ``_hamachi._udp.local.`` over mDNS
(RFC 6762/6763) with a TXT record (RFC 6763 section 6) of short key=value
strings:

    v=1  name=<party>  key=<server key, base64>  port=<control TCP port>
    mode=tun|tap  members=<n>  ver=<hamachi version>  host=<host's nickname>

Anyone on the LAN can announce anything, so an announcement is only a hint.
`choose` checks each one against the join code (crypto/partycode.py): only a
party whose key matches the code is accepted; every other one with the asked
name is refused with a reason the joiner prints. From outside the LAN the
invite line carries the same facts plus the code:

    party:<name>@<host>:<port>/<server key, base64url>/<code>

Everything decoded here is a bounded, typed record; malformed input raises
`AnnouncementError` (announcements) or `InviteError` (invites) and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass

from hamachi.crypto.partycode import CodeError, JoinCode, parse_code

SERVICE_TYPE = "_hamachi._udp.local."
TXT_VERSION = "1"
MAX_NAME = 64
INVITE_PREFIX = "party:"


class AnnouncementError(ValueError):
    """A TXT record that is not a valid party announcement."""


class InviteError(ValueError):
    """An invite line that cannot be used; the text says why."""


def _name(text: str, what: str) -> str:
    if not 1 <= len(text) <= MAX_NAME or not text.isprintable():
        raise ValueError(f"{what} must be 1-{MAX_NAME} printable characters")
    return text


@dataclass(frozen=True, slots=True)
class Announcement:
    """One party seen on the LAN (or described by an invite): where its control server listens."""

    name: str
    server_key: bytes
    address: str  # an IP address
    port: int
    mode: str = "tun"
    members: int = 0
    version: str = ""
    host: str = ""

    def txt(self) -> dict[str, str]:
        return {"v": TXT_VERSION, "name": self.name, "key": base64.b64encode(self.server_key).decode(),
                "port": str(self.port), "mode": self.mode, "members": str(self.members), "ver": self.version,
                "host": self.host}

    @classmethod
    def from_txt(cls, props: dict[bytes, bytes | None], address: str) -> Announcement:
        def get(k: str) -> str:
            v = props.get(k.encode())
            if v is None:
                raise AnnouncementError(f"TXT has no {k}")
            try:
                return v.decode()
            except UnicodeDecodeError:
                raise AnnouncementError(f"TXT {k} is not UTF-8") from None

        if get("v") != TXT_VERSION:
            raise AnnouncementError(f"TXT version {get('v')!r} is not {TXT_VERSION}")
        try:
            key = base64.b64decode(get("key"), validate=True)
        except binascii.Error:
            raise AnnouncementError("TXT key is not base64") from None
        if len(key) != 32:
            raise AnnouncementError("TXT key is not 32 bytes")
        port, members = get("port"), props.get(b"members", b"0") or b"0"
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise AnnouncementError("TXT port is not a port number")
        if not members.isdigit() or int(members) > 65535:
            raise AnnouncementError("TXT members is not a count")
        mode = (props.get(b"mode") or b"tun").decode(errors="replace")
        if mode not in ("tun", "tap"):
            raise AnnouncementError(f"TXT mode {mode!r} is not tun or tap")
        try:
            ipaddress.ip_address(address)
            name = _name(get("name"), "TXT name")
            version = (props.get(b"ver") or b"").decode(errors="replace")[:32]
            host = (props.get(b"host") or b"").decode(errors="replace")[:MAX_NAME]
        except ValueError as exc:
            raise AnnouncementError(str(exc)) from None
        return cls(name, key, address, int(port), mode, int(members), version, host)


@dataclass(frozen=True, slots=True)
class Invite:
    announcement: Announcement
    code: JoinCode

    def __str__(self) -> str:
        a = self.announcement
        host = f"[{a.address}]" if ":" in a.address else a.address
        key = base64.urlsafe_b64encode(a.server_key).decode().rstrip("=")
        return f"{INVITE_PREFIX}{a.name}@{host}:{a.port}/{key}/{self.code}"


def is_invite(text: str) -> bool:
    return text.startswith(INVITE_PREFIX)


def parse_invite(text: str) -> Invite:
    if not is_invite(text):
        raise InviteError(f"an invite starts with {INVITE_PREFIX!r}")
    body = text[len(INVITE_PREFIX):].strip()
    head, sep, rest = body.rpartition("@")
    if not sep:
        raise InviteError("an invite looks like party:NAME@HOST:PORT/KEY/CODE (no '@')")
    parts = rest.split("/")
    if len(parts) != 3:
        raise InviteError("an invite looks like party:NAME@HOST:PORT/KEY/CODE (wrong number of '/')")
    hostport, key_text, code_text = parts
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]:")
    else:
        host, _, port = hostport.rpartition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InviteError(f"{host!r} in the invite is not an IP address") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InviteError(f"{port!r} in the invite is not a port")
    try:
        key = base64.urlsafe_b64decode(key_text + "=" * (-len(key_text) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise InviteError("the server key in the invite is damaged (not 32 bytes of base64url)")
    try:
        code = parse_code(code_text)
        name = _name(head, "the party name")
    except (CodeError, ValueError) as exc:
        raise InviteError(str(exc)) from None
    return Invite(Announcement(name, key, host, int(port)), code)


@dataclass(frozen=True, slots=True)
class Refusal:
    announcement: Announcement
    reason: str


def choose(found: list[Announcement], code: JoinCode, name: str | None) -> tuple[Announcement | None, list[Refusal]]:
    """The party to join among `found`, and every announcement refused on the way (with why).

    With `name`, only parties of that name count; without, all of them. Among those, the one
    whose key matches the code wins; the others (same name, other key: a rogue announcer or
    another party) are refused. Announcements of one key from several addresses are one party.
    """
    wanted = [a for a in found if name is None or a.name == name]
    refused: list[Refusal] = []
    chosen = None
    verdict: dict[bytes, bool] = {}
    for a in wanted:
        if a.server_key not in verdict:
            verdict[a.server_key] = code.matches(a.server_key)
        if verdict[a.server_key]:
            chosen = chosen or a
        else:
            refused.append(Refusal(a, f"party {a.name!r} at {a.address} announces server key "
                                      f"{base64.b64encode(a.server_key).decode()[:12]}..., which does not "
                                      "match the join code: not the party the code is for (a rogue announcer, "
                                      "another party, or a mistyped code)"))
    return chosen, refused


def classify_path(path: str, endpoint: str | None, lan_networks: list[ipaddress.IPv4Network]) -> str:
    """"LAN", "direct" or "relay" for a peer, from its tunnel path and endpoint."""
    if path == "relayed":
        return "relay"
    if path != "direct" or not endpoint:
        return path or "-"
    host = endpoint.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "direct"
    return "LAN" if any(ip in n for n in lan_networks) else "direct"
